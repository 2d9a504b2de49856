"""Transfer benchmark: Fashion-MNIST test accuracy against labelled images per class, from scratch
and fine-tuned from an MNIST-pretrained model with each strategy (head, lora, partial, full).

Side by side, in one run, on the same data: for each shot count K (1, 5, 10, 50, 100 images per
class, and all 60,000) and seed (3 seeds), the same class-balanced K-per-class subset (seeded by
the run seed) trains
- `scratch`: the from-scratch recipe configs/mnist-fast.yaml with its optimiser pinned to the
  settings the table was measured with (AdamW 3e-3, one-cycle, float32: `SCRATCH_OVERRIDES`) on a
  freshly initialised model of the parent's architecture;
- `head`, `lora`, `partial`, `full`: `mnistlab finetune PARENT configs/finetune-fashion-<strategy>.yaml`.
Every method runs through the same pipeline (`mnistlab.finetune.run.prepare_splits`), so with
K <= 100 all get the small-set settings (300 steps of 32, 20% held out for early stopping with
best-weights restore when K >= 5, light augmentation); with all data every method trains 1
epoch (`--all-epochs`). Accuracy is on the full 10,000-image test set; the table gives the mean
and sample standard deviation over seeds.

    MNISTLAB_DATA_DIR=... mnistlab train model.name=cnn optim.lr=0.003 train.epochs=3 train.bf16=false train.channels_last=false --quiet --out /tmp/ft-parent
    MNISTLAB_DATA_DIR=... python benchmarks/transfer.py --parent /tmp/ft-parent

Writes benchmarks/results/transfer.{json,md,png}; finished cells are kept in the JSON, so an
interrupted run continues where it stopped (`--fresh` starts over).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.artifact import read_card
from mnistlab.config import Config, load_config, resolve_recipe
from mnistlab.data.registry import get_dataset_info
from mnistlab.finetune.run import finetune, prepare_splits
from mnistlab.runner import RunPlan, run_training
from mnistlab.seeds import seed_stats

SHOTS = ["1", "5", "10", "50", "100", "all"]
METHODS = ["scratch", "head", "lora", "partial", "full"]
DATASET = "fashion-mnist"
RESULTS = Path(__file__).parent / "results"
# mnist-fast's optimiser as it was when benchmarks/results/transfer.* was measured (its learning
# rate is now tuned for fastcnn's one epoch; scratch here trains the parent's architecture).
SCRATCH_OVERRIDES = ["optim.lr=0.003", "train.bf16=false", "train.channels_last=false"]


def method_config(method: str, parent: Path, shots: str, seed: int, all_epochs: int, threads: int | None) -> Config:
    """The resolved recipe of one cell (one method, shot count and seed)."""
    recipe = "mnist-fast" if method == "scratch" else f"finetune-fashion-{method}"
    overrides = [f"seed={seed}", f"data.dataset={DATASET}", f"finetune.parent={parent}"]
    overrides += SCRATCH_OVERRIDES if method == "scratch" else []
    overrides += [f"train.threads={threads}"] if threads else []
    overrides += [f"finetune.shots={shots}"] if shots != "all" else [f"train.epochs={all_epochs}"]
    return load_config(resolve_recipe(recipe), overrides)


def run_scratch(cfg: Config, parent: Path, out: Path) -> dict:
    """Train a fresh model on exactly the data the fine-tuning runs get (its own normalisation)."""
    card = read_card(parent)
    cfg.model.name = card.arch
    cfg.model.args = {k: v for k, v in card.arch_args.items() if k not in ("in_channels", "num_classes")}
    cfg, splits, _ = prepare_splits(cfg, card, progress=False)
    info = get_dataset_info(DATASET)
    for data in (splits.train, splits.val, splits.test):
        if data is not None:
            data.mean, data.std = info.mean, info.std
    return run_training(cfg, out=out, quiet=True, plan=RunPlan(splits=splits, prefix="scratch")).summary


def run_cell(method: str, parent: Path, shots: str, seed: int, all_epochs: int, threads: int | None) -> dict:
    """One training run; returns test accuracy, seconds and the run's shape."""
    cfg = method_config(method, parent, shots, seed, all_epochs, threads)
    tmp = Path(tempfile.mkdtemp(prefix="transfer-"))
    try:
        t0 = time.perf_counter()
        if method == "scratch":
            summary = run_scratch(cfg, parent, tmp / "run")
        else:
            summary = finetune(cfg, out=tmp / "run", quiet=True).summary
        return {"test_accuracy": summary["test_accuracy"], "seconds": round(time.perf_counter() - t0, 2),
                "epochs": summary["epochs"], "train_images": summary["train_images"],
                "parent_test_accuracy": summary.get("parent_test_accuracy")}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cell_stats(cells: dict, method: str, shots: str, seeds: list[int]) -> tuple[float, float] | None:
    accs = [cells[f"{method}/{shots}/{s}"]["test_accuracy"] for s in seeds if f"{method}/{shots}/{s}" in cells]
    if not accs:
        return None
    return seed_stats(accs)


