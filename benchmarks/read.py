"""Digit-string benchmark for `mnistlab read`: whole-string and per-character accuracy.

Strings are built from MNIST *test* digits (never seen in training) and rendered as scans:
each digit cropped to its ink and placed left to right with a gap drawn from its overlap level
(`wide` 6-14 px, `normal` 1-5 px, `touching` -1..0 px, `overlap` -5..-2 px, on the 28-px MNIST
scale), a little vertical jitter, the whole string sheared by a slant of -0.3..0.3, scaled to a
digit height of 16-120 px, and printed as dark ink (grey level 10-90) on light paper (170-245)
with a brightness gradient across the page, Gaussian noise (sigma 2-8) and, in one string of
four, a ruling line under or through the digits. Lengths 3 to 10.

    MNISTLAB_DATA_DIR=... OMP_NUM_THREADS=1 python benchmarks/read.py CTC_RUN CLASSIFIER_RUN \
        --names ctc segmentation --per-cell 15 --seeds 0 1 2 --name NAME

The generator is `mnistlab.data.strings.make_string` (the sequence reader trains on
`training_string` over MNIST *training* digits only). Each RUN gets the reader it was trained
for (`mnistlab.read_ctc.load_reader`): a `train read-ctc` run reads with the sequence model
(`CtcReader`), a classifier run by segmentation (`read.StringReader`). For every (length,
overlap level, seed) cell every reader reads the same `--per-cell` strings; the script records
whole-string accuracy (the text equals the truth) and per-character accuracy (1 - edit
distance / length), then gives the mean and spread over seeds, per reader, and the time per
string. With `--expect-length` the readers are told the length.
Writes benchmarks/results/read-<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from mnistlab.data.strings import LEVELS, edit_distance, make_string

LENGTHS = list(range(3, 11))
RESULTS = Path(__file__).parent / "results"


def mnist_test(data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    from mnistlab.data.dataset import load_dataset

    data = load_dataset("mnist", "test", data_dir=data_dir, progress=False)
    return data.images[:, 0].numpy(), data.labels.numpy()


def run_cell(readers: dict, images, labels, length: int, level: str, seed: int, n: int, expect: bool) -> list[dict]:
    """One (length, level, seed) cell: the same ``n`` strings read by every reader; one result per reader."""
    rng = np.random.default_rng([seed, length, list(LEVELS).index(level)])
    strings = [make_string(images, labels, length, level, rng) for _ in range(n)]
    cells = []
    for name, reader in readers.items():
        right, chars, total = 0, 0.0, 0
        misses = []
        t0 = time.perf_counter()
        for img, truth in strings:
            got = reader.read(img, name="string", expect_length=length if expect else None).text
            right += got == truth
            chars += max(0, len(truth) - edit_distance(got, truth))
            total += len(truth)
            if got != truth and len(misses) < 3:
                misses.append([truth, got])
        cells.append({"reader": name, "length": length, "level": level, "seed": seed, "n": n,
                      "string_acc": right / n, "char_acc": chars / total, "misses": misses,
                      "seconds": round(time.perf_counter() - t0, 2)})
    return cells


def summarize(cells: list[dict]) -> str:
    def stat(vals):
        a = np.array(vals) * 100
        return f"{a.mean():.1f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.1f}"

    lines = ["| length | " + " | ".join(f"{lv} string / char (%)" for lv in LEVELS) + " |",
             "|---:|" + "---:|" * len(LEVELS)]
    for length in sorted({c["length"] for c in cells}):
        row = [str(length)]
        for lv in LEVELS:
            cs = [c for c in cells if c["length"] == length and c["level"] == lv]
            if not cs:
                row.append("")
                continue
            row.append(f"{stat([c['string_acc'] for c in cs])} / {stat([c['char_acc'] for c in cs])}")
        lines.append("| " + " | ".join(row) + " |")
    for lv in [*LEVELS, None]:
        cs = [c for c in cells if lv is None or c["level"] == lv]
        seeds = sorted({c["seed"] for c in cs})
        per_seed_s = [np.mean([c["string_acc"] for c in cs if c["seed"] == s]) for s in seeds]
        per_seed_c = [np.mean([c["char_acc"] for c in cs if c["seed"] == s]) for s in seeds]
        lines.append(f"\n{lv or 'all levels'}, all lengths: string {stat(per_seed_s)}%, char {stat(per_seed_c)}%")
    five = [c for c in cells if c["length"] == 5]
    seeds = sorted({c["seed"] for c in five})
    s5 = [np.mean([c["string_acc"] for c in five if c["seed"] == s]) for s in seeds]
    c5 = [np.mean([c["char_acc"] for c in five if c["seed"] == s]) for s in seeds]
    lines.append(f"\n5-digit strings, all four levels: string {stat(s5)}%, char {stat(c5)}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    from mnistlab.fileio import atomic_write_text
    from mnistlab.read_ctc import load_reader

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", metavar="RUN",
                   help="run directories or artifacts: sequence readers (train read-ctc) or classifiers (segmentation)")
    p.add_argument("--names", nargs="+", help="a name per RUN for the tables (default: the folder names)")
    p.add_argument("--per-cell", type=int, default=40, help="strings per (length, level, seed) cell")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    p.add_argument("--expect-length", action="store_true", help="tell the reader each string's length")
    p.add_argument("--name", default="default", help="results file: benchmarks/results/read-NAME.{json,md}")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    names = args.names or [Path(m).name for m in args.models]
    if len(names) != len(args.models) or len(set(names)) != len(names):
        p.error("--names needs one distinct name per RUN")
    torch.set_num_threads(1)
    readers = {n: load_reader(m) for n, m in zip(names, args.models, strict=True)}
    kinds = {n: type(r).__name__ for n, r in readers.items()}
    images, labels = mnist_test(args.data_dir)
    cells, t0 = [], time.perf_counter()
    for seed in args.seeds:
        for length in args.lengths:
            for level in LEVELS:
                for cell in run_cell(readers, images, labels, length, level, seed, args.per_cell, args.expect_length):
                    cells.append(cell)
                    print(f"{cell['reader']} seed {seed} length {length:2d} {level:8s} string {cell['string_acc']:.3f} "
                          f"char {cell['char_acc']:.3f} {cell['misses'][:1]}", file=sys.stderr, flush=True)
    parts = []
    for n in names:
        mine = [c for c in cells if c["reader"] == n]
        secs = sum(c["seconds"] for c in mine) / max(1, sum(c["n"] for c in mine))
        parts.append(f"## {n} ({kinds[n]}, {1000 * secs:.0f} ms per string)\n\n{summarize(mine)}")
    table = "\n\n".join(parts)
    meta = {"models": dict(zip(names, map(str, args.models), strict=True)), "readers": kinds, "per_cell": args.per_cell,
            "seeds": args.seeds, "expect_length": args.expect_length, "seconds": round(time.perf_counter() - t0, 1),
            "python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.processor() or platform.machine()}
    RESULTS.mkdir(exist_ok=True)
    atomic_write_text(RESULTS / f"read-{args.name}.json", json.dumps({"meta": meta, "cells": cells}, indent=1))
    atomic_write_text(RESULTS / f"read-{args.name}.md", f"{json.dumps(meta)}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
