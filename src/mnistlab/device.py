"""Where this process trains: the device to use, and its rank among data-parallel processes."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from mnistlab.config import Config


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; any other name is taken as a torch device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 or AMX (oneDNN's bf16 kernels). Elsewhere, e.g. on AVX2-only CPUs, bfloat16 autocast
    is emulated: the default recipe trained 9x slower with it than in float32 on such a CPU."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return True  # MPS and others: as asked


def settle_bf16(cfg: Config, device: torch.device, *, quiet: bool = False) -> Config:
    """``cfg`` with bfloat16 autocast turned off where ``device`` would only emulate it; unless ``quiet``,
    one line says so when the run asked for it. The run's saved config records what it trained with."""
    st = cfg.finetune.semi.self_training
    if native_bf16(device) or not (cfg.train.bf16 or st.bf16):
        return cfg
    semi = replace(cfg.finetune.semi, self_training=replace(st, bf16=False))
    settled = replace(cfg, train=replace(cfg.train, bf16=False), finetune=replace(cfg.finetune, semi=semi))
    asked = cfg.train.bf16 or (st.bf16 and cfg.finetune.semi.unlabelled and cfg.finetune.semi.method == "self-training")
    if asked and not quiet:
        what = "CPU has no native bfloat16 (AVX-512 BF16 or AMX)" if device.type == "cpu" else "GPU has no native bfloat16"
        print(f"bf16: this {what} and would emulate it, several times slower than float32: "
              "training in float32 (the run's config.yaml records train.bf16: false)")
    return settled