def table(cells: dict, shots: list[str], methods: list[str], seeds: list[int]) -> str:
    """Markdown: one row per shot count, one column per method, mean ± std test accuracy (%)."""
    lines = ["| images per class | " + " | ".join(methods) + " |", "|---:|" + "---:|" * len(methods)]
    for k in shots:
        row = []
        stats = {m: cell_stats(cells, m, k, seeds) for m in methods}
        best = max((s[0] for s in stats.values() if s), default=None)
        for m in methods:
            s = stats[m]
            text = "" if s is None else f"{100 * s[0]:.1f} ± {100 * s[1]:.1f}"
            row.append(f"**{text}**" if s is not None and s[0] == best else text)
        lines.append(f"| {k} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: dict, shots: list[str], methods: list[str], seeds: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = {k: (6000 if k == "all" else int(k)) for k in shots}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for m in methods:
        pts = [(xs[k], *s) for k in shots if (s := cell_stats(cells, m, k, seeds))]
        if pts:
            x, mean, sd = zip(*pts, strict=True)
            ax.errorbar(x, [100 * v for v in mean], yerr=[100 * v for v in sd], marker="o", capsize=3,
                        label=m, linestyle="--" if m == "scratch" else "-")
    ax.set_xscale("log")
    ax.set_xticks([xs[k] for k in shots], shots)
    ax.minorticks_off()
    ax.set_xlabel("labelled training images per class (Fashion-MNIST)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"MNIST-pretrained -> Fashion-MNIST, mean ± std over {len(seeds)} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def environment() -> str:
    import mnistlab

    cpu = platform.processor() or platform.machine()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"mnistlab {mnistlab.__version__}, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parent", required=True, help="MNIST-pretrained run directory or artifact")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--shots", nargs="+", default=SHOTS, choices=SHOTS)
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    p.add_argument("--all-epochs", type=int, default=1, help="epochs for every method with all data")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: all cores)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--fresh", action="store_true", help="ignore finished cells in OUT/transfer.json")
    args = p.parse_args()
    if not os.environ.get("MNISTLAB_DATA_DIR"):
        print("warning: MNISTLAB_DATA_DIR is not set; datasets are looked up in the cache", file=sys.stderr)
    os.environ.setdefault("MNISTLAB_NO_TENSORBOARD", "1")
    parent = Path(args.parent).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "transfer.json"
    state = json.loads(store.read_text()) if store.exists() and not args.fresh else {}
    cells: dict = state.get("cells", {})
    seeds = list(range(args.seeds))
    t_start = time.perf_counter()
    for shots in args.shots:
        for method in args.methods:
            for seed in seeds:
                key = f"{method}/{shots}/{seed}"
                if key in cells:
                    continue
                cells[key] = run_cell(method, parent, shots, seed, args.all_epochs, args.threads)
                print(f"{key:>20}: {100 * cells[key]['test_accuracy']:.2f}%  ({cells[key]['seconds']:.1f} s)", flush=True)
                state = {"parent": str(parent), "parent_card": read_card(parent).metrics, "environment": environment(),
                         "all_epochs": args.all_epochs, "cells": cells}
                store.write_text(json.dumps(state, indent=1) + "\n")
    md = table(cells, args.shots, args.methods, seeds)
    total = sum(c["seconds"] for c in cells.values())
    header = (f"MNIST-pretrained `{read_card(parent).arch}` (MNIST test accuracy "
              f"{100 * read_card(parent).metrics['test_accuracy']:.2f}%) -> Fashion-MNIST test accuracy (%), "
              f"mean ± std over {len(seeds)} seeds; {environment()}; {total / 60:.1f} min of training runs.")
    (args.out / "transfer.md").write_text(header + "\n\n" + md + "\n")
    plot(cells, args.shots, args.methods, seeds, args.out / "transfer.png")
    print(header + "\n\n" + md)
    print(f"wrote {args.out / 'transfer.md'}, transfer.png, transfer.json ({time.perf_counter() - t_start:.0f} s this run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
