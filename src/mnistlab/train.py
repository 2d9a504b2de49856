"""The training loop: one readable function, no callback framework.

Data is a uint8 tensor on the training device; a batch is an index slice of a
seeded per-epoch permutation; augmentation is batched tensor math on the same
device. Every random draw of an epoch is seeded from (seed, epoch), and the
checkpoint written after each epoch holds everything else (:class:`TrainState`),
so a resumed run ends with the same weights as an uninterrupted one. Within a long
epoch a checkpoint is also written every ``train.checkpoint_every_steps`` steps or
``train.checkpoint_every_seconds`` seconds; it adds the position in the epoch, the
generators' states and the epoch's running sums, so a resume from it replays the
epoch's draws and continues from that step, with the same weights at the end.
"""

from __future__ import annotations

import json
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

from mnistlab.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from mnistlab.config import Config, TrainConfig
from mnistlab.data.augment import augment_batch
from mnistlab.data.dataset import ImageData
from mnistlab.data.imagedata import normalize
from mnistlab.device import world
from mnistlab.distributed import average_grads
from mnistlab.errors import ConfigError
from mnistlab.evaluate import predict_logits
from mnistlab.fileio import atomic_write_text
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.runs import append_jsonl
from mnistlab.train_state import EMA, Tracker, TrainState

EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class FitResult:
    """What :func:`fit` ends with."""

    model: torch.nn.Module  # the final weights (best / EMA as configured), unwrapped
    history: list[dict[str, Any]]
    train_seconds: float
    epochs_run: int
    best_epoch: int
    stopped_early: bool
    extra: dict[str, Any] = field(default_factory=dict)


def fit(cfg: Config, model: torch.nn.Module, train_data: ImageData, val_data: ImageData | None, *,
        device: torch.device, run_dir: Path | None = None, resume: bool = False, quiet: bool = False,
        param_groups: list[dict[str, Any]] | None = None, epoch_callback: EpochCallback | None = None,
        max_steps: int | None = None) -> FitResult:
    """Train ``model`` on ``train_data`` as ``cfg`` says; checkpoint into ``run_dir`` every epoch (and within).

    ``param_groups`` overrides the optimizer's groups (fine-tuning: frozen layers,
    discriminative learning rates). ``epoch_callback`` sees each epoch's metrics
    row and may raise to stop (hyperparameter pruning). ``max_steps`` caps the
    steps per epoch (``--dry-run``). ``resume`` continues from ``run_dir``'s checkpoint, or
    from the first step when the run was stopped before writing one.
    """
    rank, world_size = world()
    main, tc, n = rank == 0, cfg.train, len(train_data)
    placed = place_model(model, tc, device, world_size)
    batch, local_batch, steps = _batching(n, tc.batch_size, world_size, max_steps)
    state = _new_state(cfg, placed.base, param_groups, steps)
    loss_fn = _loss_fn(cfg, len(train_data.classes), device)
    aug = cfg.data.augment
    images, labels = train_data.images.to(device), train_data.labels.to(device)
    mean, std = train_data.mean, train_data.std
    within: dict[str, Any] | None = None  # where in an epoch a mid-epoch checkpoint stopped
    if resume and run_dir is not None and has_checkpoint(run_dir):
        saved = load_checkpoint(run_dir, map_location=device)
        state.load_state_dict(saved)
        within = saved.get("within_epoch")
    log = EpochLog(run_dir if main else None, tc.epochs, quiet or not main)
    if resume:
        log.restart(state.history)  # rows a kill left past the checkpoint are trained again
    saver = _Checkpoints(tc, enabled=main and run_dir is not None, within_epochs=world_size == 1)
    freezer = FreezeOut(placed.base, tc.freeze_out, steps * tc.epochs)
    stopped_early = False
    for epoch in range(state.epoch, tc.epochs):
        if state.tracker.bad_epochs >= tc.early_stop_patience > 0:
            stopped_early = True
            break
        perm, aug_gen = epoch_draws(cfg.seed, epoch, rank, n, device)
        placed.run.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        start = 0
        if within is not None:  # continue the epoch a mid-epoch checkpoint stopped in
            start, t0 = within["position"], t0 - within["seconds"]
            _restore_draws(within, aug_gen, device)
            loss_sum.copy_(within["loss_sum"])
            correct.copy_(within["correct"])
            within = None
        bar = tqdm(range(start, steps), desc=f"epoch {epoch + 1}/{tc.epochs}", disable=log.silent or not os.isatty(2),  # a log or pipe gets the epoch line only
                   initial=start, total=steps, leave=False, unit="step", dynamic_ncols=True)
        for i in bar:
            idx = perm[i * batch + rank * local_batch : i * batch + (rank + 1) * local_batch]
            x = images[idx].float().div_(255)  # uint8 [B,C,H,W] -> float in [0, 1]
            if aug.enabled:
                x = augment_batch(x, aug, generator=aug_gen)
            x = normalize(x, mean, std, cfg.data.autocontrast)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = labels[idx]
            if freezer.update(state.step):
                placed.rewrap(tc, device)
            lr = state.schedule.set_step(state.step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                logits = placed.run(x)
            loss = loss_fn(logits, y)
            state.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            placed.average_late_grads()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
            state.optimizer.step()
            if state.ema is not None:
                state.ema.update(state.model, state.step)
            state.step += 1
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            if not log.silent and (i % 20 == 0 or i == steps - 1):
                _show_progress(bar, loss, correct, lr, i + 1, batch, local_batch, t0)
            if saver.due(state.step, i + 1, steps):
                saver.save(run_dir, {**state.state_dict(), "within_epoch": _position(
                    i + 1, time.perf_counter() - t0, aug_gen, device, loss_sum, correct)})
        bar.close()
        seconds = _end_of_epoch(loss_sum, correct, device, world_size, t0)
        state.elapsed += seconds
        row = _epoch_row(epoch + 1, loss_sum, correct, steps * batch, seconds, state.optimizer)
        row.update(validate(state.weights, val_data, mean, std, tc, device, autocontrast=cfg.data.autocontrast))
        state.end_epoch(row)
        if main:
            log.write(row)
            if run_dir is not None:
                saver.save(run_dir, state.state_dict())
        if epoch_callback is not None:
            epoch_callback(row)
    log.close()
    freezer.release()
    history = state.history
    return FitResult(state.final_weights(tc.restore_best), history, state.elapsed, len(history),
                     state.tracker.best_epoch or len(history), stopped_early)


def epoch_seed(seed: int, epoch: int) -> int:
    """A distinct, reproducible seed for every (run seed, epoch)."""
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)


