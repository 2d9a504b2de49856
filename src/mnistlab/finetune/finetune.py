"""Fine-tuning end to end: a pretrained run or artifact -> new data (and classes) -> a new run.

    parent = load_artifact(FROM)
    data   = the new dataset [K shots per class], normalised with the parent's mean and std
    model  = parent, head kept / replaced, strategy applied (full | head | partial | lora)
    run    = run_training(..., prefix="finetune"): the same run directory, artifact and resume as `train`

Small training sets (fewer than ``finetune.small.below`` images) get settings that work
without tuning: a held-out fraction for early stopping with best-weights restore, light
augmentation, a fixed number of steps (epochs computed from them) and a small batch.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, load_artifact, resolve_artifact
from mnistlab.checkpoint import load_checkpoint
from mnistlab.config import AugmentConfig, Config
from mnistlab.data.dataset import ImageData, class_balanced_subset, load_dataset, split_train_val
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.evaluate import predict_logits
from mnistlab.models.lora import apply_lora, merge_lora
from mnistlab.finetune.strategies import (
    apply_depth,
    check_strategy,
    describe_trainable,
    freeze_norm_statistics,
    param_groups,
    trained_depth,
    unfrozen_depth,
)
from mnistlab.runner import (
    DRY_RUN_EVAL,
    DRY_RUN_TRAIN,
    SMALL_SET_VAL_FRACTION,
    Built,
    RunResult,
    Splits,
    run_training,
)
from mnistlab.train import resolve_device

DRY_RUN_EPOCHS = 2  # --dry-run: at most this many (capped) epochs


@dataclass
class Parent:
    """The pretrained model fine-tuning starts from."""

    model: torch.nn.Module
    card: ModelCard
    path: Path


def load_parent(path: str | Path) -> Parent:
    """Load the run directory or artifact ``path`` to fine-tune from."""
    try:
        directory = resolve_artifact(path)
    except MnistlabError as err:
        raise MnistlabError(f"cannot fine-tune from '{path}': {err.message}",
                            hint=err.hint or "give a finished run directory or a model artifact") from None
    model, card = load_artifact(directory)
    return Parent(model.train(), card, directory.resolve())


def apply_small_set_defaults(cfg: Config, train: ImageData) -> bool:
    """Set ``cfg`` up for a small training set (in place); return whether ``train`` counts as small.

    Deterministic in (cfg, train), so a resumed run resolves to the same settings.
    """
    small = cfg.finetune.small
    if small.below <= 0 or len(train) >= small.below:
        return False
    counts = train.class_counts()
    fewest = int(counts[counts > 0].min()) if bool((counts > 0).any()) else 0
    hold_out = 0 < small.val_size < 1 and round(fewest * small.val_size) >= max(1, small.min_val_per_class)
    cfg.data.val_size = small.val_size if hold_out else 0
    cfg.train.batch_size = small.batch_size
    if not any(vars(cfg.data.augment).values()):
        cfg.data.augment = AugmentConfig(**vars(small.augment))
    if hold_out and small.patience > 0:
        cfg.train.early_stop_metric = small.early_stop_metric
        cfg.train.restore_best = True
    return True


def _epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps (the last partial batch is dropped)."""
    if steps < 1:
        raise ConfigError(f"the number of fine-tuning steps must be at least 1, got {steps}", hint="e.g. finetune.steps=300")
    per_epoch = max(1, n_train // max(1, min(batch_size, n_train)))
    return max(1, math.ceil(steps / per_epoch))


def _set_normalisation(data: ImageData | None, card: ModelCard) -> ImageData | None:
    """The parent's mean and std, which its backbone was trained with, for this data too."""
    if data is not None:
        data.mean, data.std = card.preprocess.mean, card.preprocess.std
    return data


def prepare_splits(cfg: Config, card: ModelCard, *, dry_run: bool = False, progress: bool = True) -> tuple[Splits, bool]:
    """Train/val/test for fine-tuning, with shots and small-set settings resolved into ``cfg``.

    Returns the splits and whether the small-set settings apply.
    """
    dc, ft = cfg.data, cfg.finetune
    train = load_dataset(dc.dataset, "train", data_dir=dc.data_dir, progress=progress)
    expected = (card.preprocess.channels, card.preprocess.size, card.preprocess.size)
    if tuple(train.images.shape[1:]) != expected:
        raise DataError(f"{dc.dataset} has images of shape {tuple(train.images.shape[1:])} but the parent model "
                        f"takes {expected}", hint="fine-tune on data of the same size and channels")
    if ft.shots is not None:
        train = class_balanced_subset(train, ft.shots, seed=cfg.seed)
    small = apply_small_set_defaults(cfg, train)
    val_size = dc.val_size
    if val_size >= 1 and len(train) < 4 * val_size:
        val_size = SMALL_SET_VAL_FRACTION
    train, val = split_train_val(train, val_size, seed=cfg.seed) if val_size > 0 else (train, None)
    if dc.train_limit is not None:
        train = train.subset(torch.arange(min(dc.train_limit, len(train))))
    steps = ft.steps if ft.steps is not None else (ft.small.steps if small else None)
    if steps is not None:
        cfg.train.epochs = _epochs_for_steps(steps, len(train), cfg.train.batch_size)
    if small and val is not None and len(val) and ft.small.patience > 0:
        cfg.train.early_stop_patience = max(1, round(ft.small.patience * cfg.train.epochs))
    test = _load_test(cfg, train, progress)
    if dry_run:
        cfg.train.epochs = min(cfg.train.epochs, DRY_RUN_EPOCHS)
        train = train.subset(torch.arange(min(DRY_RUN_TRAIN, len(train))))
        val = val.subset(torch.arange(min(DRY_RUN_EVAL, len(val)))) if val is not None else None
        test = test.subset(torch.arange(min(DRY_RUN_EVAL, len(test)))) if test is not None else None
    val = val if val is not None and len(val) else None
    return Splits(*(_set_normalisation(d, card) for d in (train, val, test))), small


def _load_test(cfg: Config, train: ImageData, progress: bool) -> ImageData | None:
    spec = cfg.data.test_dataset or cfg.data.dataset
    try:
        test = load_dataset(spec, "test", data_dir=cfg.data.data_dir, progress=progress)
    except MnistlabError as err:
        if cfg.data.test_dataset is not None:
            raise
        print(f"warning: no test set ({err}); pass --test-dataset SPEC to evaluate on one", file=sys.stderr)
        return None
    if test.classes != train.classes:
        raise DataError(f"test set '{spec}' has classes {test.classes[:5]}... but the training data has "
                        f"{train.classes[:5]}...", hint="use a test set with the same class folders")
    return test


def parent_accuracy(parent: Parent, test: ImageData | None, cfg: Config) -> float | None:
    """The parent's accuracy on the new test set, when it predicts the same classes (else None)."""
    if test is None or test.classes != parent.card.classes:
        return None
    logits = predict_logits(parent.model, test.images, mean=parent.card.preprocess.mean, std=parent.card.preprocess.std,
                            batch_size=cfg.train.eval_batch_size, device=resolve_device(cfg.device))
    parent.model.train()
    return (logits.argmax(1) == test.labels).sum().item() / len(test)


def adapt_head(model: torch.nn.Module, parent_classes: list[str], classes: list[str], reset: bool) -> str:
    """Keep the head when the classes match, else replace it; say what was done.

    A replaced head starts from the parent's rows for the classes both share (by name).
    """
    if classes == parent_classes and not reset:
        return "kept"
    old = model.head
    model.reset_head(len(classes))
    if reset:
        return "reset"
    shared = [(i, parent_classes.index(c)) for i, c in enumerate(classes) if c in parent_classes]
    if not shared:
        return "replaced"
    with torch.no_grad():
        for new, was in shared:
            model.head.weight[new] = old.weight[was]
            model.head.bias[new] = old.bias[was]
    return f"replaced ({len(shared)} of {len(classes)} classes from the parent)"


class _Plan:
    """The builder for `run_training` plus the per-epoch unfreezing that goes with it."""

    def __init__(self, parent: Parent, extra_summary: dict[str, Any], *, done_epochs: int, gradual: int) -> None:
        self.parent, self.extra_summary = parent, extra_summary
        self.done_epochs, self.gradual = done_epochs, gradual  # epochs already trained (resume); unfreeze period
        self.model: torch.nn.Module | None = None
        self.depth = 1
        self.adapters = False

    def build(self, cfg: Config, splits: Splits) -> Built:
        ft = cfg.finetune
        model, card = self.parent.model, self.parent.card
        head = adapt_head(model, card.classes, splits.train.classes, ft.reset_head)
        adapters = apply_lora(model, ft.lora_rank, ft.lora_alpha, ft.lora_targets) if ft.strategy == "lora" else None
        self.model, self.adapters = model, adapters is not None
        self.depth = trained_depth(ft.strategy, len(model.blocks()), ft.partial_blocks)
        groups = param_groups(model, cfg.optim.lr, self.depth, layer_lr_decay=ft.layer_lr_decay, adapters=self.adapters)
        apply_depth(model, self.depth, adapters=self.adapters)
        freeze_norm_statistics(model)
        trainable = describe_trainable(model)["trainable"]  # with every planned group unfrozen
        self.set_epoch(self.done_epochs)
        lineage = {
            "path": str(self.parent.path), "arch": card.arch, "dataset": card.dataset, "classes": list(card.classes),
            "test_accuracy": card.metrics.get("test_accuracy"),
            "test_accuracy_on_new_data": self.extra_summary.get("parent_test_accuracy"),
            "strategy": ft.strategy, "shots": ft.shots, "head": head, "adapters": adapters,
            "parent": card.parent,
        }
        extra_card: dict[str, Any] = {"parent": lineage, "adapters": adapters}
        self.extra_summary.update(strategy=ft.strategy, shots=ft.shots, head=head, trainable_params=trainable)

        def finalize(trained: torch.nn.Module) -> torch.nn.Module:
            if adapters is not None and ft.merge:
                merge_lora(trained)
                extra_card["adapters"] = None
                lineage["merged"] = True
            return trained

        return Built(model, groups, card=extra_card, summary=self.extra_summary, finalize=finalize)

    def set_epoch(self, epoch: int) -> None:
        """Unfreeze the groups that train from ``epoch`` on (0-based)."""
        if self.model is not None and self.depth > 1 and self.gradual > 0:
            apply_depth(self.model, unfrozen_depth(self.depth, self.gradual, epoch), adapters=self.adapters)

    def epoch_done(self, row: dict[str, Any]) -> None:
        """`fit`'s epoch callback: ``row["epoch"]`` epochs are done, so set up the next one."""
        self.set_epoch(int(row["epoch"]))


def finetune(cfg: Config, *, out: str | Path | None = None, resume_dir: str | Path | None = None, quiet: bool = False,
             dry_run: bool = False) -> RunResult:
    """Fine-tune ``cfg.finetune.parent`` on ``cfg.data`` into a new run directory (or continue ``resume_dir``)."""
    ft = cfg.finetune
    check_strategy(ft.strategy)
    if ft.parent is None:
        raise ConfigError("no model to fine-tune from", hint="give a run directory or artifact: mnistlab finetune FROM ...")
    if ft.shots is not None and ft.shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {ft.shots}", hint="e.g. --shots 10")
    if ft.merge and ft.strategy != "lora":
        raise ConfigError("--merge folds LoRA adapters into the weights", hint="use it with --strategy lora")
    parent = load_parent(ft.parent)
    cfg.model.name = parent.card.arch
    cfg.model.args = {k: v for k, v in parent.card.arch_args.items() if k not in ("in_channels", "num_classes")}
    splits, small = prepare_splits(cfg, parent.card, dry_run=dry_run, progress=not quiet)
    summary: dict[str, Any] = {"parent_test_accuracy": parent_accuracy(parent, splits.test, cfg), "small_data": small}
    done = int(load_checkpoint(Path(resume_dir))["epoch"]) if resume_dir is not None else 0
    plan = _Plan(parent, summary, done_epochs=done,
                 gradual=ft.gradual_unfreeze if ft.strategy in ("full", "partial") else 0)
    result = run_training(cfg, out=out, resume_dir=Path(resume_dir) if resume_dir is not None else None, quiet=quiet,
                          dry_run=dry_run, builder=plan.build, prefix="finetune", splits=splits,
                          epoch_callback=plan.epoch_done)
    if not quiet and result.summary and result.summary.get("parent_test_accuracy") is not None:
        s = result.summary
        print(f"parent on this test set {s['parent_test_accuracy']:.4f} -> fine-tuned {s['test_accuracy']:.4f}")
    return result
