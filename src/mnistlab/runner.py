"""One training run end to end: data, model, fit, evaluation, run directory and artifact."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, Preprocess, library_versions, save_artifact
from mnistlab.calibration import fit_temperature
from mnistlab.checkpoint import has_checkpoint
from mnistlab.config import Config, config_from_dict, load_yaml, save_run_config, validate_config
from mnistlab.data.imagedata import ImageData
from mnistlab.data.registry import DATASETS
from mnistlab.device import resolve_device, settle_bf16, world
from mnistlab.distributed import barrier, default_threads, init_distributed, on_main, peer_errors
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.evaluate import (
    format_report,
    plot_confusion,
    plot_curves,
    plot_reliability,
    plot_top_losses,
    predict_logits,
    recipe_tta,
    report_from_logits,
)
from mnistlab.models import count_params, create_model
from mnistlab.runs import new_run_dir, read_json, write_json
from mnistlab.splits import Splits, make_splits
from mnistlab.train import EpochCallback, FitResult, fit

DRY_RUN_STEPS = 4  # optimizer steps per epoch under --dry-run


@dataclass
class Built:
    """What a model builder returns: the model, optional optimizer groups, extra card fields."""

    model: torch.nn.Module
    param_groups: list[dict[str, Any]] | None = None
    card: dict[str, Any] | None = None  # e.g. {"parent": ..., "adapters": ...}
    summary: dict[str, Any] | None = None  # extra figures for summary.json (e.g. the parent's test accuracy)
    finalize: Callable[[torch.nn.Module], torch.nn.Module] | None = None  # applied to the trained model before saving


ModelBuilder = Callable[[Config, Splits], Built]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    fit: FitResult


def build_from_registry(cfg: Config, splits: Splits) -> Built:
    """A fresh model from the registry, sized for the data's channels and classes."""
    channels = splits.train.images.shape[1]
    return Built(create_model(cfg.model.name, in_channels=channels, num_classes=len(splits.train.classes), **cfg.model.args))


@dataclass(frozen=True)
class RunPlan:
    """What a command brings to a run besides its config: the model builder, the data, the folder name."""

    builder: ModelBuilder = build_from_registry
    splits: Splits | None = None  # None: make_splits(cfg); a test set of None is never evaluated
    prefix: str = "train"  # a new run directory is runs/<prefix>-<time>
    fitter: Callable[..., FitResult] = fit  # the loop, called as `train.fit` is (semi-supervised: its own)


def run_training(cfg: Config, *, out: str | Path | None = None, resume_dir: Path | None = None, quiet: bool = False,
                 dry_run: bool = False, epoch_callback: EpochCallback | None = None,
                 plan: RunPlan | None = None) -> RunResult:
    """Train per ``cfg`` into a new run directory (or continue ``resume_dir``) and evaluate on test.

    ``plan`` carries what other commands bring: fine-tuning's builder, cross-validation's folds,
    a search's data without a test set.
    """
    plan = plan or RunPlan()
    check_settings(cfg)  # before any work: a nonsense setting costs nothing
    torch.set_num_threads(cfg.train.threads or default_threads())
    if cfg.task == "read":  # strings of characters: the sequence reader's own loop (read_train)
        from mnistlab.read_train import run_read_training

        run_dir, summary, fitted = run_read_training(cfg, out=out, resume_dir=resume_dir, quiet=quiet, dry_run=dry_run)
        return RunResult(run_dir, summary, fitted)
    device = init_distributed(resolve_device(cfg.device))  # joins torchrun's process group, if any
    rank, world_size = world()
    main = rank == 0
    cfg = settle_bf16(cfg, device, quiet=quiet or not main)
    torch.manual_seed(cfg.seed)
    splits = plan.splits if plan.splits is not None else make_splits(cfg, dry_run=dry_run, progress=not quiet and main)
    built = plan.builder(cfg, splits)
    if resume_dir is not None:
        run_dir = Path(resume_dir)
    else:  # created once, by rank 0; every rank learns the path (a resume reads it on all ranks)
        run_dir = on_main(lambda: new_run_dir(out, prefix=plan.prefix))
    if main and resume_dir is None:
        save_run_config(cfg, run_dir, dry_run=dry_run)
    if main and not quiet and resume_dir is not None and not has_checkpoint(run_dir):
        print(f"{run_dir} was stopped before its first checkpoint: training from the first step")
    if main and not quiet:
        print(f"run {run_dir}: {cfg.model.name} ({count_params(built.model):,} params) on {cfg.data.dataset} "
              f"({len(splits.train):,} train, {len(splits.val) if splits.val else 0:,} val), device {device}"
              + (f" x {world_size} processes" if world_size > 1 else ""))
    if (main and not quiet and world_size > 1 and cfg.train.sync_batchnorm and device.type != "cuda"
            and getattr(built.model, "uses_batchnorm", False)):  # documented in docs/distributed.md
        print("  batch norm: per process on CPU (train.sync_batchnorm takes effect on CUDA)")
    with peer_errors():  # a peer that died ends this rank with one clear line, not a hang or a trace
        result = plan.fitter(cfg, built.model, splits.train, splits.val, device=device, run_dir=run_dir,
                             resume=resume_dir is not None, quiet=quiet, param_groups=built.param_groups,
                             epoch_callback=epoch_callback, max_steps=DRY_RUN_STEPS if dry_run else None)
    if built.finalize is not None:  # e.g. fold LoRA adapters into plain weights
        result.model = built.finalize(result.model)
    result.extra.update(built.summary or {})
    summary = finish_run(cfg, result, splits, run_dir, device=device, card_extra=built.card, quiet=quiet) if main else {}
    barrier()  # every rank ends with the run directory complete
    return RunResult(run_dir, summary, result)


