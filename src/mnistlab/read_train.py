"""Train the sequence reader: a small CNN with a CTC head (``models.crnn``) on synthetic strings.

``mnistlab train read-ctc`` (a recipe with ``task: read``) comes here from ``runner.run_training``.
Each epoch draws ``read.steps_per_epoch`` batches of fresh strings of the *training* digits
(``data.strings.training_string``, seeded by (seed, epoch, step), so a run and its ``--resume``
see the same strings), each prepared the one way the reader prepares an image
(``StringImage.from_image(img).line(height)``: cleaned, upright, ink white on black, a fixed
height). The strings are drawn in ``read.workers`` processes beside the training one.

Validation reads strings of the validation digits each epoch (the best epoch's weights are
kept; with ``train.ema`` the moving average of the weights is what is validated, kept and
saved); ``summary.json`` gives whole-string and per-character accuracy on 5-digit strings of the
test digits at every overlap level. The run directory is what every run writes: config.yaml,
model.safetensors + model.json (arch ``crnn``), metrics.jsonl, summary.json, checkpoint.pt
(every epoch; ``--resume`` continues from the last one exactly).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from mnistlab.artifact import ModelCard, Preprocess, library_versions, save_artifact
from mnistlab.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from mnistlab.config import Config, TrainConfig, save_run_config
from mnistlab.data.images import ImageError
from mnistlab.data.segment import StringImage
from mnistlab.data.strings import LEVELS, edit_distance, make_string, training_string
from mnistlab.device import resolve_device, settle_bf16
from mnistlab.errors import ConfigError
from mnistlab.models import count_params
from mnistlab.models.crnn import CRNN, frames_for
from mnistlab.models.ctc import decode, greedy
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.runs import append_jsonl, new_run_dir, write_json
from mnistlab.splits import make_splits
from mnistlab.train import FitResult
from mnistlab.train_state import EMA

DRY_RUN_STEPS = 4  # steps per epoch under --dry-run
DRY_RUN_STRINGS = 8  # validation and test strings under --dry-run
EVAL_LENGTHS = list(range(3, 11))
# train.* settings of image classification that this loop has no use for: set, they are refused, not ignored
UNUSED_TRAIN = ("label_smoothing", "class_weights", "early_stop_patience", "compile", "tta", "checkpoint_every_steps")


def refuse_unused(cfg: Config) -> None:
    """A ConfigError naming every setting a read run would silently ignore (``UNUSED_TRAIN`` away
    from its default, any ``data.augment``)."""
    default = TrainConfig()
    unused = [f"train.{k}" for k in UNUSED_TRAIN if getattr(cfg.train, k) != getattr(default, k)]
    if cfg.data.augment.enabled:
        unused.append("data.augment")
    if unused:
        raise ConfigError(f"task read does not use {', '.join(unused)}",
                          hint="remove them: the training strings' variety is fixed by data/strings.py and the read.* "
                               "settings, and the reader checkpoints at each epoch's end")


def line_of(img: Image.Image, height: int) -> np.ndarray:
    """The one preprocessing path of a string image: float32 [height, W] in 0..1, ink white on black."""
    return StringImage.from_image(img).line(height).pixels


def collate(lines: list[np.ndarray], texts: list[list[int]]) -> dict[str, torch.Tensor]:
    """A padded batch: x [B, 1, H, W] (W the widest line), frames per line, and the texts (character
    indices, 0-based) as CTC targets concatenated, shifted by one past the blank."""
    height = lines[0].shape[0]
    width = max(line.shape[1] for line in lines)
    x = torch.zeros(len(lines), 1, height, width)
    for i, line in enumerate(lines):
        x[i, 0, :, :line.shape[1]] = torch.from_numpy(line)
    return {"x": x, "frames": torch.tensor([frames_for(line.shape[1]) for line in lines], dtype=torch.long),
            "targets": torch.tensor([c + 1 for t in texts for c in t], dtype=torch.long),  # class 0 is the blank
            "target_lengths": torch.tensor([len(t) for t in texts], dtype=torch.long)}


class StringBatches(torch.utils.data.IterableDataset):
    """One epoch of training batches. Every other step draws a fresh batch from
    np.random.default_rng([seed, epoch, step]); the steps between train on half of each of the last
    two fresh batches (preparing a string costs about as much as a training step on it, so each
    string trains twice, in two different batches)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, seed: int, epoch: int, steps: int, batch_size: int,
                 height: int, max_length: int) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.seed, self.epoch, self.steps, self.batch_size = seed, epoch, steps, batch_size
        self.height, self.max_length = height, max_length

    def draw(self, step: int) -> list[tuple[np.ndarray, list[int]]]:
        """The fresh strings of ``step``: (line image, character indices) each."""
        rng = np.random.default_rng([self.seed, self.epoch, step])
        out = []
        while len(out) < self.batch_size:
            img, text = training_string(self.images, self.labels, rng, max_length=self.max_length)
            try:
                out.append((line_of(img, self.height), [int(c) for c in text]))
            except ImageError:  # a string of near-blank digits: draw another
                continue
        return out

    def __iter__(self):
        last: list = []
        half = self.batch_size // 2
        for step in range(self.steps):
            if step % 2 == 0 or not last:
                fresh = self.draw(step)
                batch, last = fresh, [fresh, *last[:1]]
            else:
                batch = last[0][half:] + (last[1][:half] if len(last) > 1 else last[0][:half])
            yield collate([line for line, _ in batch], [text for _, text in batch])


