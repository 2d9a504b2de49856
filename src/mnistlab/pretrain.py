"""Self-supervised pretraining end to end: images (labels ignored) -> a backbone artifact for `finetune`.

    images  = the training split of cfg.data.dataset; its labels are not read while training
    model   = a registered model; its head is not trained and is saved zeroed, the card lists no classes
    fit     = ssl.fit_contrastive (checkpoint every epoch, exact --resume, --dry-run)
    probe   = a linear probe on frozen features: pretrain.probe_images labelled training images,
              accuracy on the test split, off the clock (when the dataset has labels)

The run directory holds config.yaml, metrics.jsonl, checkpoint.pt, model.safetensors + model.json
and summary.json; `mnistlab finetune RUN --dataset SPEC` attaches a fresh head for its classes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, Preprocess, library_versions, save_artifact
from mnistlab.config import Config, save_run_config
from mnistlab.device import resolve_device, settle_bf16
from mnistlab.distributed import default_threads
from mnistlab.models import count_params, create_model
from mnistlab.runner import check_settings
from mnistlab.runs import new_run_dir, write_json
from mnistlab.splits import load_pool, load_test
from mnistlab.ssl import check_objective, features, fit_contrastive, linear_probe

DRY_RUN_IMAGES = 256  # --dry-run: images kept
DRY_RUN_STEPS = 4  # --dry-run: steps per epoch
DRY_RUN_EPOCHS = 2


@dataclass
class PretrainRun:
    run_dir: Path
    summary: dict[str, Any]


def pretrain(cfg: Config, *, out: str | Path | None = None, resume_dir: str | Path | None = None, quiet: bool = False,
             dry_run: bool = False, epoch_callback: Any = None) -> PretrainRun:
    """Pretrain ``cfg.model`` on ``cfg.data.dataset``'s images into a new run directory (or continue ``resume_dir``)."""
    check_settings(cfg)
    check_objective(cfg.pretrain.objective)
    if dry_run:
        cfg = replace(cfg, train=replace(cfg.train, epochs=min(cfg.train.epochs, DRY_RUN_EPOCHS)))
    torch.set_num_threads(cfg.train.threads or default_threads())
    device = resolve_device(cfg.device)
    cfg = settle_bf16(cfg, device, quiet=quiet)
    torch.manual_seed(cfg.seed)
    pool = load_pool(cfg, progress=not quiet)
    images = pool.images[:DRY_RUN_IMAGES] if dry_run else pool.images
    backbone = create_model(cfg.model.name, in_channels=images.shape[1], num_classes=1, **cfg.model.args)
    run_dir = Path(resume_dir) if resume_dir is not None else new_run_dir(out, prefix="pretrain")
    if resume_dir is None:
        save_run_config(cfg, run_dir, dry_run=dry_run)
    if not quiet:
        print(f"run {run_dir}: {cfg.pretrain.objective} pretraining of {cfg.model.name} "
              f"({count_params(backbone):,} params) on {len(images):,} unlabelled images of {cfg.data.dataset}, device {device}")
    result = fit_contrastive(cfg, backbone, images, pool.mean, pool.std, device=device, run_dir=run_dir,
                             resume=resume_dir is not None, quiet=quiet, max_steps=DRY_RUN_STEPS if dry_run else None,
                             epoch_callback=epoch_callback)
    backbone = result.backbone.cpu()
    with torch.no_grad():  # no head: finetune attaches a fresh one for its classes
        backbone.head.weight.zero_()
        backbone.head.bias.zero_()
    probe = probe_accuracy(cfg, backbone, pool, dry_run=dry_run, quiet=quiet)
    summary = {"objective": cfg.pretrain.objective, "test_accuracy": None, "probe_accuracy": probe,
               "train_seconds": round(result.train_seconds, 3), "epochs": len(result.history),
               "final_loss": result.history[-1]["train_loss"] if result.history else None,
               "params": count_params(backbone), "model": cfg.model.name, "dataset": cfg.data.dataset,
               "pretrain_images": len(images), "seed": cfg.seed, "device": str(device), "threads": torch.get_num_threads()}
    card = ModelCard(arch=backbone.arch_name, arch_args=dict(backbone.arch_args), classes=[],
                     preprocess=Preprocess(size=images.shape[-1], channels=images.shape[1], mean=pool.mean, std=pool.std,
                                           autocontrast=cfg.data.autocontrast),
                     dataset=cfg.data.dataset, versions=library_versions(),
                     metrics={k: summary[k] for k in ("probe_accuracy", "final_loss", "epochs", "train_seconds")})
    save_artifact(run_dir, backbone, card)
    write_json(run_dir / "summary.json", summary)
    print(result_line(summary, run_dir))
    return PretrainRun(run_dir, summary)


def probe_accuracy(cfg: Config, backbone: torch.nn.Module, pool: Any, *, dry_run: bool, quiet: bool) -> float | None:
    """Linear-probe test accuracy of the frozen features, or None without labels, a test split or probe images."""
    n = min(cfg.pretrain.probe_images, 512 if dry_run else len(pool))
    if n <= 0 or bool((pool.labels < 0).any()):
        return None
    test = load_test(cfg, pool.classes, progress=not quiet)
    if test is None:
        return None
    if dry_run:
        test = test.subset(torch.arange(min(512, len(test))))
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cfg.seed))[:n]
    device = torch.device("cpu")
    train_x = features(backbone, pool.images[pick], pool.mean, pool.std, device)
    test_x = features(backbone, test.images, pool.mean, pool.std, device)
    steps = min(cfg.pretrain.probe_steps, 20) if dry_run else cfg.pretrain.probe_steps
    return round(linear_probe(train_x, pool.labels[pick], test_x, test.labels, len(pool.classes), steps), 4)


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The one line a finished pretraining run prints."""
    probe = "n/a" if summary["probe_accuracy"] is None else f"{summary['probe_accuracy']:.4f}"
    return (f"pretrain loss {summary['final_loss']:.4f}  linear probe {probe}  train {summary['train_seconds']:.1f}s"
            f"  -> {run_dir}")