def epoch_draws(seed: int, epoch: int, rank: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Generator]:
    """Seed the epoch's draws from (seed, epoch): the global generator, the permutation, the augmentation generator."""
    seed = epoch_seed(seed, epoch)
    noise = seed + 104_729 * rank  # ranks draw different dropout/augmentation; rank 0 draws what one process does
    torch.manual_seed(noise)  # dropout and anything else drawing from the global generator
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(device)
    return perm, torch.Generator(device=device).manual_seed(noise + 1)


class FreezeOut:
    """``train.freeze_out``: the model's i-th block from the input stops training after a fraction f_i of the steps.

    The first layers settle first (FreezeOut, Brock et al. 2017), and a frozen prefix of blocks
    needs no backward pass: no weight gradients for its convolutions, and none for the input of
    the block above it, so each step after a freezing point is cheaper. A frozen block's
    BatchNorm keeps normalising by batch, as in the rest of training. Which blocks are frozen
    follows from the step alone, so a resumed run freezes them at the same steps.
    """

    def __init__(self, model: torch.nn.Module, fractions: list[float], total_steps: int) -> None:
        self.blocks: list[torch.nn.Module] = []
        self.points: list[int] = []
        self.frozen = 0
        self.stopped: list[torch.nn.Parameter] = []  # what this turned off (a block may hold frozen weights already)
        if not fractions:
            return
        blocks = model.blocks() if hasattr(model, "blocks") else []
        if len(fractions) > len(blocks) or list(fractions) != sorted(fractions):
            raise ConfigError(f"train.freeze_out must rise and have at most one fraction per block ({len(blocks)} here), "
                              f"got {list(fractions)}", hint="e.g. train.freeze_out=[0.5,0.75] freezes the first two blocks")
        self.blocks, self.points = blocks, [int(f * total_steps) for f in fractions]

    def update(self, step: int) -> bool:
        """Freeze every block whose point ``step`` has reached; True when this froze one."""
        froze = False
        while self.frozen < len(self.points) and step >= self.points[self.frozen]:
            for p in self.blocks[self.frozen].parameters():
                if p.requires_grad:
                    p.requires_grad_(False)
                    self.stopped.append(p)
            self.frozen, froze = self.frozen + 1, True
        return froze

    def release(self) -> None:
        """After training: what this froze trains again (as a fine-tune of the weights expects)."""
        for p in self.stopped:
            p.requires_grad_(True)
        self.stopped, self.frozen = [], 0


