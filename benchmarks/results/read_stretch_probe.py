"""Probe: reading a line stretched 1.0-1.5x wider at test time, for the CTC reader (benchmarks/README.md).

Strings of the run's own VALIDATION digits (its data split; the test set is not read), lengths 3-10, the
benchmark's four overlap levels, PER strings a cell. Prints whole-string / per-character accuracy (%) per
level for each stretch, the surest (max*) and the commonest (vote*) of 2-4 stretches.
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_stretch_probe.py RUN [PER [THREADS]]
"""
import collections
import sys
import time

import numpy as np
import torch
from PIL import Image

from mnistlab.config import load_config
from mnistlab.data.segment import StringImage
from mnistlab.data.strings import LEVELS, edit_distance, make_string
from mnistlab.models.ctc import confidences, greedy
from mnistlab.read_ctc import CtcReader
from mnistlab.splits import make_splits

run = sys.argv[1]
per = int(sys.argv[2]) if len(sys.argv) > 2 else 10
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
val = make_splits(load_config(f"{run}/config.yaml", []), progress=False).val
images, labels = val.images[:, 0].numpy(), val.labels.numpy()
reader = CtcReader.load(run)
ALLOWED = list(range(10))
STRETCH = [1.0, 1.15, 1.3, 1.5]
GROUPS = {"2": [1.0, 1.3], "3": [1.0, 1.15, 1.3], "4": STRETCH}


def readings(img: Image.Image) -> dict[float, tuple[str, float]]:
    """Per stretch: (text, string confidence) of the greedy reading."""
    px = StringImage.from_image(img).line(reader.height).pixels.astype(np.float32)
    out = {}
    for f in STRETCH:
        wide = px if f == 1.0 else np.array(Image.fromarray(px, mode="F").resize(
            (max(4, round(px.shape[1] * f)), px.shape[0]), Image.BILINEAR))
        logp = reader.frames(wide)
        spans, _ = greedy(logp, ALLOWED)
        out[f] = ("".join(str(c) for c, _, _ in spans), float(np.prod(confidences(logp, spans))) if spans else 0.0)
    return out


def variants(r: dict[float, tuple[str, float]]) -> dict[str, str]:
    """Each way of answering: one stretch, the surest of a group, the commonest of a group (ties: the surest)."""
    out = {f"x{f}": r[f][0] for f in STRETCH}
    for name, group in GROUPS.items():
        out["max" + name] = max((r[f] for f in group), key=lambda t: t[1])[0]
        votes = collections.Counter(r[f][0] for f in group)
        top = max(votes.values())
        out["vote" + name] = max((r[f] for f in group if votes[r[f][0]] == top), key=lambda t: t[1])[0]
    return out


stats: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0, 0.0, 0])  # right, n, chars, total
t0 = time.time()
for li, level in enumerate(LEVELS):
    for length in range(3, 11):
        rng = np.random.default_rng([77, length, li])
        for _ in range(per):
            img, truth = make_string(images, labels, length, level, rng)
            for name, got in variants(readings(img)).items():
                for col in (level, "all", *(["len5"] if length == 5 else [])):
                    s = stats[(name, col)]
                    s[0] += got == truth
                    s[1] += 1
                    s[2] += max(0, len(truth) - edit_distance(got, truth))
                    s[3] += len(truth)
cols = [*LEVELS, "all", "len5"]
print(f"{'variant':8s} " + " ".join(f"{c:>16s}" for c in cols), f"  ({time.time() - t0:.0f} s, {per} per cell)")
for name in sorted({k[0] for k in stats}):
    cells = [stats[(name, c)] for c in cols]
    print(f"{name:8s} " + " ".join(f"{100 * s[0] / max(1, s[1]):7.2f}/{100 * s[2] / max(1, s[3]):7.2f}" for s in cells))
