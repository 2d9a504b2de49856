"""Evaluation: accuracy, loss, per-class precision/recall/F1, confusion matrix and plots."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mnistlab.calibration import Reliability, ece, nll, reliability
from mnistlab.config import Config
from mnistlab.data.imagedata import normalize

_SHIFTS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx) for test-time augmentation


def recipe_tta(cfg: Config) -> dict[str, bool]:
    """:func:`predict_logits`'s test-time augmentation as a recipe asks: mirror images only if it trained on them."""
    return {"tta": cfg.train.tta, "mirror": cfg.data.augment.hflip > 0}


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    images: torch.Tensor,
    *,
    mean: float,
    std: float,
    batch_size: int = 2048,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    channels_last: bool = False,
    tta: bool = False,
    mirror: bool = False,
    autocontrast: bool = False,
) -> torch.Tensor:
    """Logits float32 [N, classes] for uint8 images [N, C, H, W], in large batches.

    ``tta`` averages the logits of the image and its four one-pixel shifts; with ``mirror`` as well,
    those of their left-right mirror images too (for models trained on mirrored images, never digits).
    ``autocontrast``: the per-image contrast stretch of :func:`~mnistlab.data.imagedata.normalize`.
    """
    model.eval()
    device = torch.device(device)
    out = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(device, non_blocking=True), mean, std, autocontrast)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x).float()
            if tta:  # label-free test-time augmentation: one-pixel shifts (and mirror images), averaged
                views = [x, x.flip(3)] if mirror else [x]
                others = [torch.roll(v, shifts=s, dims=(2, 3)) for v in views for s in _SHIFTS] + views[1:]
                for v in others:
                    logits = logits + model(v).float()
                logits = logits / (1 + len(others))
        out.append(logits.float().cpu())
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


@dataclass
class Report:
    """Evaluation figures of one model on one labelled dataset."""

    accuracy: float
    loss: float
    n: int
    classes: list[str]
    confusion: torch.Tensor  # int64 [classes, classes]; rows = true, cols = predicted
    per_class: dict[str, dict[str, float]]
    macro: dict[str, float]
    weighted: dict[str, float]
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "loss": self.loss,
            "n": self.n,
            "per_class": self.per_class,
            "macro": self.macro,
            "weighted": self.weighted,
            "confusion_matrix": self.confusion.tolist(),
            **(self.calibration.to_dict() if self.calibration is not None else {}),
        }


@dataclass
class Calibration:
    """How far the probabilities are to be trusted: ECE (15 bins) and NLL, raw and after temperature T."""

    temperature: float  # the model's (1.0: none fitted)
    ece: float  # of softmax(logits)
    nll: float
    ece_scaled: float  # of softmax(logits / temperature)
    nll_scaled: float
    reliability: Reliability  # of the scaled probabilities (the ones served)
    reliability_raw: Reliability

    def to_dict(self) -> dict[str, Any]:
        """The figures under their summary.json names (the reliability bins of the served probabilities)."""
        return {"ece": self.ece, "nll": self.nll, "temperature": self.temperature, "ece_scaled": self.ece_scaled,
                "nll_scaled": self.nll_scaled, "reliability": dataclasses.asdict(self.reliability)}


def calibration_of(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> Calibration:
    """ECE, NLL and reliability bins of ``logits`` before and after dividing by ``temperature``."""
    labels = labels.long()
    raw, scaled = logits.float().softmax(1), (logits.float() / temperature).softmax(1)
    return Calibration(temperature, ece(raw, labels), nll(logits, labels), ece(scaled, labels),
                       nll(logits, labels, temperature), reliability(scaled, labels), reliability(raw, labels))


def report_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                       temperature: float = 1.0) -> Report:
    """Compute every figure of a :class:`Report` from logits and true labels (calibration at ``temperature``)."""
    k = len(classes)
    labels = labels.long()
    pred = logits.argmax(1)
    loss = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    confusion = torch.bincount(labels * k + pred, minlength=k * k).reshape(k, k)  # [true, pred]
    tp = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted = confusion.sum(0).double()
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), torch.zeros_like(tp))
    per_class = {
        c: {"precision": precision[i].item(), "recall": recall[i].item(), "f1": f1[i].item(), "support": int(support[i])}
        for i, c in enumerate(classes)
    }
    w = support / support.sum().clamp(min=1)
    macro = {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item()}
    weighted = {"precision": (w * precision).sum().item(), "recall": (w * recall).sum().item(), "f1": (w * f1).sum().item()}
    accuracy = (tp.sum() / max(1, len(labels))).item()
    calibration = calibration_of(logits, labels, temperature) if len(labels) else None
    return Report(accuracy, loss, len(labels), list(classes), confusion, per_class, macro, weighted, calibration)


