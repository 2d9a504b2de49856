"""What the reader probes beside this file share: the run's digits, the training step of `read_train`, the
validation strings and their tally.

`strings(images, labels, per)` draws ``per`` strings per (level, length 3-10) from the given digits
with the seeds every probe uses ([77, length, level index]); `Tally` counts whole-string and
per-character accuracy per column (a level, "all", "len5").
"""

import collections
from collections.abc import Iterator

import numpy as np
import torch
from PIL import Image

from mnistlab import read_train
from mnistlab.config import load_config
from mnistlab.data.strings import LEVELS, edit_distance, make_string
from mnistlab.read_ctc import CtcReader
from mnistlab.splits import make_splits


def digits(run: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The run's training and VALIDATION digits as uint8 [N, 28, 28] and labels: train_x, train_y, val_x, val_y."""
    splits = make_splits(load_config(f"{run}/config.yaml", []), progress=False)
    return (splits.train.images[:, 0].numpy(), splits.train.labels.numpy(),
            splits.val.images[:, 0].numpy(), splits.val.labels.numpy())


def reader_and_strings(argv: list[str]) -> tuple[CtcReader, np.ndarray, np.ndarray, int]:
    """From ``RUN [PER [THREADS]]``: the run's reader, its validation digits and labels, and PER (default 10)."""
    torch.set_num_threads(int(argv[2]) if len(argv) > 2 else 1)
    _, _, images, labels = digits(argv[0])
    return CtcReader.load(argv[0]), images, labels, int(argv[1]) if len(argv) > 1 else 10


def ctc_step(model: torch.nn.Module, opt: torch.optim.Optimizer, ctc: torch.nn.CTCLoss, batch: dict) -> torch.Tensor:
    """One training step as `mnistlab train read-ctc` takes it (bf16, channels_last, clipping at 5)."""
    x = batch["x"].contiguous(memory_format=torch.channels_last)
    return read_train.ctc_step(model, opt, ctc, x, batch, bf16=True, grad_clip=5.0)


def strings(images: np.ndarray, labels: np.ndarray, per: int) -> Iterator[tuple[str, int, Image.Image, str]]:
    """(level, length, image, truth) for ``per`` strings a cell, lengths 3-10, every level."""
    for li, level in enumerate(LEVELS):
        for length in range(3, 11):
            rng = np.random.default_rng([77, length, li])
            for _ in range(per):
                img, truth = make_string(images, labels, length, level, rng)
                yield level, length, img, truth


class Tally:
    """Right strings, strings, right characters and characters, per (reading, column)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0, 0.0, 0])

    def add(self, name: str, level: str, length: int, got: str, truth: str) -> None:
        for col in (level, "all", *(["len5"] if length == 5 else [])):
            c = self.counts[(name, col)]
            c[0] += got == truth
            c[1] += 1
            c[2] += max(0, len(truth) - edit_distance(got, truth))
            c[3] += len(truth)

    def cell(self, name: str, col: str) -> str:
        c = self.counts[(name, col)]
        return f"{100 * c[0] / max(1, c[1]):.1f}/{100 * c[2] / max(1, c[3]):.2f}"

    def table(self, cols: list[str] | None = None) -> str:
        cols = cols or [*LEVELS, "all", "len5"]
        rows = [f"{'reading':12s} " + " ".join(f"{c:>14s}" for c in cols)]
        for name in sorted({k[0] for k in self.counts}):
            rows.append(f"{name:12s} " + " ".join(f"{self.cell(name, c):>14s}" for c in cols))
        return "\n".join(rows)
