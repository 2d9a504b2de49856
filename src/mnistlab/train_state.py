"""Everything a training run carries from epoch to epoch, and so everything its checkpoint holds.

:class:`TrainState` gathers the weights, optimizer, schedule, EMA, best-so-far tracker and
counters; ``state_dict()`` is the checkpoint and ``load_state_dict()`` resumes from one. The
random draws are not in it: every epoch seeds its own from (seed, epoch).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mnistlab.artifact import unwrap
from mnistlab.optim import Schedule


class EMA:
    """An exponential moving average of a model's weights, kept in a frozen copy of the model."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model: torch.nn.Module, step: int) -> None:
        """Move the averaged weights toward ``model``'s; buffers (BatchNorm statistics) are copied.

        The decay is warmed up, ``min(decay, (1 + step) / (10 + step))``: early on the average follows
        the model closely, so it never mixes the random initialisation with trained weights (which,
        with the live model's BatchNorm statistics, predicts one class for thousands of steps).
        """
        decay = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            ema_p = list(self.model.parameters())
            model_p = [p.detach() for p in model.parameters()]
            torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
            for b_ema, b in zip(self.model.buffers(), model.buffers(), strict=True):
                b_ema.copy_(b)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights."""
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the averaged weights written by :meth:`state_dict`."""
        self.model.load_state_dict(state)


@dataclass
class Tracker:
    """Best validation score so far, for early stopping and restoring the best weights."""

    metric: str  # val_acc | val_loss
    best: float = -math.inf  # higher is better: val_loss is negated
    best_epoch: int = 0
    bad_epochs: int = 0
    state: dict[str, torch.Tensor] | None = None  # the best epoch's weights

    def score(self, row: dict[str, Any]) -> float | None:
        """The row's value of the watched metric, higher is better; None when not measured."""
        value = row.get(self.metric)
        if value is None:
            return None
        return -value if self.metric == "val_loss" else value

    def update(self, row: dict[str, Any], weights: torch.nn.Module) -> None:
        """Take an epoch's metrics row; keep a copy of ``weights`` when they are the best so far."""
        s = self.score(row)
        if s is None:
            return
        if s > self.best:
            self.best, self.best_epoch, self.bad_epochs = s, row["epoch"], 0
            self.state = {k: v.detach().clone() for k, v in weights.state_dict().items()}
        else:
            self.bad_epochs += 1


@dataclass
class TrainState:
    """A run between two epochs: what a checkpoint saves and a resume restores."""

    model: torch.nn.Module  # the trained module itself, not its DDP / compiled wrapper
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    ema: EMA | None
    tracker: Tracker
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    elapsed: float = 0.0  # training seconds, validation excluded
    history: list[dict[str, Any]] = field(default_factory=list)  # one metrics row per epoch

    @property
    def weights(self) -> torch.nn.Module:
        """The weights validated and kept: the EMA's when there is one."""
        return self.ema.model if self.ema is not None else self.model

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch's metrics row: the schedule, the best-so-far tracker and the history see it."""
        self.schedule.epoch_end(row["val_loss"])
        self.tracker.update(row, self.weights)
        self.history.append(row)
        self.epoch = row["epoch"]

    def final_weights(self, restore_best: bool) -> torch.nn.Module:
        """The module training ends with, unwrapped: the EMA's or the model's; the best epoch's if ``restore_best``."""
        final = unwrap(self.weights)
        if restore_best and self.tracker.state is not None and self.tracker.best_epoch != len(self.history):
            final.load_state_dict(self.tracker.state)
        return final

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain data only."""
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "epoch": self.epoch, "step": self.step, "train_seconds": self.elapsed, "history": self.history,
            "best": self.tracker.best, "best_epoch": self.tracker.best_epoch, "bad_epochs": self.tracker.bad_epochs,
            "best_state": self.tracker.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a dict written by :meth:`state_dict`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["train_seconds"]
        self.history = state["history"]
        self.tracker.best, self.tracker.best_epoch = state["best"], state["best_epoch"]
        self.tracker.bad_epochs, self.tracker.state = state["bad_epochs"], state.get("best_state")
