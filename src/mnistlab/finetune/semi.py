"""Semi-supervised fine-tuning, FixMatch-style (Sohn et al. 2020): few labelled images, many unlabelled ones.

Each step takes a labelled batch of B images and an unlabelled batch of ``ratio * B``:

    loss = CE(f(weak(x)), y) + weight * mean_u[ 1{max p_u >= threshold} * CE(f(strong(u)), argmax p_u) ]
    p_u  = softmax(f(weak(u)))          (no gradient: the pseudo-label)

All three views go through one forward pass, so BatchNorm sees them together. Augmentation is
``data.augment`` for the weak views and ``finetune.semi.strong`` for the strong one, batched on
the device (:func:`mnistlab.data.augment.augment_batch`). The unlabelled set enters as images only:
its labels never reach this module. Every draw of an epoch is seeded from (seed, epoch), and the
checkpoint after each epoch holds the rest (:class:`TrainState`), so a resume is exact.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from mnistlab.checkpoint import has_checkpoint, load_checkpoint
from mnistlab.config import Config
from mnistlab.data.augment import augment_batch
from mnistlab.data.imagedata import ImageData, normalize
from mnistlab.device import world
from mnistlab.errors import ConfigError, DataError
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.ssl import close_epoch, epoch_row
from mnistlab.train import EpochCallback, EpochLog, FitResult, epoch_draws, place_model, validate
from mnistlab.train_state import EMA, Tracker, TrainState


def keep_apart(unlabelled: torch.Tensor, *labelled: ImageData | None) -> tuple[torch.Tensor, int]:
    """``unlabelled`` uint8 images ``[N, C, H, W]`` without any image equal to a labelled one; and how many went.

    Pixel-exact, so the labelled images (train and validation) never train a second time
    as unlabelled ones, whatever spec each set came from.
    """
    seen = {bytes(img.numpy().tobytes()) for d in labelled if d is not None for img in d.images}
    keep = torch.tensor([bytes(img.numpy().tobytes()) not in seen for img in unlabelled], dtype=torch.bool)
    if not bool(keep.any()):
        raise DataError("every unlabelled image is also a labelled one",
                        hint="give --unlabelled images apart from the labelled ones, e.g. --shots K from the same dataset")
    return unlabelled[keep], int((~keep).sum())


def semi_loss(logits_x: torch.Tensor, y: torch.Tensor, logits_weak: torch.Tensor, logits_strong: torch.Tensor, *,
              threshold: float, weight: float) -> tuple[torch.Tensor, torch.Tensor]:
    """FixMatch's loss from the three views' logits; and the share of unlabelled images above ``threshold``."""
    supervised = F.cross_entropy(logits_x.float(), y)
    with torch.no_grad():
        confidence, pseudo = F.softmax(logits_weak.detach().float(), dim=1).max(dim=1)
        mask = (confidence >= threshold).float()
    unsupervised = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return supervised + weight * unsupervised, mask.mean()


def semi_epochs(total: int, pool: int, per_step: int) -> tuple[int, int]:
    """Steps per epoch and epochs for ``total`` steps: an epoch draws about ``pool`` unlabelled images.

    An epoch of the labelled set (a few steps when it is 100 images) would validate and checkpoint
    every few steps; a pass over the unlabelled pool is the natural unit here. The epochs are equal,
    so ``total`` rounds up by at most ``epochs - 1`` steps.
    """
    epochs = max(1, math.ceil(total / max(1, pool // max(1, per_step))))
    return max(1, math.ceil(total / epochs)), epochs


def align(logits_weak: torch.Tensor, spread: torch.Tensor | None, momentum: float = 0.999) -> tuple[torch.Tensor, torch.Tensor]:
    """Distribution alignment (Berthelot et al. 2020, ReMixMatch): weak-view log-probabilities scaled toward uniform classes.

    ``spread`` is the running mean of the predicted class distribution (None: uniform so far); each
    prediction is divided by it and renormalised, so no class takes the pseudo-labels over. Returns the aligned log-probabilities
    (no gradient; used only for pseudo-labels) and the updated running mean.
    """
    with torch.no_grad():
        p = F.softmax(logits_weak.detach().float(), dim=1)
        if spread is None:
            spread = torch.full_like(p[0], 1.0 / p.shape[1])
        spread = momentum * spread + (1 - momentum) * p.mean(0)
        q = p / spread
        return torch.log(q / q.sum(1, keepdim=True)), spread


def fit_semi(unlabelled: torch.Tensor, cfg: Config, model: torch.nn.Module, train_data: ImageData,
             val_data: ImageData | None, *, device: torch.device, run_dir: Any = None, resume: bool = False,
             quiet: bool = False, param_groups: list[dict[str, Any]] | None = None,
             epoch_callback: EpochCallback | None = None, max_steps: int | None = None) -> FitResult:
    """Train ``model`` on labelled ``train_data`` and the uint8 images ``unlabelled`` (called as ``train.fit`` is).

    One process only. An epoch is about one pass over the unlabelled images (:func:`semi_epochs`);
    checkpoints at every epoch's end.
    """
    if world()[1] > 1:
        raise ConfigError("semi-supervised fine-tuning runs in one process", hint="run it without torchrun / --nproc")
    sc, tc, n = cfg.finetune.semi, cfg.train, len(train_data)
    placed = place_model(model, tc, device, 1)
    batch = min(tc.batch_size, n)
    total = tc.epochs * (n // batch) if max_steps is None else min(tc.epochs * (n // batch), max_steps)
    steps, epochs = semi_epochs(total, len(unlabelled), sc.ratio * batch)
    groups = param_groups if param_groups is not None else [{"params": [p for p in placed.base.parameters() if p.requires_grad]}]
    optimizer = build_optimizer(groups, cfg.optim)
    ema = EMA(placed.base, tc.ema) if tc.ema > 0 else None
    state = TrainState(placed.base, optimizer, Schedule(optimizer, cfg.schedule, steps, epochs), ema,
                       Tracker(tc.early_stop_metric))
    spread: torch.Tensor | None = None  # running mean of the weak views' class distribution (finetune.semi.align)
    if resume and run_dir is not None and has_checkpoint(run_dir):
        saved = load_checkpoint(run_dir, map_location=device)
        state.load_state_dict(saved)
        spread = saved.get("align")
    images, labels, pool = train_data.images.to(device), train_data.labels.to(device), unlabelled.to(device)
    mean, std, auto = train_data.mean, train_data.std, cfg.data.autocontrast
    log = EpochLog(run_dir, epochs, quiet)
    if resume:
        log.restart(state.history)
    stopped_early = False
    for epoch in range(state.epoch, epochs):
        if state.tracker.bad_epochs >= tc.early_stop_patience > 0:
            stopped_early = True
            break
        _, gen = epoch_draws(cfg.seed, epoch, 0, n, device)
        placed.run.train()
        t0 = time.perf_counter()
        sums = torch.zeros(3, device=device)  # loss, labelled hits, confident share: summed over steps
        for _ in range(steps):
            idx = torch.randint(n, (batch,), device=device, generator=gen)
            u = pool[torch.randint(len(pool), (sc.ratio * batch,), device=device, generator=gen)].float().div_(255)
            x = images[idx].float().div_(255)  # uint8 [B,C,H,W] -> float in [0, 1]
            views = [augment_batch(v, a, generator=gen) for v, a in ((x, cfg.data.augment), (u, cfg.data.augment),
                                                                      (u, sc.strong))]
            both = normalize(torch.cat(views), mean, std, auto)  # [B + 2 * ratio * B, C, H, W]
            state.schedule.set_step(state.step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                logits = placed.run(both)
            lx, lw, ls = logits.split([len(x), len(u), len(u)])
            if sc.align:
                lw, spread = align(lw, spread)
            loss, confident = semi_loss(lx, labels[idx], lw, ls, threshold=sc.threshold, weight=sc.weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                torch.nn.utils.clip_grad_norm_(state.model.parameters(), tc.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(state.model, state.step)
            state.step += 1
            sums += torch.stack([loss.detach(), (lx.detach().argmax(1) == labels[idx]).float().mean(), confident])
        seconds = time.perf_counter() - t0
        state.elapsed += seconds
        mean_of = (sums / max(1, steps)).tolist()
        row = epoch_row(epoch + 1, mean_of[0], mean_of[1], optimizer, seconds, steps * batch * (1 + 2 * sc.ratio))
        row["confident"] = mean_of[2]  # share of unlabelled images above the threshold
        row.update(validate(state.weights, val_data, mean, std, tc, device, autocontrast=auto))
        close_epoch(state, row, log, run_dir, epoch_callback, extra={} if spread is None else {"align": spread})
    log.close()
    return FitResult(state.final_weights(tc.restore_best), state.history, state.elapsed, len(state.history),
                     state.tracker.best_epoch or len(state.history), stopped_early)
