"""Fine-tuning end to end: a pretrained run or artifact -> new data (and classes) -> a new run.

    parent = load_artifact(FROM)
    data   = the new dataset [K shots per class], normalised as the parent was (mean, std, contrast stretch)
    model  = parent, head kept / replaced, strategy applied (full | head | partial | lora)
    run    = run_training(cfg, plan=RunPlan(prefix="finetune", ...)): run directory, artifact, resume as `train`

With ``finetune.semi.unlabelled`` (--unlabelled SPEC) the loop is ``finetune.semi.fit_semi``
(FixMatch-style) or, with ``finetune.semi.method: self-training``, ``finetune.self_training``
(rounds of pseudo-labels); either is fed the unlabelled images only, with every labelled image
taken out of them.

Small training sets (fewer than ``finetune.small.below`` images) get settings that work
without tuning: a held-out fraction for early stopping with best-weights restore, light
augmentation, a fixed number of steps (epochs computed from them) and a small batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, load_artifact, resolve_artifact
from mnistlab.checkpoint import has_checkpoint, load_checkpoint
from mnistlab.config import AugmentConfig, Config
from mnistlab.data.dataset import ImageData, class_balanced_subset, load_dataset
from mnistlab.device import resolve_device
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.evaluate import predict_logits
from mnistlab.finetune.self_training import fit_self_training
from mnistlab.finetune.semi import fit_semi, keep_apart
from mnistlab.finetune.strategies import (
    apply_depth,
    check_strategy,
    describe_trainable,
    freeze_norm_statistics,
    param_groups,
    trained_depth,
    unfrozen_depth,
)
from mnistlab.models import recipe_args
from mnistlab.models.lora import apply_lora, merge_lora
from mnistlab.runner import Built, RunPlan, RunResult, run_training
from mnistlab.splits import Splits, dry_run_slice, load_pool, make_splits

DRY_RUN_EPOCHS = 2  # --dry-run: at most this many (capped) epochs
DRY_RUN_UNLABELLED = 256  # --dry-run: unlabelled images kept


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


def with_small_set_defaults(cfg: Config, train: ImageData) -> tuple[Config, bool]:
    """``cfg`` set up for a small training set (a new config) and whether ``train`` counts as small.

    Deterministic in (cfg, train), so a resumed run resolves to the same settings.
    """
    small = cfg.finetune.small
    if small.below <= 0 or len(train) >= small.below:
        return cfg, False
    counts = train.class_counts()
    fewest = int(counts[counts > 0].min()) if bool((counts > 0).any()) else 0
    hold_out = 0 < small.val_size < 1 and round(fewest * small.val_size) >= max(1, small.min_val_per_class)
    augment = cfg.data.augment if cfg.data.augment.enabled else AugmentConfig(**vars(small.augment))
    data = replace(cfg.data, val_size=small.val_size if hold_out else 0, augment=augment)
    train_cfg = replace(cfg.train, batch_size=small.batch_size)
    if hold_out and small.patience > 0:
        train_cfg = replace(train_cfg, early_stop_metric=small.early_stop_metric, restore_best=True)
    return replace(cfg, data=data, train=train_cfg), True


def _check_steps(steps: int | None) -> None:
    if steps is not None and steps < 1:
        raise ConfigError(f"the number of fine-tuning steps must be at least 1, got {steps}", hint="e.g. finetune.steps=300")


def _epochs_for_steps(steps: int, n_train: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps (the last partial batch is dropped)."""
    _check_steps(steps)
    per_epoch = max(1, n_train // max(1, min(batch_size, n_train)))
    return max(1, math.ceil(steps / per_epoch))


def _set_normalisation(data: ImageData | None, card: ModelCard) -> ImageData | None:
    """The parent's mean and std, which its backbone was trained with, for this data too."""
    if data is not None:
        data.mean, data.std = card.preprocess.mean, card.preprocess.std
    return data


def prepare_splits(cfg: Config, card: ModelCard, *, dry_run: bool = False,
                   progress: bool = True) -> tuple[Config, Splits, bool]:
    """Train/val/test for fine-tuning, and ``cfg`` with shots and small-set settings resolved (a new config).

    Returns the resolved config, the splits and whether the small-set settings apply.
    """
    ft = cfg.finetune
    pool = load_pool(cfg, progress=progress)
    expected = (card.preprocess.channels, card.preprocess.size, card.preprocess.size)
    if tuple(pool.images.shape[1:]) != expected:
        raise DataError(f"{cfg.data.dataset} has images of shape {tuple(pool.images.shape[1:])} but the parent model "
                        f"takes {expected}", hint="fine-tune on data of the same size and channels")
    if ft.shots is not None:
        pool = class_balanced_subset(pool, ft.shots, seed=cfg.seed)
    cfg, small = with_small_set_defaults(cfg, pool)
    steps = ft.steps if ft.steps is not None else (ft.small.steps if small else None)
    _check_steps(steps)
    splits = make_splits(cfg, pool=pool, progress=progress)  # sliced below, after the epochs are known
    train_cfg = cfg.train
    if steps is not None:
        train_cfg = replace(train_cfg, epochs=_epochs_for_steps(steps, len(splits.train), train_cfg.batch_size))
    if small and splits.val is not None and ft.small.patience > 0:
        train_cfg = replace(train_cfg, early_stop_patience=max(1, round(ft.small.patience * train_cfg.epochs)))
    if dry_run:
        train_cfg = replace(train_cfg, epochs=min(train_cfg.epochs, DRY_RUN_EPOCHS))
        splits = dry_run_slice(splits)
    splits = Splits(*(_set_normalisation(d, card) for d in (splits.train, splits.val, splits.test)))
    return replace(cfg, train=train_cfg), splits, small


SEMI_METHODS = {"fixmatch": fit_semi, "self-training": fit_self_training}  # finetune.semi.method -> its loop


def parent_accuracy(parent: Parent, test: ImageData | None, cfg: Config) -> float | None:
    """The parent's accuracy on the new test set, when it predicts the same classes (else None)."""
    if test is None or test.classes != parent.card.classes:
        return None
    pre = parent.card.preprocess
    logits = predict_logits(parent.model, test.images, mean=pre.mean, std=pre.std, autocontrast=pre.autocontrast,
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


def unlabelled_images(cfg: Config, splits: Splits, summary: dict[str, Any], *, dry_run: bool = False,
                      progress: bool = True) -> torch.Tensor:
    """The uint8 images of ``finetune.semi.unlabelled``'s training split, with the labelled ones taken out.

    Only the images leave this function, so semi-supervised training cannot read the unlabelled
    labels; ``summary`` records both sets (spec, count, how many overlapping images were dropped).
    """
    spec = cfg.finetune.semi.unlabelled
    pool = load_dataset(spec, "train", data_dir=cfg.data.data_dir, progress=progress).images
    if tuple(pool.shape[1:]) != tuple(splits.train.images.shape[1:]):
        raise DataError(f"--unlabelled {spec} has images of shape {tuple(pool.shape[1:])} but the labelled ones are "
                        f"{tuple(splits.train.images.shape[1:])}", hint="give unlabelled images of the same size and channels")
    images, dropped = keep_apart(pool, splits.train, splits.val)
    if dry_run:
        images = images[:DRY_RUN_UNLABELLED]
    summary.update(unlabelled={"spec": spec, "images": len(images), "dropped_as_labelled": dropped},
                   labelled={"spec": cfg.data.dataset, "train_images": len(splits.train),
                             "val_images": len(splits.val) if splits.val is not None else 0})
    return images


class _Plan:
    """The model builder for `run_training` plus the per-epoch unfreezing that goes with it."""

    def __init__(self, parent: Parent, extra_summary: dict[str, Any], *, done_epochs: int, gradual: int) -> None:
        self.parent, self.extra_summary = parent, extra_summary
        self.done_epochs, self.gradual = done_epochs, gradual  # epochs already trained (resume); unfreeze period
        self.model: torch.nn.Module | None = None
        self.depth = 1
        self.adapters = False

    def build(self, cfg: Config, splits: Splits) -> Built:
        """The parent with its head adapted and the strategy applied (`run_training`'s model builder)."""
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
    """Fine-tune ``cfg.finetune.parent`` on ``cfg.data`` into a new run directory (or continue ``resume_dir``).

    ``cfg`` is left as it is; the run's config.yaml holds the resolved one (shots, small-set settings).
    """
    ft = cfg.finetune
    check_strategy(ft.strategy)
    if ft.parent is None:
        raise ConfigError("no model to fine-tune from", hint="give a run directory or artifact: mnistlab finetune FROM ...")
    if ft.shots is not None and ft.shots < 1:
        raise ConfigError(f"--shots must be at least 1, got {ft.shots}", hint="e.g. --shots 10")
    if ft.semi.method not in SEMI_METHODS:
        raise ConfigError(f"unknown finetune.semi.method '{ft.semi.method}'", hint=f"choose one of: {', '.join(SEMI_METHODS)}")
    if ft.merge and ft.strategy != "lora":
        raise ConfigError("--merge folds LoRA adapters into the weights", hint="use it with --strategy lora")
    if cfg.train.freeze_out and ft.gradual_unfreeze > 0 and ft.strategy in ("full", "partial"):
        raise ConfigError("train.freeze_out and finetune.gradual_unfreeze both decide which blocks train, and would "
                          "undo each other", hint="use one of them: train.freeze_out=[] or finetune.gradual_unfreeze=0")
    parent = load_parent(ft.parent)
    cfg = replace(cfg, model=replace(cfg.model, name=parent.card.arch, args=recipe_args(parent.card.arch_args)),
                  data=replace(cfg.data, autocontrast=parent.card.preprocess.autocontrast))  # the backbone's own input
    cfg, splits, small = prepare_splits(cfg, parent.card, dry_run=dry_run, progress=not quiet)
    summary: dict[str, Any] = {"parent_test_accuracy": parent_accuracy(parent, splits.test, cfg), "small_data": small}
    done = int(load_checkpoint(Path(resume_dir))["epoch"]) if resume_dir is not None and has_checkpoint(resume_dir) else 0
    unfreeze = _Plan(parent, summary, done_epochs=done,
                     gradual=ft.gradual_unfreeze if ft.strategy in ("full", "partial") else 0)
    plan = RunPlan(builder=unfreeze.build, splits=splits, prefix="finetune")
    if ft.semi.unlabelled:
        fitter = SEMI_METHODS[ft.semi.method]
        plan = replace(plan, fitter=partial(fitter, unlabelled_images(cfg, splits, summary, dry_run=dry_run,
                                                                      progress=not quiet)))
    result = run_training(cfg, out=out, resume_dir=Path(resume_dir) if resume_dir is not None else None, quiet=quiet,
                          dry_run=dry_run, epoch_callback=unfreeze.epoch_done, plan=plan)
    if not quiet and result.summary and result.summary.get("parent_test_accuracy") is not None:
        s = result.summary
        print(f"parent on this test set {s['parent_test_accuracy']:.4f} -> fine-tuned {s['test_accuracy']:.4f}")
    return result
