"""Self-training (``finetune.semi.method: self-training``): few labelled images, many unlabelled ones, in rounds.

    round 0:  model_0 = fine-tune(parent, labelled)                         (the run's own settings)
    round k:  y_u     = argmax TTA(model_{k-1})(u)                          (every unlabelled image)
              model_k = fine-tune(parent, {(u, y_u)} + labelled x repeat)  (one-cycle, finetune.semi.self_training)

Every round starts again from the parent's weights, so a wrong label of one round is not baked
into the weights the next round starts from; the labels improve round by round instead (on
MNIST with 10 labels per class: ~94% for round 0's model, ~98% by round 4). The unlabelled set
enters as images only: its labels never reach this module.

Each round is an ordinary :func:`mnistlab.train.fit` in ``run_dir/rounds/<k>/`` with its own
checkpoints, and pseudo-labelling is deterministic (eval mode, fixed shifts), so a resume redoes
the finished rounds' labels from their final checkpoints and continues the round that was cut.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mnistlab.checkpoint import has_checkpoint, save_checkpoint
from mnistlab.config import Config, ScheduleConfig
from mnistlab.data.imagedata import ImageData
from mnistlab.device import world
from mnistlab.errors import ConfigError
from mnistlab.evaluate import predict_logits
from mnistlab.fileio import atomic_write_text
from mnistlab.train import EpochCallback, FitResult, fit

ROUNDS = "rounds"  # run_dir/rounds/<k>/: round k's checkpoints and metrics


def round_config(cfg: Config, k: int) -> Config:
    """The settings of round ``k >= 1``: ``finetune.semi.self_training``'s one-cycle recipe, seed ``cfg.seed + k``."""
    st = cfg.finetune.semi.self_training
    return replace(
        cfg, seed=cfg.seed + k, data=replace(cfg.data, augment=st.augment),
        optim=replace(cfg.optim, name="adamw", lr=st.lr, weight_decay=st.weight_decay),
        schedule=ScheduleConfig(name="onecycle"),
        train=replace(cfg.train, epochs=st.epochs, batch_size=st.batch_size, label_smoothing=st.label_smoothing,
                      ema=0.0, early_stop_patience=0, restore_best=False, class_weights=None, bf16=st.bf16,
                      channels_last=st.channels_last))


def pseudo_labels(model: torch.nn.Module, unlabelled: torch.Tensor, like: ImageData, cfg: Config,
                  device: torch.device) -> torch.Tensor:
    """Class indices ``[N]`` that ``model`` gives the uint8 images ``unlabelled``, with test-time augmentation."""
    logits = predict_logits(model, unlabelled, mean=like.mean, std=like.std, batch_size=cfg.train.eval_batch_size,
                            device=device, bf16=cfg.train.bf16, channels_last=cfg.train.channels_last, tta=True,
                            mirror=cfg.data.augment.hflip > 0, autocontrast=cfg.data.autocontrast)
    model.train()
    if not cfg.finetune.semi.self_training.align:
        return logits.argmax(1).cpu()
    shares = like.class_counts().float()
    return balance(torch.softmax(logits.float(), 1).cpu(), shares / shares.sum()).argmax(1)


def balance(p: torch.Tensor, shares: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Probabilities ``p`` ``[N, K]`` rescaled per class so that their mean over images is ``shares`` ``[K]``.

    Alternately scales each class's column toward its share and renormalises each row (Sinkhorn
    iterations): a model that over-predicts one class gives that class's doubtful images to the
    others, so self-training cannot drift toward a few classes round after round.
    """
    for _ in range(iterations):
        p = p * (shares / p.mean(0).clamp_min(1e-12))
        p = p / p.sum(1, keepdim=True)
    return p


def fit_self_training(unlabelled: torch.Tensor, cfg: Config, model: torch.nn.Module, train_data: ImageData,
                      val_data: ImageData | None, *, device: torch.device, run_dir: Path | None = None,
                      resume: bool = False, quiet: bool = False, param_groups: list[dict[str, Any]] | None = None,
                      epoch_callback: EpochCallback | None = None, max_steps: int | None = None) -> FitResult:
    """Train ``model`` on labelled ``train_data`` and the uint8 images ``unlabelled`` in rounds (called as ``train.fit`` is).

    One process only. The history holds every round's epochs, numbered on from round to round,
    each row with its ``round``; ``extra["self_training"]`` says per round how many pseudo-labels
    changed and how long labelling took.
    """
    if world()[1] > 1:
        raise ConfigError("self-training runs in one process", hint="run it without torchrun / --nproc")
    st = cfg.finetune.semi.self_training
    start = copy.deepcopy(model.state_dict())  # the parent as fine-tuning found it: every round starts here
    history: list[dict[str, Any]] = []
    rounds: list[dict[str, Any]] = []
    seconds = 0.0
    labels: torch.Tensor | None = None
    result: FitResult | None = None
    for k in range(st.rounds + 1):
        where = Path(run_dir) / ROUNDS / str(k) if run_dir is not None else None
        if where is not None:
            where.mkdir(parents=True, exist_ok=True)
        if k == 0:
            round_cfg, data, groups = cfg, train_data, param_groups
        else:
            t0 = time.perf_counter()
            new = pseudo_labels(result.model, unlabelled, train_data, round_config(cfg, k), device)
            rounds.append({"round": k, "labelling_seconds": round(time.perf_counter() - t0, 3),
                           "changed": None if labels is None else int((new != labels).sum())})
            seconds += time.perf_counter() - t0
            labels = new
            data = replace(train_data, images=torch.cat([unlabelled] + [train_data.images] * st.repeat),
                           labels=torch.cat([labels] + [train_data.labels] * st.repeat))
            round_cfg, groups = round_config(cfg, k), None
            model.load_state_dict(start)
            if not quiet:
                changed = "" if rounds[-1]["changed"] is None else f", {rounds[-1]['changed']:,} changed since round {k - 1}"
                print(f"round {k}/{st.rounds}: {len(labels):,} pseudo-labels{changed}; training on them and "
                      f"{len(train_data):,} labelled images x {st.repeat}")
        offset = len(history)
        callback = None if epoch_callback is None else (lambda row, o=offset: epoch_callback({**row, "epoch": o + row["epoch"]}))
        result = fit(round_cfg, model, data, val_data, device=device, run_dir=where,
                     resume=resume and where is not None and has_checkpoint(where), quiet=quiet,
                     param_groups=groups, epoch_callback=callback, max_steps=max_steps)
        seconds += result.train_seconds
        history += [{**row, "epoch": offset + row["epoch"], "round": k} for row in result.history]
        if run_dir is not None:
            _record(Path(run_dir), result.model, history, k)
    assert result is not None
    return FitResult(result.model, history, seconds, len(history), len(history), result.stopped_early,
                     extra={"self_training": rounds})


def _record(run_dir: Path, model: torch.nn.Module, history: list[dict[str, Any]], k: int) -> None:
    """The run directory's own view after round ``k``: metrics.jsonl of all rounds, a checkpoint of the weights so far."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))
    save_checkpoint(run_dir, {"model": model.state_dict(), "epoch": len(history), "history": history, "round": k})

