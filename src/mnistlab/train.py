"""The training loop: one readable function, no callback framework.

Data is a uint8 tensor on the training device; a batch is an index slice of a
seeded per-epoch permutation; augmentation is batched tensor math on the same
device. Every random draw of an epoch is seeded from (seed, epoch), and the
checkpoint written after each epoch holds everything else, so a resumed run
ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from mnistlab.artifact import unwrap
from mnistlab.checkpoint import load_checkpoint, save_checkpoint
from mnistlab.config import Config
from mnistlab.data.augment import augment_batch
from mnistlab.data.dataset import ImageData
from mnistlab.distributed import average_grads
from mnistlab.evaluate import predict_logits
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.runs import append_jsonl

EpochCallback = Callable[[dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for every (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class FitResult:
    model: torch.nn.Module  # the final weights (best / EMA as configured), unwrapped
    history: list[dict[str, Any]]
    train_seconds: float
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Tracker:
    """Best validation score so far, for early stopping and restoring the best weights."""

    metric: str
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    state: dict[str, torch.Tensor] | None = None

    def score(self, row: dict[str, Any]) -> float | None:
        value = row.get(self.metric)
        if value is None:
            return None
        return -value if self.metric == "val_loss" else value

    def update(self, row: dict[str, Any], weights: torch.nn.Module) -> None:
        s = self.score(row)
        if s is None:
            return
        if s > self.best:
            self.best, self.best_epoch, self.bad_epochs = s, row["epoch"], 0
            self.state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
        else:
            self.bad_epochs += 1


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    """Move the EMA weights toward the model's; buffers (BatchNorm statistics) are copied.

    The decay is warmed up, ``min(decay, (1 + step) / (10 + step))``: early on the average follows
    the model closely, so it never mixes the random initialisation with trained weights (which,
    with the live model's BatchNorm statistics, predicts one class for thousands of steps).
    """
    decay = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        ema_p = [p for p in ema.parameters()]
        model_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
        for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
            b_ema.copy_(b)


def _loss_fn(cfg: Config, num_classes: int, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    weight = None
    if cfg.train.class_weights is not None:
        if len(cfg.train.class_weights) != num_classes:
            from mnistlab.errors import ConfigError

            raise ConfigError(
                f"train.class_weights has {len(cfg.train.class_weights)} entries but the data has {num_classes} classes",
                hint="give one weight per class",
            )
        weight = torch.tensor(cfg.train.class_weights, dtype=torch.float32, device=device)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=cfg.train.label_smoothing)

    return loss


def fit(
    cfg: Config,
    model: torch.nn.Module,
    train_data: ImageData,
    val_data: ImageData | None,
    *,
    device: torch.device,
    run_dir: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    param_groups: list[dict[str, Any]] | None = None,
    epoch_callback: EpochCallback | None = None,
    max_steps: int | None = None,
) -> FitResult:
    """Train ``model`` on ``train_data`` as ``cfg`` says; checkpoint into ``run_dir`` every epoch.

    ``param_groups`` overrides the optimizer's groups (fine-tuning: frozen layers,
    discriminative learning rates). ``epoch_callback`` sees each epoch's metrics
    row and may raise to stop (hyperparameter pruning). ``max_steps`` caps the
    steps per epoch (``--dry-run``).
    """
    rank, world_size = world()
    main = rank == 0
    tc = cfg.train
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base = model
    if world_size > 1:
        if tc.sync_batchnorm and device.type == "cuda" and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in base.modules()):
            base = torch.nn.SyncBatchNorm.convert_sync_batchnorm(base)
        model = torch.nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)
    ddp_managed = {id(p) for p in base.parameters() if p.requires_grad}  # the parameters DDP averages
    if tc.compile:
        model = torch.compile(model)
    ema = copy.deepcopy(base).eval() if tc.ema > 0 else None
    for p in ema.parameters() if ema is not None else []:
        p.requires_grad_(False)

    groups = param_groups if param_groups is not None else [{"params": [p for p in base.parameters() if p.requires_grad]}]
    optimizer = build_optimizer(groups, cfg.optim)
    n = len(train_data)
    batch = min(tc.batch_size, n)
    if batch % world_size:
        from mnistlab.errors import ConfigError

        raise ConfigError(f"train.batch_size {batch} is not divisible by {world_size} processes",
                          hint="choose a global batch size that is a multiple of the process count")
    local_batch = batch // world_size
    steps = n // batch  # the last incomplete batch of each epoch's permutation is dropped
    if max_steps is not None:
        steps = min(steps, max_steps)
    schedule = Schedule(optimizer, cfg.schedule, steps, tc.epochs)
    loss_fn = _loss_fn(cfg, len(train_data.classes), device)
    aug = cfg.data.augment
    images = train_data.images.to(device)
    labels = train_data.labels.to(device)
    mean, std = train_data.mean, train_data.std
    tracker = _Tracker(tc.early_stop_metric)
    history: list[dict[str, Any]] = []
    start_epoch, step, elapsed = 0, 0, 0.0

    if resume and run_dir is not None:
        state = load_checkpoint(run_dir, map_location=device)
        base.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, step, elapsed = state["epoch"], state["step"], state["train_seconds"]
        history = state["history"]
        tracker.best, tracker.best_epoch, tracker.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]
        tracker.state = state.get("best_state")

    writer = _tensorboard(run_dir) if (main and run_dir is not None) else None
    stopped_early = False
    for epoch in range(start_epoch, tc.epochs):
        if tracker.bad_epochs >= tc.early_stop_patience > 0:
            stopped_early = True
            break
        seed = epoch_seed(cfg.seed, epoch)
        noise = seed + 104_729 * rank  # ranks draw different dropout/augmentation; rank 0 draws what one process does
        torch.manual_seed(noise)  # dropout and anything else drawing from the global generator
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
        aug_gen = torch.Generator(device=device).manual_seed(noise + 1)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=quiet or not main,
                   leave=False, unit="step", dynamic_ncols=True)
        for i in bar:
            idx = perm[i * batch + rank * local_batch : i * batch + (rank + 1) * local_batch]
            x = images[idx].float().div_(255)  # uint8 [B,C,H,W] -> float in [0, 1]
            if aug.enabled:
                x = augment_batch(x, aug, generator=aug_gen)
            x = (x - mean) / std
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            lr = schedule.set_step(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if world_size > 1:  # parameters unfrozen after wrapping (gradual unfreezing) are not DDP's to average
                average_grads([p.grad for p in base.parameters() if p.grad is not None and id(p) not in ddp_managed])
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(base.parameters(), tc.grad_clip)
            optimizer.step()
            if ema is not None:
                _ema_update(ema, base, tc.ema, step)
            step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            if not quiet and main and (i % 20 == 0 or i == steps - 1):
                seen = (i + 1) * batch
                bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{correct.item() / ((i + 1) * local_batch):.4f}",
                                lr=f"{lr:.2e}", img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        if world_size > 1:
            dist.all_reduce(loss_sum)
            dist.all_reduce(correct)
        if device.type == "cuda":  # kernels run asynchronously: the epoch ends when the GPU is done
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        elapsed += seconds
        seen = max(1, steps * batch)
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": loss_sum.item() / seen,
            "train_acc": correct.item() / seen,
            "val_loss": None,
            "val_acc": None,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(seconds, 3),
            "images_per_s": round(seen / max(seconds, 1e-9), 1),
        }
        weights = ema if ema is not None else base
        if val_data is not None and len(val_data):
            logits = predict_logits(weights, val_data.images, mean=mean, std=std, batch_size=tc.eval_batch_size,
                                    device=device, bf16=tc.bf16, channels_last=tc.channels_last)
            row["val_loss"] = F.cross_entropy(logits, val_data.labels).item()
            row["val_acc"] = (logits.argmax(1) == val_data.labels).float().mean().item()
        schedule.epoch_end(row["val_loss"])
        tracker.update(row, weights)
        history.append(row)
        if main:
            _log_epoch(row, tc.epochs, quiet)
            if writer is not None:
                for k, v in row.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(k, v, epoch + 1)
                writer.flush()
            if run_dir is not None:
                append_jsonl(run_dir / "metrics.jsonl", row)
                save_checkpoint(run_dir, {
                    "model": base.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None, "epoch": epoch + 1, "step": step,
                    "train_seconds": elapsed, "history": history, "best": tracker.best, "best_epoch": tracker.best_epoch,
                    "bad_epochs": tracker.bad_epochs, "best_state": tracker.state,
                })
        if epoch_callback is not None:
            epoch_callback(row)
    if writer is not None:
        writer.close()

    final = unwrap(ema if ema is not None else base)
    if tc.restore_best and tracker.state is not None and tracker.best_epoch != len(history):
        final.load_state_dict(tracker.state)
    return FitResult(final, history, elapsed, len(history), tracker.best_epoch or len(history), stopped_early)


def _log_epoch(row: dict[str, Any], epochs: int, quiet: bool) -> None:
    if quiet:
        return
    val = "" if row["val_acc"] is None else f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}"
    tqdm.write(
        f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}{val}"
        f"  lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
    )


def _tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter into ``run_dir/tensorboard`` when tensorboard is installed, else None."""
    if os.environ.get("MNISTLAB_NO_TENSORBOARD"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