class _Checkpoints:
    """Writes the checkpoints and says when one is due within an epoch (every N steps or M seconds).

    Within epochs only for one process: under data parallelism every rank draws its own dropout
    and augmentation, which rank 0's checkpoint does not hold, so those runs save at epoch ends.
    """

    def __init__(self, tc: TrainConfig, *, enabled: bool, within_epochs: bool) -> None:
        self.every_steps, self.every_seconds = tc.checkpoint_every_steps, tc.checkpoint_every_seconds
        self.within = enabled and within_epochs and (self.every_steps > 0 or self.every_seconds > 0)
        self.last = time.monotonic()

    def due(self, step: int, done: int, steps: int) -> bool:
        """True when a checkpoint is due after global ``step``, ``done`` of ``steps`` into the epoch."""
        if not self.within or done >= steps:  # the epoch's end writes its own
            return False
        return bool(self.every_steps and step % self.every_steps == 0) or bool(
            self.every_seconds and time.monotonic() - self.last >= self.every_seconds)

    def save(self, run_dir: Path, state: dict[str, Any]) -> None:
        """Write ``state`` as the run's checkpoint."""
        save_checkpoint(run_dir, state)
        self.last = time.monotonic()


def _position(done: int, seconds: float, aug_gen: torch.Generator, device: torch.device, loss_sum: torch.Tensor,
              correct: torch.Tensor) -> dict[str, Any]:
    """Where an epoch stands after ``done`` steps: what a resume needs to continue it exactly."""
    return {"position": done, "seconds": seconds, "rng": torch.get_rng_state(), "aug_rng": aug_gen.get_state(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "loss_sum": loss_sum.detach().cpu(), "correct": correct.detach().cpu()}


def _restore_draws(within: dict[str, Any], aug_gen: torch.Generator, device: torch.device) -> None:
    """Put the generators back where a mid-epoch checkpoint left them (after :func:`epoch_draws` seeded them)."""
    torch.set_rng_state(within["rng"].cpu())
    aug_gen.set_state(within["aug_rng"].cpu())
    if within.get("cuda_rng") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(within["cuda_rng"].cpu(), device)


@dataclass
class PlacedModel:
    """A model ready to train on its device and among its processes."""

    base: torch.nn.Module  # the weights: what the optimizer, EMA and checkpoint see
    run: torch.nn.Module  # what a step calls: ``base``, wrapped in DDP and/or compiled
    ddp_managed: set[int]  # ids of the parameters DDP averages
    world_size: int

    def rewrap(self, tc: TrainConfig, device: torch.device) -> None:
        """After parameters stopped training: a new DDP wrapper over those that still do (every rank at the same step).

        DDP's reducer waits for a gradient of every parameter it was given, so it cannot skip frozen ones.
        """
        if self.world_size > 1:
            self.run = _wrap(self.base, tc, device, self.world_size)
            self.ddp_managed = _trained_ids(self.base)

    def average_late_grads(self) -> None:
        """Average the gradients DDP does not: parameters unfrozen after wrapping (gradual unfreezing)."""
        if self.world_size > 1:
            average_grads([p.grad for p in self.base.parameters() if p.grad is not None and id(p) not in self.ddp_managed])


def place_model(model: torch.nn.Module, tc: TrainConfig, device: torch.device, world_size: int) -> PlacedModel:
    """Move ``model`` to ``device`` (channels last if asked); under several processes SyncBN and DDP; then compile."""
    model = model.to(device)
    if tc.channels_last:
        model = model.to(memory_format=torch.channels_last)
    base = model
    if world_size > 1 and tc.sync_batchnorm and device.type == "cuda" and any(
            isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in base.modules()):
        base = torch.nn.SyncBatchNorm.convert_sync_batchnorm(base)
    return PlacedModel(base, _wrap(base, tc, device, world_size), _trained_ids(base), world_size)


def _trained_ids(base: torch.nn.Module) -> set[int]:
    """Ids of the parameters that train now: those a DDP wrapper made now averages."""
    return {id(p) for p in base.parameters() if p.requires_grad}


def _wrap(base: torch.nn.Module, tc: TrainConfig, device: torch.device, world_size: int) -> torch.nn.Module:
    """What a step calls: ``base`` in DDP under several processes, compiled if asked."""
    model = base
    if world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(base, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if tc.compile else model


def _batching(n: int, batch_size: int, world_size: int, max_steps: int | None) -> tuple[int, int, int]:
    """(global batch, batch per process, steps per epoch) for ``n`` training images."""
    batch = min(batch_size, n)
    if batch % world_size:
        raise ConfigError(f"train.batch_size {batch} is not divisible by {world_size} processes",
                          hint="choose a global batch size that is a multiple of the process count")
    steps = n // batch  # the last incomplete batch of each epoch's permutation is dropped
    if max_steps is not None:
        steps = min(steps, max_steps)
    return batch, batch // world_size, steps


def _new_state(cfg: Config, base: torch.nn.Module, param_groups: list[dict[str, Any]] | None, steps: int) -> TrainState:
    """A fresh run's state: EMA (DDP has already synced ``base`` across ranks), optimizer, schedule, tracker."""
    ema = EMA(base, cfg.train.ema) if cfg.train.ema > 0 else None
    groups = param_groups if param_groups is not None else [{"params": [p for p in base.parameters() if p.requires_grad]}]
    optimizer = build_optimizer(groups, cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule, steps, cfg.train.epochs)
    return TrainState(base, optimizer, schedule, ema, Tracker(cfg.train.early_stop_metric))


def _loss_fn(cfg: Config, num_classes: int, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    weight = None
    if cfg.train.class_weights is not None:
        if len(cfg.train.class_weights) != num_classes:
            raise ConfigError(
                f"train.class_weights has {len(cfg.train.class_weights)} entries but the data has {num_classes} classes",
                hint="give one weight per class",
            )
        weight = torch.tensor(cfg.train.class_weights, dtype=torch.float32, device=device)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=weight, label_smoothing=cfg.train.label_smoothing)

    return loss


def _show_progress(bar: Any, loss: torch.Tensor, correct: torch.Tensor, lr: float, done: int, batch: int,
                   local_batch: int, t0: float) -> None:
    bar.set_postfix(loss=f"{loss.item():.4f}", acc=f"{correct.item() / (done * local_batch):.4f}",
                    lr=f"{lr:.2e}", img_s=f"{done * batch / (time.perf_counter() - t0):.0f}")


def _end_of_epoch(loss_sum: torch.Tensor, correct: torch.Tensor, device: torch.device, world_size: int,
                  t0: float) -> float:
    """Sum the epoch's loss and hits over the processes; the epoch's seconds, once the device is done."""
    if world_size > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    if device.type == "cuda":  # kernels run asynchronously: the epoch ends when the GPU is done
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _epoch_row(epoch: int, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int, seconds: float,
               optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    seen = max(1, seen)
    return {
        "epoch": epoch,
        "train_loss": loss_sum.item() / seen,
        "train_acc": correct.item() / seen,
        "val_loss": None,
        "val_acc": None,
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 1),
    }


def validate(weights: torch.nn.Module, val_data: ImageData | None, mean: float, std: float, tc: TrainConfig,
             device: torch.device, autocontrast: bool = False) -> dict[str, float]:
    """``val_loss`` and ``val_acc`` of ``weights`` on ``val_data``; empty when there is no validation set."""
    if val_data is None or not len(val_data):
        return {}
    logits = predict_logits(weights, val_data.images, mean=mean, std=std, batch_size=tc.eval_batch_size,
                            device=device, bf16=tc.bf16, channels_last=tc.channels_last, autocontrast=autocontrast)
    return {"val_loss": F.cross_entropy(logits, val_data.labels).item(),
            "val_acc": (logits.argmax(1) == val_data.labels).float().mean().item()}


class EpochLog:
    """Where rank 0 reports each epoch: the console, ``metrics.jsonl`` and tensorboard in the run directory."""

    def __init__(self, run_dir: Path | None, epochs: int, silent: bool) -> None:
        self.run_dir, self.epochs, self.silent = run_dir, epochs, silent
        self.writer = _tensorboard(run_dir) if run_dir is not None else None

    def restart(self, history: list[dict[str, Any]]) -> None:
        """On resume: ``metrics.jsonl`` holds exactly the checkpoint's rows (a kill can leave one more)."""
        if self.run_dir is not None:
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))

    def write(self, row: dict[str, Any]) -> None:
        """Report one epoch's metrics row."""
        if not self.silent:
            val = "" if row["val_acc"] is None else f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}"
            acc = "" if row["train_acc"] is None else f"  train_acc {row['train_acc']:.4f}"  # None: no labels (pretraining)
            tqdm.write(
                f"epoch {row['epoch']}/{self.epochs}  train_loss {row['train_loss']:.4f}{acc}{val}  lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
            )
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(k, v, row["epoch"])
            self.writer.flush()
        if self.run_dir is not None:
            append_jsonl(self.run_dir / "metrics.jsonl", row)

    def close(self) -> None:
        """Flush and close tensorboard."""
        if self.writer is not None:
            self.writer.close()


def _tensorboard(run_dir: Path) -> Any:
    """A SummaryWriter into ``run_dir/tensorboard`` when tensorboard is installed, else None."""
    if os.environ.get("MNISTLAB_NO_TENSORBOARD"):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))