def eval_strings(images: np.ndarray, labels: np.ndarray, n: int, seed: list[int], lengths: list[int]) -> list[tuple[Image.Image, str]]:
    """``n`` benchmark-style strings (``make_string``), lengths and overlap levels in turn."""
    rng = np.random.default_rng(seed)
    levels = list(LEVELS)
    return [make_string(images, labels, lengths[i % len(lengths)], levels[(i // len(lengths)) % len(levels)], rng)
            for i in range(n)]


@torch.no_grad()
def frame_logprobs(model: CRNN, lines: list[np.ndarray], device: torch.device, batch: int = 64) -> list[np.ndarray]:
    """Per line: log-probabilities [frames, classes + 1] (blank first), in eval mode; lines batched by width."""
    model.eval()
    order = np.argsort([line.shape[1] for line in lines])
    out: list[np.ndarray | None] = [None] * len(lines)
    for i in range(0, len(order), batch):
        idx = order[i:i + batch]
        b = collate([lines[j] for j in idx], [[] for _ in idx])
        logp = model(b["x"].to(device), b["frames"]).log_softmax(-1).cpu().numpy()  # [B, T, K + 1]
        for j, n_frames, lp in zip(idx, b["frames"].tolist(), logp, strict=True):
            out[j] = lp[:max(1, n_frames)]
    return out  # type: ignore[return-value]


def string_accuracy(model: CRNN, strings: list[tuple[Image.Image, str]], classes: list[str], height: int,
                    device: torch.device, *, as_read: bool = False) -> tuple[float, float]:
    """(whole-string accuracy, per-character accuracy = 1 - edit distance / length), decoded by best
    path (fast, each epoch's validation) or, ``as_read``, as ``mnistlab read`` decodes (the test strings)."""
    lines = [line_of(img, height) for img, _ in strings]
    allowed = list(range(len(classes)))
    right, chars, total = 0, 0, 0
    for logp, (_, truth) in zip(frame_logprobs(model, lines, device), strings, strict=True):
        spans = decode(logp, allowed) if as_read else greedy(logp, allowed)[0]
        got = "".join(classes[c] for c, _, _ in spans)
        right += got == truth
        chars += max(0, len(truth) - edit_distance(got, truth))
        total += len(truth)
    return right / max(1, len(strings)), chars / max(1, total)


@dataclass
class _State:
    epoch: int = 0  # epochs completed
    history: list | None = None
    best_val: float = -1.0
    best_epoch: int = 0
    best_model: dict | None = None
    seconds: float = 0.0


def ctc_step(model: CRNN, optimizer: torch.optim.Optimizer, ctc: torch.nn.CTCLoss, x: torch.Tensor,
             batch: dict[str, torch.Tensor], *, bf16: bool, grad_clip: float) -> torch.Tensor:
    """One optimizer step on the line images ``x`` of ``batch`` (a :func:`collate` dict); returns the CTC loss."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(x, batch["frames"])  # [B, T, K + 1]
    logp = logits.float().log_softmax(-1).transpose(0, 1)  # [T, B, K + 1], as CTCLoss takes it
    loss = ctc(logp, batch["targets"], batch["frames"], batch["target_lengths"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss


def run_read_training(cfg: Config, *, out: str | Path | None = None, resume_dir: Path | None = None,
                      quiet: bool = False, dry_run: bool = False) -> tuple[Path, dict[str, Any], FitResult]:
    """Train the sequence reader per ``cfg`` into a new run directory (or continue ``resume_dir``);
    returns (run directory, summary, fit result)."""
    refuse_unused(cfg)
    device = resolve_device(cfg.device)
    cfg = settle_bf16(cfg, device, quiet=quiet)
    rc, tc = cfg.read, cfg.train
    torch.manual_seed(cfg.seed)
    splits = make_splits(cfg, dry_run=dry_run, progress=not quiet)
    classes = list(splits.train.classes)
    if any(not c.isdigit() for c in classes):  # the string generator speaks digits
        raise ConfigError(f"task read trains on digit datasets; {cfg.data.dataset} has classes {' '.join(classes[:12])}",
                          hint="use data.dataset=mnist (or another digits dataset)")
    train_images, train_labels = splits.train.images[:, 0].numpy(), splits.train.labels.numpy()
    val = splits.val if splits.val is not None else splits.train
    steps = DRY_RUN_STEPS if dry_run else rc.steps_per_epoch
    n_val, n_test = (DRY_RUN_STRINGS, DRY_RUN_STRINGS) if dry_run else (rc.val_strings, rc.test_strings)
    batch_size = min(tc.batch_size, 8) if dry_run else tc.batch_size
    val_strings = eval_strings(val.images[:, 0].numpy(), val.labels.numpy(), n_val, [cfg.seed, 1], EVAL_LENGTHS)

    model = CRNN(num_classes=len(classes), height=rc.height, **cfg.model.args).to(device)
    if tc.channels_last:  # max-pooling and the convolutions' backward are ~1.5x faster so on a CPU
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    schedule = Schedule(optimizer, cfg.schedule, steps, tc.epochs)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
    ema = EMA(model, tc.ema) if tc.ema > 0 else None  # validated, kept and saved in place of the live weights
    run_dir = Path(resume_dir) if resume_dir is not None else new_run_dir(out, prefix="train")
    state = _State(history=[])
    if resume_dir is None:
        save_run_config(cfg, run_dir, dry_run=dry_run)
    elif has_checkpoint(run_dir):
        saved = load_checkpoint(run_dir)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        if ema is not None:
            ema.load_state_dict(saved["ema"])
        torch.set_rng_state(saved["torch_rng"])
        state = _State(saved["epoch"], saved["history"], saved["best_val"], saved["best_epoch"], saved["best_model"],
                       saved["seconds"])
    if not quiet:
        print(f"run {run_dir}: crnn ({count_params(model):,} params) reading strings of {cfg.data.dataset} digits "
              f"({len(splits.train):,} train digits, {len(val):,} val), {steps} steps x {batch_size} strings per epoch, "
              f"device {device}")
    for epoch in range(state.epoch, tc.epochs):
        t0 = time.perf_counter()
        model.train()
        batches = StringBatches(train_images, train_labels, seed=cfg.seed, epoch=epoch, steps=steps,
                                batch_size=batch_size, height=rc.height, max_length=rc.max_length)
        workers = 0 if dry_run else rc.workers
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers,
                                             prefetch_factor=8 if workers else None)
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{tc.epochs}", total=steps, leave=False, unit="step",
                   disable=quiet or not os.isatty(2), dynamic_ncols=True)  # a log or pipe gets the epoch line only
        for step, b in enumerate(bar):
            lr = schedule.set_step(epoch * steps + step)
            x = b["x"].to(device)
            if tc.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            loss = ctc_step(model, optimizer, ctc, x, b, bf16=tc.bf16, grad_clip=tc.grad_clip or 5.0)
            if ema is not None:
                ema.update(model, epoch * steps + step)
            losses.append(float(loss.detach()))
            if step % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr:.1e}", refresh=False)
        kept = ema.model if ema is not None else model
        val_string, val_char = string_accuracy(kept, val_strings, classes, rc.height, device)
        state.seconds += time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_string_acc": val_string,
               "val_char_acc": val_char, "lr": lr, "seconds": round(state.seconds, 1)}
        state.history.append(row)
        if val_string > state.best_val:
            state.best_val, state.best_epoch = val_string, epoch + 1
            state.best_model = copy.deepcopy(kept.state_dict())
        state.epoch = epoch + 1
        append_jsonl(run_dir / "metrics.jsonl", row)
        save_checkpoint(run_dir, {"model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                                  "optimizer": optimizer.state_dict(),
                                  "schedule": schedule.state_dict(), "torch_rng": torch.get_rng_state(),
                                  "epoch": state.epoch, "history": state.history, "best_val": state.best_val,
                                  "best_epoch": state.best_epoch, "best_model": state.best_model,
                                  "seconds": state.seconds})
        if not quiet:
            print(f"epoch {epoch + 1}/{tc.epochs}  loss {row['train_loss']:.4f}  val string {val_string:.3f}  "
                  f"char {val_char:.3f}  lr {lr:.2e}  {state.seconds:.0f}s", flush=True)
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    if tc.restore_best and state.best_model is not None:
        model.load_state_dict(state.best_model)
    summary = _finish(cfg, model, classes, splits, run_dir, state, device, n_test, quiet)
    fit = FitResult(model, state.history, state.seconds, state.epoch, state.best_epoch, False)
    return run_dir, summary, fit


def _finish(cfg: Config, model: CRNN, classes: list[str], splits, run_dir: Path, state: _State,
            device: torch.device, n_test: int, quiet: bool) -> dict[str, Any]:
    """Test strings, artifact and summary."""
    test_string = test_char = None
    if splits.test is not None:
        test = eval_strings(splits.test.images[:, 0].numpy(), splits.test.labels.numpy(), n_test, [cfg.seed, 2], [5])
        test_string, test_char = string_accuracy(model, test, classes, cfg.read.height, device, as_read=True)
    summary: dict[str, Any] = {
        "test_accuracy": test_string,  # whole 5-digit strings of test digits, every overlap level
        "test_char_accuracy": test_char,
        "test_strings": n_test if splits.test is not None else 0,
        "test_loss": None,
        "train_seconds": round(state.seconds, 3),
        "epochs": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": False,
        "params": count_params(model),
        "val_accuracy": state.best_val if state.best_val >= 0 else None,
        "seed": cfg.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "model": "crnn",
        "task": "read",
        "dataset": cfg.data.dataset,
        "train_images": len(splits.train),
    }
    card = ModelCard(arch=model.arch_name, arch_args=dict(model.arch_args), classes=classes,
                     preprocess=Preprocess(size=cfg.read.height, mean=0.0, std=1.0, mnist_style=False),
                     dataset=cfg.data.dataset,
                     metrics={k: summary[k] for k in ("test_accuracy", "test_char_accuracy", "val_accuracy", "epochs",
                                                      "train_seconds")},
                     versions=library_versions())
    save_artifact(run_dir, model, card)
    write_json(run_dir / "summary.json", summary)
    if not quiet:
        acc = "n/a" if test_string is None else f"{test_string:.4f}"
        print(f"test strings ({n_test}, 5 digits): whole {acc}, per character "
              f"{'n/a' if test_char is None else f'{test_char:.4f}'}")
    return summary
