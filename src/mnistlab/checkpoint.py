"""Training checkpoints for exact resume (not the shareable artifact: see artifact.py)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Atomically write the training state; a crash leaves the previous checkpoint intact."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(run_dir / CHECKPOINT, buf.getvalue())


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read the training state written by :func:`save_checkpoint` (tensors and plain data only)."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise MnistlabError(
            f"'{run_dir}' has no {CHECKPOINT} to resume from",
            hint="give the directory of a run that completed at least one epoch",
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise MnistlabError(f"'{path}' is corrupt: {err}".splitlines()[0], hint="start the run again") from err