def finish_run(cfg: Config, result: FitResult, splits: Splits, run_dir: Path, *, device: torch.device,
               card_extra: dict[str, Any] | None = None, quiet: bool = False) -> dict[str, Any]:
    """Evaluate the final model on test; write summary, artifact and plots into ``run_dir``."""
    model = result.model
    train = splits.train
    summary: dict[str, Any] = {
        "test_accuracy": None,
        "test_loss": None,
        "train_seconds": round(result.train_seconds, 3),
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "params": count_params(model),
        "val_accuracy": next((h["val_acc"] for h in result.history if h["epoch"] == result.best_epoch), None),
        "seed": cfg.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": cfg.model.name,
        "dataset": cfg.data.dataset,
        "train_images": len(train),
    }
    report = None
    temperature = fit_run_temperature(cfg, model, splits.val, device)
    summary["temperature"] = temperature
    if splits.test is not None:
        logits = predict_logits(model, splits.test.images, mean=train.mean, std=train.std,
                                batch_size=cfg.train.eval_batch_size, device=device, autocontrast=cfg.data.autocontrast,
                                **recipe_tta(cfg))
        report = report_from_logits(logits, splits.test.labels, splits.test.classes, temperature)
        summary.update(test_accuracy=report.accuracy, test_loss=report.loss, per_class=report.per_class,
                       macro=report.macro, weighted=report.weighted)
        if report.calibration is not None:
            summary.update({f"test_{k}": v for k, v in report.calibration.to_dict().items() if k != "temperature"})
            plot_reliability(report.calibration, run_dir / "reliability.png")
        plot_confusion(report, run_dir / "confusion_matrix.png")
        plot_top_losses(splits.test.images, logits, splits.test.labels, splits.test.classes, run_dir / "top_losses.png")
    summary.update(result.extra)
    if result.history:
        plot_curves(result.history, run_dir / "curves.png")
    card = ModelCard(
        arch=model.arch_name,
        arch_args=dict(model.arch_args),
        classes=list(train.classes),
        preprocess=Preprocess(size=train.images.shape[-1], channels=train.images.shape[1], mean=train.mean, std=train.std,
                              autocontrast=cfg.data.autocontrast),
        temperature=temperature,
        dataset=cfg.data.dataset,
        metrics={k: summary[k] for k in ("test_accuracy", "test_loss", "val_accuracy", "epochs", "train_seconds")},
        versions=library_versions(),
        **(card_extra or {}),
    )
    save_artifact(run_dir, model, card)
    write_json(run_dir / "summary.json", summary)
    if not quiet:
        if report is not None:
            print(format_report(report))
        print(result_line(summary, run_dir))
    return summary


def fit_run_temperature(cfg: Config, model: torch.nn.Module, val: ImageData | None, device: torch.device) -> float:
    """The temperature that minimises the NLL on the run's validation split, evaluated as the test set is; 1.0 without one."""
    if val is None or not len(val):
        return 1.0
    logits = predict_logits(model, val.images, mean=val.mean, std=val.std, batch_size=cfg.train.eval_batch_size,
                            device=device, autocontrast=cfg.data.autocontrast, **recipe_tta(cfg))
    return round(fit_temperature(logits, val.labels), 4)


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The one line a finished run prints: test accuracy, training seconds, where it was written."""
    acc = "n/a" if summary["test_accuracy"] is None else f"{summary['test_accuracy']:.4f}"
    return f"test accuracy {acc}  train {summary['train_seconds']:.1f}s  -> {run_dir}"


def check_settings(cfg: Config) -> None:
    """Every setting in range (:func:`validate_config`), and a validation count the dataset can give."""
    validate_config(cfg)
    if cfg.task not in ("classify", "read"):
        raise ConfigError(f"unknown task '{cfg.task}'", hint="task is classify (one label per image) or read (strings)")
    info, val = DATASETS.get(cfg.data.dataset), cfg.data.val_size
    if info is not None and val >= 1 and 4 * val > info.train_size:  # splits would quietly use a fraction instead
        raise ConfigError(f"data.val_size {val:g} is over a quarter of the {info.train_size:,} training images of "
                          f"{info.name}", hint=f"give at most {info.train_size // 4:,} images, or a fraction such as 0.1")


def completed_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that finished (its summary.json), or None when it has not."""
    path = Path(run_dir) / "summary.json"
    return read_json(path) if path.is_file() else None


def resume_config(run_dir: Path) -> Config:
    """The resolved config saved in a run directory."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise MnistlabError(f"'{run_dir}' is not a run directory (no config.yaml)", hint="give the directory printed by `mnistlab train`")
    return config_from_dict(load_yaml(path))
