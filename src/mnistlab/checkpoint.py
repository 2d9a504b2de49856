"""Training checkpoints for exact resume (not the shareable artifact: see artifact.py)."""

from __future__ import annotations

import io
import pickle
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


def has_checkpoint(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a checkpoint (a run killed before its first one holds only config.yaml)."""
    return (Path(run_dir) / CHECKPOINT).is_file()


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read the training state written by :func:`save_checkpoint` (tensors and plain data only).

    Nothing but tensors and plain data is ever unpickled (``weights_only``); a file holding
    anything else is refused as not one of mnistlab's checkpoints.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise MnistlabError(
            f"'{run_dir}' has no {CHECKPOINT} to resume from",
            hint="give the directory of a run that mnistlab train or finetune wrote",
        )
    if path.stat().st_size == 0:
        raise MnistlabError(f"'{path}' is empty (0 bytes), not a checkpoint",
                            hint="mnistlab writes checkpoints atomically, so something else truncated it; "
                                 f"delete {CHECKPOINT} to restart the run from its config")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message advises weights_only=False, which would run the file's code: never repeat it
        if "unsupported global" in str(err).lower():
            raise MnistlabError(f"'{path}' is not a checkpoint mnistlab wrote: it holds Python objects beyond "
                                "tensors and plain data, so it was not loaded",
                                hint="resume only run directories written by mnistlab train or finetune") from err
        raise _corrupt(path, err) from err
    except Exception as err:
        raise _corrupt(path, err) from err
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise MnistlabError(f"'{path}' is not a checkpoint mnistlab wrote (no training state in it)",
                            hint="resume only run directories written by mnistlab train or finetune")
    return state


def _corrupt(path: Path, err: Exception) -> MnistlabError:
    """The error for a checkpoint torch cannot read, with the reason (not torch's advice) on the same line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):  # the reason is the line after "WeightsUnpickler error:"
        lines = lines[next((i + 1 for i, line in enumerate(lines) if line.endswith("error:")), len(lines)):]
    detail = lines[0] if lines else "the file ends early or is not a torch file"
    return MnistlabError(f"'{path}' is corrupt ({type(err).__name__}: {detail})",
                         hint=f"delete {CHECKPOINT} to restart the run from its config")
