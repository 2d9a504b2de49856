"""Probe: the sequence reader's characters read again by a digit classifier where a character is ink of its own.

For each string the CTC reader reads as shipped (greedy path); then each character whose columns hold exactly
one blob of ink (a component, broken strokes joined), a blob no other character's frames fall in and no wider
than a character, is cropped as the segmentation reader crops a piece and read by the classifier (the one
preprocessing path). Readings compared: the reader alone; the classifier's answer in place of the reader's;
the product of the two class distributions (the reader's at the frame where its character peaks). VALIDATION
digits only (the reader run's split; the test set is not read).

Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_rescore_probe.py READER_RUN CLASSIFIER [PER [THREADS]]
"""

import sys
import time

import numpy as np
from probe_strings import Tally, reader_and_strings, strings

from mnistlab.data.segment import StringImage, ink_image
from mnistlab.models.crnn import STRIDE
from mnistlab.models.ctc import greedy
from mnistlab.predict import load_predictor
from mnistlab.read_ctc import _columns

reader, images, labels, per = reader_and_strings([sys.argv[1], *sys.argv[3:]])
predictor = load_predictor(sys.argv[2], threads=int(sys.argv[4]) if len(sys.argv) > 4 else 1)
ALLOWED = list(range(10))
MAX_WIDTH = 1.1  # a blob wider than this many character heights holds more than one character
COUNTS = {"chars": 0, "rescored": 0, "substitutions": 0, "drops": 0, "inserts": 0}  # the reader's characters; its errors


def readings(img) -> dict[str, str]:
    work = StringImage.from_image(img)
    line = work.line(reader.height)
    logp = reader.frames(line.pixels)
    spans, _ = greedy(logp, ALLOWED)
    if not spans:
        return {"ctc": ""}
    cols = [_columns(spans, k, line.pixels.shape[1]) for k in range(len(spans))]
    ranges = [(line.x0 + u0 * line.step, line.x0 + u1 * line.step) for u0, u1 in cols]
    centres = [line.x0 + STRIDE * (a + b + 1) / 2 * line.step for _, a, b in spans]  # frame t: line columns STRIDE*t..
    blobs = work.blobs()
    pieces, which = [], []
    for k, (x0, x1) in enumerate(ranges):
        mine = [b for b in blobs if x0 <= (b.x0 + b.x1) / 2 < x1]
        if len(mine) != 1:
            continue
        b = mine[0]
        if (b.x1 - b.x0) > MAX_WIDTH * work.char_height:
            continue
        if any(b.x0 <= c < b.x1 for j, c in enumerate(centres) if j != k):
            continue
        rows = b.y1 - b.y0
        got = work.piece(b, np.full(rows, b.x0), np.full(rows, b.x1))
        if got is None:
            continue
        pieces.append(predictor.prepare(ink_image(got.image)))
        which.append(k)
    ctc_text = "".join(str(c) for c, _, _ in spans)
    COUNTS["chars"] += len(spans)
    COUNTS["rescored"] += len(pieces)
    out = {"ctc": ctc_text}
    if not pieces:
        for name in ("replace", "product", "product-sure"):
            out[name] = ctc_text
        return out
    _, probs = predictor.run(np.stack(pieces)[:, None])
    replace, product, sure = list(ctc_text), list(ctc_text), list(ctc_text)
    for k, p in zip(which, probs, strict=True):
        c, a, b = spans[k]
        t = a + int(np.argmax(logp[a:b + 1, c + 1]))
        q = np.exp(logp[t, 1:])
        q = q / q.sum()
        replace[k] = str(int(np.argmax(p)))
        product[k] = str(int(np.argmax(np.log(q + 1e-9) + np.log(p + 1e-9))))
        if q[c] < 0.9:  # only where the reader is unsure of its character
            sure[k] = product[k]
    out.update(replace="".join(replace), product="".join(product), **{"product-sure": "".join(sure)})
    return out


tally = Tally()
t0 = time.perf_counter()
n = 0
for level, length, img, truth in strings(images, labels, per):
    for name, got in readings(img).items():
        tally.add(name, level, length, got, truth)
        if name == "ctc":
            if len(got) == len(truth):
                COUNTS["substitutions"] += sum(a != b for a, b in zip(got, truth, strict=True))
            else:
                COUNTS["drops" if len(got) < len(truth) else "inserts"] += 1  # strings of that kind
    n += 1
print(f"{n} validation strings, {time.perf_counter() - t0:.0f} s; whole-string % / per-character %")
print(tally.table())
print(COUNTS, "(substitutions: characters in strings of the right length; drops and inserts: strings)")
