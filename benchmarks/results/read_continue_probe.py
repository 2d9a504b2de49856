"""Probe: continue a read-ctc run for EPOCHS more epochs at a low learning rate (AdamW, cosine from 5e-4), with
the training strings drawn as shipped (`control`) or with overlapping gaps three times as likely (`overlap`),
then read 800 strings of the run's VALIDATION digits (as results/read_stretch_probe.py draws them; the test
set is not read). One thread, strings prepared in the same process. benchmarks/README.md, "Reading digit strings".
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_continue_probe.py RUN control|overlap EPOCHS
"""
import collections
import math
import sys
import time

import numpy as np
import torch

import mnistlab.data.strings as S
import mnistlab.read_train as RT
from mnistlab.config import load_config
from mnistlab.read_ctc import CtcReader
from mnistlab.splits import make_splits

torch.set_num_threads(1)
run, variant, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
cfg = load_config(f"{run}/config.yaml", [])
sp = make_splits(cfg, progress=False)
tri, trl = sp.train.images[:, 0].numpy(), sp.train.labels.numpy()
vi, vl = sp.val.images[:, 0].numpy(), sp.val.labels.numpy()
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
        x = b["x"].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x, b["frames"])
        loss = ctc(logits.float().log_softmax(-1).transpose(0, 1), b["targets"], b["frames"], b["target_lengths"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
    print(f"{variant} epoch {ep + 1} {time.time() - t0:.0f}s", flush=True)
model.eval()
reader.model = model
stats = collections.defaultdict(lambda: [0, 0, 0, 0])
for li, level in enumerate(S.LEVELS):
    for length in range(3, 11):
        rng = np.random.default_rng([77, length, li])
        for _ in range(25):
            img, truth = S.make_string(vi, vl, length, level, rng)
            got = reader.read(img).text
            for col in (level, "all"):
                s = stats[col]
                s[0] += got == truth
                s[1] += 1
                s[2] += max(0, len(truth) - S.edit_distance(got, truth))
                s[3] += len(truth)
print(variant, epochs, " ".join(f"{c} {100*s[0]/s[1]:.1f}/{100*s[2]/s[3]:.2f}" for c, s in stats.items()), flush=True)