def format_report(report: Report) -> str:
    """The report as a text table plus the confusion matrix."""
    width = max(8, *(len(c) for c in report.classes))
    lines = [f"accuracy {report.accuracy:.4f}   loss {report.loss:.4f}   images {report.n}"]
    if report.calibration is not None:
        c = report.calibration
        lines.append(f"calibration: ECE {100 * c.ece:.2f}% NLL {c.nll:.4f} raw; temperature {c.temperature:.3f}: "
                     f"ECE {100 * c.ece_scaled:.2f}% NLL {c.nll_scaled:.4f}")
    lines.append("")
    lines.append(f"{'class':>{width}}  precision  recall     f1  support")
    for c, m in report.per_class.items():
        lines.append(f"{c:>{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")
    for name, m in (("macro", report.macro), ("weighted", report.weighted)):
        lines.append(f"{name:>{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {report.n:7d}")
    if len(report.classes) <= 20:
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        cw = max(5, len(str(int(report.confusion.max()))) + 1)
        lines.append(" " * width + "".join(f"{c[:cw - 1]:>{cw}}" for c in report.classes))
        for c, row in zip(report.classes, report.confusion.tolist(), strict=True):
            lines.append(f"{c:>{width}}" + "".join(f"{v:>{cw}d}" for v in row))
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(report: Report, path: Path) -> None:
    """Save the confusion matrix as a PNG heat map."""
    plt = _pyplot()
    k = len(report.classes)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * k + 2), max(4, 0.45 * k + 1.5)))
    cm = report.confusion.numpy()
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), report.classes, rotation=90 if k > 10 else 0, fontsize=8)
    ax.set_yticks(range(k), report.classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"accuracy {report.accuracy:.4f}")
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_top_losses(images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, classes: list[str],
                    path: Path, n: int = 25) -> None:
    """Save a grid of the most confidently wrong images (true / predicted, probability)."""
    plt = _pyplot()
    losses = F.cross_entropy(logits, labels.long(), reduction="none")
    wrong = (logits.argmax(1) != labels).nonzero().flatten()
    order = wrong[losses[wrong].argsort(descending=True)][:n]
    cols = 5
    rows = max(1, (len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.8, rows * 2.0), squeeze=False)
    probs = logits.softmax(1)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, order.tolist(), strict=False):
        ax.imshow(images[i, 0].numpy(), cmap="gray")
        p = int(logits[i].argmax())
        ax.set_title(f"{classes[int(labels[i])]} -> {classes[p]}\n{probs[i, p]:.2f}", fontsize=8)
    if len(order) == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center")
    fig.suptitle("most confidently wrong (true -> predicted, probability)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Save learning curves (loss and accuracy per epoch) as a PNG."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    if any(h.get("val_loss") is not None for h in history):
        ax1.plot(epochs, [h.get("val_loss") for h in history], "o-", label="validation")
        ax2.plot(epochs, [h.get("val_acc") for h in history], "o-", label="validation")
    ax2.plot(epochs, [h.get("train_acc") for h in history], "o-", label="train")
    ax1.set_title("loss")
    ax2.set_title("accuracy")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(calibration: Calibration, path: Path) -> None:
    """Save a reliability diagram: accuracy against confidence per bin, before and after temperature scaling."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    width = 1.0 / len(calibration.reliability.count)
    for r, label, colour, shift in ((calibration.reliability_raw, f"raw (ECE {100 * calibration.ece:.2f}%)", "tab:gray", 0.0),
                                    (calibration.reliability, f"T = {calibration.temperature:.2f} "
                                     f"(ECE {100 * calibration.ece_scaled:.2f}%)", "tab:blue", 0.5)):
        lefts = [e + shift * width for e, n in zip(r.edges[:-1], r.count, strict=True) if n]
        accs = [a for a, n in zip(r.accuracy, r.count, strict=True) if n]
        ax.bar(lefts, accs, width=width / 2, align="edge", color=colour, alpha=0.8, label=label)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability diagram (15 bins)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_corruption_grid(images: torch.Tensor, labels: torch.Tensor, classes: list[str], classify: Any, plan: Any,
                         path: Path, n: int = 8) -> None:
    """Save a grid: the clean images, then one row per corruption of ``plan`` (at MNIST-C's severity, else
    the middle one), ``n`` examples each, titled with the prediction (red when wrong)."""
    from mnistlab.data.corruptions import CORRUPTIONS, corrupt

    plt = _pyplot()
    x = images[:n]
    names = list(plan.corruptions)
    rows = [("clean", 0, x)] + [(name, CORRUPTIONS[name].published or 3, None) for name in names]
    truth = labels[:n]
    fig, axes = plt.subplots(len(rows), len(x), figsize=(1.1 * len(x) + 1.2, 1.15 * len(rows)), squeeze=False)
    for r, (name, severity, pixels) in enumerate(rows):
        pixels = pixels if pixels is not None else corrupt(x, name, severity, plan.seed)
        pred = classify(pixels).argmax(1)
        for c in range(len(x)):
            ax = axes[r, c]
            ax.imshow(pixels[c, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            wrong = int(pred[c]) != int(truth[c])
            ax.set_title(classes[int(pred[c])], fontsize=7, color="red" if wrong else "black", pad=1)
        axes[r, 0].set_ylabel(name if r == 0 else f"{name} s{severity}", fontsize=6, rotation=0, ha="right", va="center")
    fig.suptitle("predicted class under each corruption (red: wrong)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
