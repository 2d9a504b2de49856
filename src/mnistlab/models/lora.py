"""LoRA: low-rank adapters on linear and conv layers, by composition (Hu et al., 2021).

A wrapped layer keeps its pretrained weight ``W`` frozen and learns a low-rank update::

    y = W x + (alpha / r) * B A x        A: [r, fan_in], B: [out, r], B starts at zero

so the adapted model starts out computing exactly what the base model computes. Adapters are
plain modules that replace the layers they wrap; which layers get one is decided by
:func:`select_targets` over module names. :func:`merge_lora` folds ``W + (alpha / r) B A`` back
into plain layers for export, and :func:`apply_lora_from_card` rebuilds the same structure
from a model card, so an artifact with adapters reloads with a strict state_dict.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.errors import ConfigError, ModelError

KINDS: dict[str, type[nn.Module]] = {"linear": nn.Linear, "conv": nn.Conv2d}
ADAPTER_PREFIX = "lora_"  # parameter names of adapters start with this


class LoRALinear(nn.Module):
    """``y = W x + b + (alpha / r) * B (A x)`` around a frozen ``nn.Linear`` (B zero at start)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's own init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, shaped like the base weight [out, in]."""
        return self.scale * (self.lora_B @ self.lora_A)


class LoRAConv2d(nn.Module):
    """``y = conv(x, W) + b + (alpha / r) * B conv(x, A)`` around a frozen ``nn.Conv2d`` (B zero at start).

    ``A`` is ``rank`` filters with the base layer's kernel, stride, padding and dilation; ``B``
    mixes them 1x1 into the output channels. Stored flat: A [r, in*kh*kw], B [out, r].
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ModelError(f"LoRA supports plain convolutions only (groups=1, zero padding), got {base}")
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, alpha / rank
        w = base.weight  # [out, in, kh, kw]
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        self.lora_A = nn.Parameter(torch.empty(rank, fan_in, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(w.shape[0], rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        a_kernel = self.lora_A.view(self.rank, *b.weight.shape[1:])  # [r, in*kh*kw] -> [r, in, kh, kw]
        h = F.conv2d(x, a_kernel, None, b.stride, b.padding, b.dilation)  # [B, r, H', W']
        b_kernel = self.lora_B[:, :, None, None]  # [out, r] -> [out, r, 1, 1]
        return b(x) + self.scale * F.conv2d(h, b_kernel)

    def delta_weight(self) -> torch.Tensor:
        """``(alpha / r) B A``, shaped like the base weight [out, in, kh, kw]."""
        return self.scale * (self.lora_B @ self.lora_A).view_as(self.base.weight)  # [out, in*kh*kw] -> weight shape


LoRALayer = LoRALinear | LoRAConv2d
_WRAPPERS: dict[type[nn.Module], type[nn.Module]] = {nn.Linear: LoRALinear, nn.Conv2d: LoRAConv2d}


def _is_head(name: str) -> bool:
    return name == "head" or name.startswith("head.")


def select_targets(model: nn.Module, targets: list[str]) -> list[str]:
    """Names of the layers that ``targets`` picks: kinds (``linear``, ``conv``) or globs over names.

    The head is never picked (it trains in full). Raises ConfigError when nothing matches.
    """
    if not targets:
        raise ConfigError("finetune.lora_targets is empty", hint="e.g. finetune.lora_targets=[linear,conv]")
    names = []
    for name, module in model.named_modules():
        if not name or _is_head(name) or type(module) not in _WRAPPERS:
            continue
        for t in targets:
            kind = KINDS.get(t)
            if (kind is not None and type(module) is kind) or (kind is None and fnmatch.fnmatchcase(name, t)):
                names.append(name)
                break
    if not names:
        layers = [n for n, m in model.named_modules() if type(m) in _WRAPPERS and n and not _is_head(n)]
        raise ConfigError(
            f"finetune.lora_targets {targets} matches no linear or conv layer",
            hint=f"use kinds {sorted(KINDS)} or globs over names such as {', '.join(layers[:4])}",
        )
    return names


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _wrap(model: nn.Module, names: list[str], rank: int, alpha: float) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"finetune.lora_rank must be a positive integer, got {rank!r}", hint="e.g. finetune.lora_rank=4")
    if alpha <= 0:
        raise ConfigError(f"finetune.lora_alpha must be positive, got {alpha!r}", hint="e.g. finetune.lora_alpha=8")
    for name in names:
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ModelError(f"the model has no layer '{name}' to put a LoRA adapter on",
                             hint="the artifact's adapters do not match its architecture") from None
        wrapper = _WRAPPERS.get(type(layer))
        if wrapper is None:
            raise ModelError(f"layer '{name}' is a {type(layer).__name__}; LoRA wraps Linear and Conv2d only")
        _set_submodule(model, name, wrapper(layer, rank, alpha))


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: list[str]) -> dict[str, Any]:
    """Wrap the targeted layers in adapters (in place); return the card's ``adapters`` entry.

    Only adds the adapters: the fine-tuning strategies (``finetune.strategies.apply_depth`` with
    ``adapters=True``) freeze everything else.
    """
    names = select_targets(model, targets)
    _wrap(model, names, rank, float(alpha))
    return {"type": "lora", "rank": rank, "alpha": float(alpha), "targets": list(targets), "modules": names}


def apply_lora_from_card(model: nn.Module, adapters: dict[str, Any]) -> nn.Module:
    """Rebuild the adapter structure a card describes, so the saved state_dict loads strictly."""
    if adapters.get("type", "lora") != "lora":
        raise ModelError(f"unknown adapter type {adapters.get('type')!r} in the model card",
                         hint="this mnistlab knows 'lora' adapters only; upgrade it or re-export the model merged")
    try:
        rank, alpha, names = int(adapters["rank"]), float(adapters["alpha"]), list(adapters["modules"])
    except (KeyError, TypeError, ValueError) as err:
        raise ModelError(f"the model card's adapters entry is incomplete ({err})",
                         hint="it needs rank, alpha and modules; re-run the fine-tuning") from None
    _wrap(model, names, rank, alpha)
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALayer]:
    """Every adapter-wrapped layer of ``model`` by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (LoRALinear, LoRAConv2d))}


def is_adapter_param(name: str) -> bool:
    """True for the parameters LoRA adds (``...lora_A``, ``...lora_B``)."""
    return name.rpartition(".")[2].startswith(ADAPTER_PREFIX)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer: ``W <- W + (alpha / r) B A``; plain layers replace wrappers.

    In place; returns ``model``, whose state_dict then has the base architecture's keys.
    """
    for name, layer in lora_layers(model).items():
        base = layer.base
        base.weight.add_(layer.delta_weight().to(base.weight.dtype))
        _set_submodule(model, name, base)
    return model
