"""Probe: the read-ctc crnn (32-64-128, hidden 128) with 4 or 2 input columns per frame, trained from scratch.

STRIDE 2 keeps the line's width at the second max-pool, so a character gets twice the frames. Both
train EPOCHS one-cycle epochs of 400 steps of 32 strings of the run's training digits (the same
strings, seed 0, one thread), then read 800 strings of the run's VALIDATION digits (25 a length
3-10 and level; the test set is not read). Usage:

    MNISTLAB_DATA_DIR=... python benchmarks/results/read_stride_probe.py RUN 2|4 EPOCHS
"""

import sys
import time

import torch
from probe_strings import Tally, ctc_step, digits, strings
from torch import nn

import mnistlab.data.strings as S
import mnistlab.models.crnn as C
import mnistlab.read_train as RT
from mnistlab.config import load_config
from mnistlab.optim import Schedule, build_optimizer
from mnistlab.read_ctc import CtcReader

torch.set_num_threads(1)
run, stride, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = load_config(f"{run}/config.yaml", [f"train.epochs={epochs}"])
tri, trl, vi, vl = digits(run)
torch.manual_seed(0)
model = C.CRNN(num_classes=10, widths=(32, 64, 128), hidden=128)
if stride == 2:
    model.features[7] = nn.MaxPool2d((2, 1))  # the second pool keeps the width
    assert isinstance(model.features[7], nn.MaxPool2d)
    RT.frames_for = lambda w: w // 2
print(model.features, flush=True)
model = model.to(memory_format=torch.channels_last)
opt = build_optimizer(model.parameters(), cfg.optim)
steps = 400
sched = Schedule(opt, cfg.schedule, steps, epochs)
ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)
t0 = time.time()
for ep in range(epochs):
    model.train()
    for step, b in enumerate(RT.StringBatches(tri, trl, seed=0, epoch=ep, steps=steps, batch_size=32, height=32, max_length=10)):
        sched.set_step(ep * steps + step)
        loss = ctc_step(model, opt, ctc, b)
    print(f"stride {stride} epoch {ep + 1} loss {loss.item():.3f} {time.time() - t0:.0f}s", flush=True)
model.eval()
reader = CtcReader.load(run)
reader.model = model
tally = Tally()
for level, length, img, truth in strings(vi, vl, 25):
    tally.add(f"stride {stride}", level, length, reader.read(img).text, truth)
print(f"stride {stride} epochs {epochs}, {time.time() - t0:.0f}s", tally.table([*S.LEVELS, "all"]), sep="\n", flush=True)
