"""Run directories: created once, never overwritten, written atomically."""

from __future__ import annotations

import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.fileio import atomic_path, atomic_write_text

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
            "test_accuracy": summary.get("test_accuracy"), "test_loss": summary.get("test_loss"),
            "val_accuracy": summary.get("val_accuracy"), "epochs": summary.get("epochs"),
            "train_seconds": summary.get("train_seconds"), "params": summary.get("params"),
            "parent": run_parent(d)}


def run_parent(run_dir: Path) -> str | None:
    """The path of the model a fine-tuned run started from, as its model.json records it; None otherwise."""
    meta = Path(run_dir) / "model.json"
    if not meta.is_file():
        return None
    parent = read_json(meta).get("parent")
    return parent.get("path") if isinstance(parent, dict) else None


def list_runs(root: Path = DEFAULT_RUNS_ROOT) -> list[dict[str, Any]]:
    """:func:`run_row` of every run directory (one holding config.yaml) under ``root``, newest first
    (:func:`filter_runs` selects and sorts them)."""
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


SORT_KEYS = ("run", "status", "model", "dataset", "test_accuracy", "test_loss", "val_accuracy", "epochs",
             "train_seconds", "params")


def filter_runs(rows: list[dict[str, Any]], *, dataset: str | None = None, model: str | None = None,
                sort: str | None = None, reverse: bool = False) -> list[dict[str, Any]]:
    """``rows`` of :func:`list_runs` with the given dataset and model only, sorted by ``sort``
    (ascending, or descending with ``reverse``; runs without that figure always come last)."""
    kept = [r for r in rows if (dataset is None or r["dataset"] == dataset) and (model is None or r["model"] == model)]
    if sort is None:
        return kept
    if sort not in SORT_KEYS:
        raise ConfigError(f"cannot sort runs by '{sort}'", hint=f"choose one of {', '.join(SORT_KEYS)}")
    present = sorted((r for r in kept if r.get(sort) is not None), key=lambda r: r[sort], reverse=reverse)
    return present + [r for r in kept if r.get(sort) is None]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``section.key`` -> value (lists kept whole)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


ABSENT = "(absent)"  # a setting a config does not hold (written by a version that did not have it)


def config_diff(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The ``section.key`` settings whose values differ between resolved configs, each with one
    value per config (:data:`ABSENT` where a config lacks the key), in the first config's key order."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    rows = {k: [f.get(k, ABSENT) for f in flats] for k in keys}
    return {k: v for k, v in rows.items() if len({json.dumps(x, sort_keys=True) for x in v}) > 1}


@dataclass
class Comparison:
    """Runs side by side: their key figures, what differs in their configs, and their curves."""

    rows: list[dict[str, Any]]
    config_diff: dict[str, list[Any]]
    histories: list[list[dict[str, Any]]]  # metrics.jsonl of each run

    def to_dict(self) -> dict[str, Any]:
        """Figures, differing settings and per-epoch metrics as one JSON-ready object."""
        return {"runs": self.rows, "config_diff": self.config_diff, "histories": self.histories}


def compare_runs(run_dirs: list[Path]) -> Comparison:
    """Read two or more run directories for comparison (each must hold config.yaml)."""
    import yaml

    if len(run_dirs) < 2:
        raise ConfigError("`mnistlab runs compare` needs at least two runs", hint="e.g. mnistlab runs compare runs/a runs/b")
    configs = []
    for d in map(Path, run_dirs):
        if not (d / "config.yaml").is_file():
            raise MnistlabError(f"'{d}' is not a run directory (no config.yaml)",
                                hint="give run directories written by `mnistlab train` or `finetune`")
        configs.append(yaml.safe_load((d / "config.yaml").read_text()) or {})
    return Comparison(rows=[run_row(Path(d)) for d in run_dirs], config_diff=config_diff(configs),
                      histories=[read_jsonl(Path(d) / "metrics.jsonl") for d in run_dirs])


def plot_comparison(comparison: Comparison, path: Path) -> None:
    """One PNG: train and validation loss and accuracy of every run, against epoch (top) and
    against cumulative training seconds (bottom)."""
    from mnistlab.evaluate import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(10, 7))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (row, history) in enumerate(zip(comparison.rows, comparison.histories, strict=True)):
        if not history:
            continue
        colour = colours[i % len(colours)]
        label = Path(row["run"]).name
        epochs = [h["epoch"] for h in history]
        seconds = list(itertools.accumulate(h.get("seconds") or 0.0 for h in history))
        for col, metric in enumerate(("loss", "acc")):
            for split, style in (("train", "--"), ("val", "-")):
                values = [h.get(f"{split}_{metric}") for h in history]
                if all(v is None for v in values):
                    continue
                for row_, x in ((0, epochs), (1, seconds)):
                    axes[row_, col].plot(x, values, style, marker="o", ms=3, color=colour,
                                         label=f"{label} {'validation' if split == 'val' else split}")
    for (r, c), ax in np.ndenumerate(np.array(axes, dtype=object)):
        ax.set_xlabel("epoch" if r == 0 else "training seconds (cumulative)")
        if r == 0:
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(("loss", "accuracy")[c])
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("learning curves (dashed: train, solid: validation)", fontsize=10)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
