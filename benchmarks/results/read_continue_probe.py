"""Probe: continue a read-ctc run for EPOCHS more epochs at a low learning rate (AdamW, cosine from 5e-4), with
the training strings drawn as shipped (`control`) or with overlapping gaps three times as likely (`overlap`),
then read 800 strings of the run's VALIDATION digits (as results/read_stretch_probe.py draws them; the test
set is not read). One thread, strings prepared in the same process. benchmarks/README.md, "Reading digit strings".
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_continue_probe.py RUN control|overlap EPOCHS
"""
import math
import sys
import time

import numpy as np
import torch
from probe_strings import Tally, ctc_step, digits, strings

import mnistlab.data.strings as S
import mnistlab.read_train as RT
from mnistlab.read_ctc import CtcReader

torch.set_num_threads(1)
run, variant, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
tri, trl, vi, vl = digits(run)
W = {"control": [1, 1, 1, 1, 1, 1], "overlap": [1, 1, 1, 3, 3, 1]}[variant]
P = np.array(W, float) / sum(W)


def ts(images, labels, rng, *, max_length=10, classes=None):
    """`strings.training_string` with the gap ranges drawn with the weights P."""
    length = int(rng.integers(1, max_length + 1))
    idx = rng.integers(0, len(images), size=length)
    pick = int(rng.choice(len(P), p=P))
    if pick < len(S.LEVELS):
        lo, hi = S.LEVELS[list(S.LEVELS)[pick]]
        lo, hi = lo - 1, hi + 1
    elif pick == len(S.LEVELS):
        lo, hi = S.TRAIN_GAPS[0], 1
    else:
        lo, hi = S.TRAIN_GAPS
    gaps = [int(g) for g in rng.integers(lo, hi + 1, size=max(0, length - 1))]
    canvas = S.compose([images[i] for i in idx], gaps, rng)
    digit_px = 120 if rng.random() < 0.05 else int(rng.integers(14, 73))
    img = S.render(canvas, rng, slant=float(rng.uniform(-0.4, 0.4)), digit_px=digit_px, line=bool(rng.random() < 0.25))
    return img, S._text(labels, idx, classes)


RT.training_string = ts
reader = CtcReader.load(run)
model = reader.model.to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-4)
ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
steps, t0 = 400, time.time()
total = epochs * steps
for ep in range(epochs):
    model.train()
    for step, b in enumerate(RT.StringBatches(tri, trl, seed=100, epoch=ep, steps=steps, batch_size=32, height=32, max_length=10)):
        for g in opt.param_groups:
            g["lr"] = 5e-4 * 0.5 * (1 + math.cos(math.pi * (ep * steps + step) / total))
        ctc_step(model, opt, ctc, b)
    print(f"{variant} epoch {ep + 1} {time.time() - t0:.0f}s", flush=True)
model.eval()
reader.model = model
tally = Tally()
for level, length, img, truth in strings(vi, vl, 25):
    tally.add(variant, level, length, reader.read(img).text, truth)
print(variant, epochs, tally.table([*S.LEVELS, "all"]), flush=True)
