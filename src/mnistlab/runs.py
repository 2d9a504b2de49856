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


def run_row(run_dir: Path) -> dict[str, Any]:
    """One run's key figures: status (done, interrupted, empty), model, dataset, test accuracy, epochs, seconds, parent."""
    d = Path(run_dir)
    summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else {}
    status = "done" if summary else ("interrupted" if (d / "checkpoint.pt").is_file() else "empty")
    return {"run": str(d), "status": status, "model": summary.get("model"), "dataset": summary.get("dataset"),
            "test_accuracy": summary.get("test_accuracy"), "epochs": summary.get("epochs"),
            "train_seconds": summary.get("train_seconds"), "parent": run_parent(d)}


def run_parent(run_dir: Path) -> str | None:
    """The path of the model a fine-tuned run started from, as its model.json records it; None otherwise."""
    meta = Path(run_dir) / "model.json"
    if not meta.is_file():
        return None
    parent = read_json(meta).get("parent")
    return parent.get("path") if isinstance(parent, dict) else None


def list_runs(root: Path = DEFAULT_RUNS_ROOT) -> list[dict[str, Any]]:
    """:func:`run_row` of every run directory (one holding config.yaml) under ``root``, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    configs = sorted(root.rglob("config.yaml"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [run_row(p.parent) for p in configs]


def show_run(run_dir: Path) -> dict[str, Any]:
    """:func:`run_row` of one run directory plus its whole summary.json (None before it finished)."""
    d = Path(run_dir)
    if not (d / "config.yaml").is_file():
        raise MnistlabError(f"'{d}' is not a run directory (no config.yaml)")
    summary = read_json(d / "summary.json") if (d / "summary.json").is_file() else None
    return {**run_row(d), "summary": summary}
