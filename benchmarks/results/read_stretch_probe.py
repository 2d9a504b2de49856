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
from PIL import Image
from probe_strings import Tally, reader_and_strings, strings

from mnistlab.data.segment import StringImage
from mnistlab.models.ctc import confidences, greedy

reader, images, labels, per = reader_and_strings(sys.argv[1:])
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


tally = Tally()
t0 = time.time()
for level, length, img, truth in strings(images, labels, per):
    for name, got in variants(readings(img)).items():
        tally.add(name, level, length, got, truth)
print(f"{time.time() - t0:.0f} s, {per} strings a cell", tally.table(), sep="\n")
