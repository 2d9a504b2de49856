"""Run directories: created once, never overwritten, written atomically."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mnistlab.errors import MnistlabError
from mnistlab.fileio import atomic_write_text

DEFAULT_RUNS_ROOT = Path("runs")


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON object as a line (flushed; a crash loses at most this line)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def new_run_dir(out: str | Path | None, *, prefix: str, root: Path = DEFAULT_RUNS_ROOT) -> Path:
    """Create a fresh run directory.

    With ``out`` given it must not exist yet (runs are never overwritten);
    otherwise ``root/<prefix>-<timestamp>[-N]`` is created.
    """
    if out is not None:
        path = Path(out)
        if path.exists():
            raise MnistlabError(
                f"output directory '{path}' already exists",
                hint="runs are never overwritten: choose another --out, or --resume it",
            )
        path.mkdir(parents=True)
        return path
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / (f"{prefix}-{stamp}" if n == 0 else f"{prefix}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise MnistlabError(f"could not create a run directory under '{root}'")
