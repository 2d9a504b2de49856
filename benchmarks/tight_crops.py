"""Digits cropped tight to their ink: how a run reads MNIST digits cut the way handwriting datasets
often cut theirs (no margin: strokes touch the image's edges), as dark ink on white paper, through
the one preprocessing path (`Predictor.prepare`, i.e. `preprocess_image`), against the same digits
with a margin of M pixels.

    MNISTLAB_DATA_DIR=... python benchmarks/tight_crops.py RUN [RUN ...] --split train --images 3000
    MNISTLAB_DATA_DIR=... python benchmarks/tight_crops.py RUN --split test --margins 0 1 4

`--split train` reads training digits (most of them seen in training: it measures what the
preprocessing loses, and is the set to choose changes on); `--split test` reads test digits.
Prints accuracy and how many images came out blank, per run and margin. Results:
benchmarks/README.md ("Digits that are not MNIST").
"""

from __future__ import annotations

import argparse
import platform
import sys

import numpy as np
import torch
from PIL import Image

from mnistlab.data.dataset import load_dataset
from mnistlab.errors import MnistlabError
from mnistlab.predict import load_predictor


def tight(digit: np.ndarray, margin: int) -> Image.Image:
    """``digit`` (MNIST style, ink 255 on 0) cropped to its ink plus ``margin`` px, dark on white."""
    rows, cols = np.flatnonzero(digit.max(1) > 0), np.flatnonzero(digit.max(0) > 0)
    crop = np.pad(digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1], margin)
    return Image.fromarray(255 - crop)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories or exported models")
    p.add_argument("--split", choices=["train", "test"], default="train")
    p.add_argument("--images", type=int, default=3000, help="the first N digits of the split")
    p.add_argument("--margins", type=int, nargs="+", default=[0, 1], help="pixels of paper around the ink")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    data = load_dataset("mnist", args.split, data_dir=args.data_dir, download=False, progress=False)
    digits = data.images[:args.images, 0].numpy()  # uint8 [N, 28, 28]
    truth = data.labels[:args.images].numpy()
    print(f"MNIST {args.split} digits 0-{len(truth) - 1}, cropped tight, dark on white; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, Python {platform.python_version()}")
    for run in args.runs:
        predictor = load_predictor(run, threads=args.threads)
        for margin in args.margins:
            pixels = np.stack([predictor.prepare(tight(d, margin)) for d in digits])
            predicted = predictor.run(pixels[:, None])[1].argmax(1)
            blank = int((pixels.reshape(len(pixels), -1).max(1) == 0).sum())
            print(f"{run}  margin {margin} px: accuracy {100 * (predicted == truth).mean():.2f}%  blank {blank}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MnistlabError as err:
        sys.exit(f"error: {err}")
