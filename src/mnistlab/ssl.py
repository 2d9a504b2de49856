"""Self-supervised objectives and their loop: a backbone learns from images alone, no labels.

SimCLR (Chen et al. 2020), for the convnets: two views of each image, each drawn by batched
on-device augmentation (:func:`mnistlab.data.augment.augment_batch`), go through the backbone
(``forward_features``) and a small projection head; the NT-Xent loss pulls the two views of an
image together and pushes the other 2B - 2 images of the batch away:

    z = normalise(proj(features(view)))                 [2B, D]
    loss = mean_i CE(z_i . z_j / temperature, partner(i))   (self-similarity excluded)

Every draw of an epoch is seeded from (seed, epoch) and the checkpoint after each epoch holds
the rest (:class:`TrainState`), so a resumed run ends with the same weights. A linear probe on
frozen features measures the result afterwards (:func:`linear_probe`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from mnistlab.config import Config
from mnistlab.data.augment import augment_batch
from mnistlab.data.imagedata import normalize
from mnistlab.errors import ConfigError
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.train import EpochLog, epoch_draws
from mnistlab.train_state import Tracker, TrainState

OBJECTIVES = ("simclr",)


class Contrastive(nn.Module):
    """A backbone (any registered model, head unused) with a projection head: ``[B, C, H, W]`` -> ``[B, D]``."""

    def __init__(self, backbone: nn.Module, hidden: int, dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Sequential(nn.Linear(backbone.num_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone.forward_features(x))


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over ``z`` ``[2B, D]`` whose rows i and i + B are the two views of one image."""
    n = z.shape[0] // 2
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / temperature  # [2B, 2B] cosine similarities
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # not oneself
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def check_objective(objective: str) -> None:
    """Raise a ConfigError naming the known objectives unless ``objective`` is one."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"unknown pretrain.objective {objective!r}", hint=f"use one of: {', '.join(OBJECTIVES)}")


@dataclass
class PretrainResult:
    """What :func:`fit_contrastive` ends with."""

    backbone: nn.Module
    history: list[dict[str, Any]]
    train_seconds: float


def fit_contrastive(cfg: Config, backbone: nn.Module, images: torch.Tensor, mean: float, std: float, *,
                    device: torch.device, run_dir: Path | None = None, resume: bool = False, quiet: bool = False,
                    max_steps: int | None = None,
                    epoch_callback: Callable[[dict[str, Any]], None] | None = None) -> PretrainResult:
    """Pretrain ``backbone`` on uint8 ``images`` ``[N, C, H, W]`` with ``cfg.pretrain``'s objective."""
    pc, tc = cfg.pretrain, cfg.train
    check_objective(pc.objective)
    n = len(images)
    batch = min(tc.batch_size, n)
    if batch < 2:
        raise ConfigError("contrastive pretraining needs at least 2 images per batch", hint="raise train.batch_size")
    steps = n // batch if max_steps is None else min(n // batch, max_steps)
    model = Contrastive(backbone, pc.projection_hidden, pc.projection_dim).to(device)
    optimizer = build_optimizer([{"params": list(model.parameters())}], cfg.optim)
    state = TrainState(model, optimizer, Schedule(optimizer, cfg.schedule, steps, tc.epochs), None, Tracker("val_loss"))
    if resume and run_dir is not None and has_checkpoint(run_dir):
        state.load_state_dict(load_checkpoint(run_dir, map_location=device))
    pool = images.to(device)
    log = EpochLog(run_dir, tc.epochs, quiet)
    if resume:
        log.restart(state.history)
    for epoch in range(state.epoch, tc.epochs):
        perm, gen = epoch_draws(cfg.seed, epoch, 0, n, device)
        model.train()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        for i in range(steps):
            x = pool[perm[i * batch:(i + 1) * batch]].float().div_(255)  # uint8 [B,C,H,W] -> float in [0, 1]
            views = torch.cat([augment_batch(x, pc.augment, generator=gen), augment_batch(x, pc.augment, generator=gen)])
            state.schedule.set_step(state.step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=tc.bf16):
                z = model(normalize(views, mean, std, cfg.data.autocontrast))  # [2B, D]
            loss = nt_xent(z, pc.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state.step += 1
            loss_sum += loss.detach()
        seconds = time.perf_counter() - t0
        state.elapsed += seconds
        row = epoch_row(epoch + 1, loss_sum.item() / max(1, steps), None, optimizer, seconds, 2 * steps * batch)
        close_epoch(state, row, log, run_dir, epoch_callback)
    log.close()
    return PretrainResult(model.backbone, state.history, state.elapsed)


def epoch_row(epoch: int, loss: float, acc: float | None, optimizer: torch.optim.Optimizer, seconds: float,
              images: int) -> dict[str, Any]:
    """An epoch's metrics row, in the keys `train.fit` writes (no validation yet; ``acc`` None: no labels)."""
    return {"epoch": epoch, "train_loss": loss, "train_acc": acc, "val_loss": None, "val_acc": None,
            "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
            "images_per_s": round(images / max(seconds, 1e-9), 1)}


def close_epoch(state: TrainState, row: dict[str, Any], log: EpochLog, run_dir: Path | None,
                epoch_callback: Callable[[dict[str, Any]], None] | None, extra: dict[str, Any] | None = None) -> None:
    """Record ``row`` in the state and the log, write the checkpoint (with ``extra`` beside the state), then call the epoch callback."""
    state.end_epoch(row)
    log.write(row)
    if run_dir is not None:
        save_checkpoint(run_dir, {**state.state_dict(), **(extra or {})})
    if epoch_callback is not None:
        epoch_callback(row)


@torch.no_grad()
def features(backbone: nn.Module, images: torch.Tensor, mean: float, std: float, device: torch.device,
             batch_size: int = 1024) -> torch.Tensor:
    """Pooled features ``[N, F]`` of uint8 ``images`` ``[N, C, H, W]`` in eval mode."""
    backbone.eval()
    out = [backbone.forward_features(normalize(images[i:i + batch_size].to(device).float().div_(255), mean, std))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float()


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int, steps: int) -> float:
    """Accuracy on the test features of a softmax regression fitted full-batch on the train features."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    probe = nn.Linear(train_x.shape[1], num_classes).to(train_x.device)
    opt = torch.optim.Adam(probe.parameters(), lr=0.01, weight_decay=1e-4)
    xs = (train_x - mu) / sd
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(probe(xs), train_y).backward()
        opt.step()
    with torch.no_grad():
        return (probe((test_x - mu) / sd).argmax(1) == test_y).float().mean().item()
