"""Where this process trains: the device to use, and its rank among data-parallel processes."""

from __future__ import annotations

import torch
import torch.distributed as dist


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
