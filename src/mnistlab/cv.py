"""Stratified K-fold cross-validation on the training set (the test set is never loaded).

Every example of the training split lands in exactly one validation fold; each class is dealt
round-robin over the folds in a seeded random order, so every fold holds each class's share to
within one example. Fold k trains on the other K-1 folds with the recipe as it is (same seed,
same initialisation) and is scored on fold k; the figure is the validation accuracy of the
weights the run ends with (the best epoch's when ``train.restore_best`` is on, as in `train`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mnistlab.config import Config, config_to_dict, save_config
from mnistlab.data.dataset import ImageData
from mnistlab.errors import ConfigError, DataError
from mnistlab.fileio import atomic_write_text
from mnistlab.runner import RunPlan, run_training
from mnistlab.runs import new_run_dir, write_json
from mnistlab.seeds import seed_stats
from mnistlab.splits import Splits, load_pool, make_splits


def stratified_folds(labels: torch.Tensor, k: int, seed: int) -> list[torch.Tensor]:
    """K disjoint, sorted index tensors covering ``range(len(labels))``, stratified by label.

    Per class the fold sizes differ by at most one, and so do the folds' total sizes.
    """
    if k < 2:
        raise ConfigError(f"--folds must be at least 2, got {k}")
    labels = labels.cpu()
    n = len(labels)
    if n < k:
        raise DataError(f"{n} examples cannot make {k} folds", hint="use fewer folds")
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(n, dtype=torch.int64)
    dealt = 0  # start each class where the previous one stopped, so fold totals stay balanced
    for value in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == value).flatten()
        idx = idx[torch.randperm(len(idx), generator=generator)]
        fold_of[idx] = (dealt + torch.arange(len(idx))) % k
        dealt += len(idx)
    return [torch.nonzero(fold_of == j).flatten() for j in range(k)]


@dataclass
class CvResult:
    out: Path
    folds: list[dict[str, Any]]
    mean: float
    std: float


def _pool(cfg: Config, progress: bool) -> ImageData:
    """The labelled training split the folds are cut from (``data.train_limit`` caps it)."""
    data = load_pool(cfg, progress=progress)
    if bool((data.labels < 0).any()):
        raise DataError(f"{cfg.data.dataset}: cross-validation needs labels, but some training examples have none")
    whole = replace(cfg, data=replace(cfg.data, val_size=0))  # the folds are the validation sets
    return make_splits(whole, pool=data, test=False, progress=progress).train


def format_folds(rows: list[dict[str, Any]], mean: float, std: float) -> str:
    """Per-fold figures and the mean ± sample standard deviation, as aligned text."""
    lines = ["fold  train    val  val_acc  val_loss  epochs  seconds"]
    for r in rows:
        loss = "n/a" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(f"{r['fold']:>4}  {r['train_images']:>5}  {r['val_images']:>5}  {r['val_accuracy']:.4f}  "
                     f"{loss:>8}  {r['epochs']:>6}  {r['train_seconds']:>7.1f}")
    lines.append(f"mean validation accuracy {mean:.4f} ± {std:.4f} (sample std over {len(rows)} folds)")
    return "\n".join(lines)


def run_cv(cfg: Config, k: int, *, out: str | Path | None = None, quiet: bool = False) -> CvResult:
    """Train one run per fold into ``<out>/fold-<i>``; write cv.json and cv.txt into ``out``."""
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    data = _pool(cfg, progress=not quiet)
    counts = data.class_counts()
    short = [f"{data.classes[c]} ({int(counts[c])})" for c in range(len(counts)) if 0 < counts[c] < k]
    if short:
        raise DataError(f"classes with fewer examples than folds cannot be stratified: {', '.join(short[:5])}",
                        hint=f"use --folds {int(counts[counts > 0].min())} or fewer")
    folds = stratified_folds(data.labels, k, cfg.seed)
    run_dir = new_run_dir(out, prefix="cv")
    save_config(cfg, run_dir / "config.yaml")
    rows = []
    for i, val_idx in enumerate(folds, start=1):
        is_val = torch.zeros(len(data), dtype=torch.bool)
        is_val[val_idx] = True
        splits = Splits(data.subset(torch.nonzero(~is_val).flatten()), data.subset(val_idx), None)
        if not quiet:
            print(f"fold {i}/{k}: {len(splits.train):,} train, {len(splits.val):,} val")
        result = run_training(cfg, out=run_dir / f"fold-{i}", quiet=True, plan=RunPlan(splits=splits))
        s = result.summary
        best = next((h for h in result.fit.history if h["epoch"] == result.fit.best_epoch), result.fit.history[-1])
        row = {"fold": i, "train_images": len(splits.train), "val_images": len(splits.val),
               "val_accuracy": best["val_acc"], "val_loss": best["val_loss"],
               "last_val_accuracy": result.fit.history[-1]["val_acc"], "epochs": s["epochs"],
               "best_epoch": s["best_epoch"], "train_seconds": s["train_seconds"], "run_dir": str(result.run_dir)}
        rows.append(row)
        if not quiet:
            print(f"fold {i}/{k}: val_acc {row['val_accuracy']:.4f}  ({row['train_seconds']:.1f}s)")
    mean, std = seed_stats([r["val_accuracy"] for r in rows])
    write_json(run_dir / "cv.json", {
        "folds": k, "seed": cfg.seed, "dataset": cfg.data.dataset, "pool_images": len(data),
        "mean_val_accuracy": mean, "std_val_accuracy": std, "per_fold": rows,
        "fold_indices_sha": _digest(folds), "config": config_to_dict(cfg),
    })
    table = format_folds(rows, mean, std)
    atomic_write_text(run_dir / "cv.txt", table + "\n")
    if not quiet:
        print(table)
        print(f"-> {run_dir}")
    return CvResult(run_dir, rows, mean, std)


def _digest(folds: list[torch.Tensor]) -> str:
    """A short hash of the fold assignment, to check that two runs used the same folds."""
    import hashlib

    h = hashlib.sha256()
    for f in folds:
        h.update(f.numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()[:16]
