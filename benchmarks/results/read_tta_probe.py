"""Probe: test-time augmentation for the CTC reader that keeps the frame grid (same line width), frame
posteriors averaged, greedy decode. VALIDATION digits only (the run's data split; the test set is not read).
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_tta_probe.py RUN [PER [THREADS]]
"""
import sys
import time

import numpy as np
from PIL import Image
from probe_strings import Tally, reader_and_strings, strings

from mnistlab.data.segment import StringImage
from mnistlab.models.ctc import greedy

reader, images, labels, per = reader_and_strings(sys.argv[1:])
ALLOWED = list(range(10))


def hshift(px, k):
    out = np.zeros_like(px)
    if k > 0:
        out[:, k:] = px[:, :-k]
    else:
        out[:, :k] = px[:, -k:]
    return out


def vshift(px, k):
    out = np.zeros_like(px)
    if k > 0:
        out[k:] = px[:-k]
    else:
        out[:k] = px[-k:]
    return out


def vscale(px, f):
    h, w = px.shape
    nh = max(4, round(h * f))
    r = np.array(Image.fromarray(px, mode="F").resize((w, nh), Image.BILINEAR))
    out = np.zeros_like(px)
    if nh >= h:
        a = (nh - h) // 2
        out[:] = r[a:a + h]
    else:
        a = (h - nh) // 2
        out[a:a + nh] = r
    return out


VIEWS = {"h+1": lambda p: hshift(p, 1), "h+2": lambda p: hshift(p, 2), "h-1": lambda p: hshift(p, -1),
         "h-2": lambda p: hshift(p, -2), "v+1": lambda p: vshift(p, 1), "v-1": lambda p: vshift(p, -1),
         "s0.9": lambda p: vscale(p, 0.9), "s1.1": lambda p: vscale(p, 1.1)}
GROUPS = {"base": [], "h2": ["h+2"], "h1-1": ["h+1", "h-1"], "h2-2": ["h+2", "h-2"], "hall": ["h+1", "h+2", "h-1", "h-2"],
          "v": ["v+1", "v-1"], "s": ["s0.9", "s1.1"], "h2-2v": ["h+2", "h-2", "v+1", "v-1"],
          "all": list(VIEWS)}


def readings(img):
    px = StringImage.from_image(img).line(reader.height).pixels.astype(np.float32)
    lp = {"base": reader.frames(px)}
    for name, f in VIEWS.items():
        lp[name] = reader.frames(f(px))
    out = {}
    for g, members in GROUPS.items():
        for mode in ("p", "logp"):
            stack = np.stack([lp["base"]] + [lp[m] for m in members])
            avg = np.log(np.exp(stack).mean(0) + 1e-12) if mode == "p" else stack.mean(0)
            spans, _ = greedy(avg, ALLOWED)
            out[f"{g}/{mode}"] = "".join(str(c) for c, _, _ in spans)
            if not members:
                break
    return out


tally = Tally()
t0 = time.time()
for level, length, img, truth in strings(images, labels, per):
    for name, got in readings(img).items():
        tally.add(name, level, length, got, truth)
print(f"{time.time() - t0:.0f} s, {per} strings a cell", tally.table(), sep="\n")
