"""The probe behind configs/finetune-few-labels.yaml: FixMatch accuracy against steps, scored on training images.

MNIST, 10 labelled images per class (the seeded draw of `finetune --shots 10`), the other training
images unlabelled; every 250 steps the live and EMA weights are scored on 5,000 of those other
training images (their labels are read only here, to choose the number of steps; never the test
set). Written to few_labels_probe.log by:

    OMP_NUM_THREADS=1 MNISTLAB_DATA_DIR=... python benchmarks/results/few_labels_probe.py 0 6000 1 0.003 0

Arguments: seed, steps, distribution alignment (0/1), lr, elastic strength of the strong view.
"""

import math
import sys
import time

import torch
import torch.nn.functional as F

from mnistlab.config import AugmentConfig
from mnistlab.data.augment import augment_batch
from mnistlab.data.dataset import class_balanced_subset, load_dataset
from mnistlab.models.fastcnn import fastcnn
from mnistlab.train_state import EMA

torch.set_num_threads(1)
seed, total, da, lr = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
elastic = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
torch.manual_seed(seed)
tr = load_dataset("mnist", "train", progress=False)
lab = class_balanced_subset(tr, 10, seed=seed)
seen = {bytes(i.numpy().tobytes()) for i in lab.images}
keep = torch.tensor([bytes(i.numpy().tobytes()) not in seen for i in tr.images])
rest_x, rest_y = tr.images[keep], tr.labels[keep]
p = torch.randperm(len(rest_x), generator=torch.Generator().manual_seed(123))
dev_x, dev_y = rest_x[p[:5000]], rest_y[p[:5000]]  # held-out training images: labels only to choose steps
pool = rest_x  # the unlabelled images (labels never used in training)
mean, std = 0.1307, 0.3081
weak = AugmentConfig(rotate=10.0, translate=0.1, scale=0.1)
strong = AugmentConfig(rotate=30.0, translate=0.2, scale=0.25, shear=20.0, erase=0.5, elastic=elastic)
model = fastcnn()
ema = EMA(model, 0.999)
opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: math.cos(7 * math.pi * s / (16 * total)))
X, Y = lab.images.float().div(255), lab.labels
B, mu = 32, 7
pm = torch.ones(10) / 10
gen = torch.Generator().manual_seed(seed)


def evaluate(m: torch.nn.Module) -> float:
    m.eval()
    with torch.no_grad():
        return (m((dev_x.float().div(255) - mean) / std).argmax(1) == dev_y).float().mean().item()


t0 = time.perf_counter()
for step in range(total):
    model.train()
    idx = torch.randint(len(X), (B,), generator=gen)
    x, u = X[idx], pool[torch.randint(len(pool), (mu * B,), generator=gen)].float().div_(255)
    v = torch.cat([augment_batch(x, weak, generator=gen), augment_batch(u, weak, generator=gen),
                   augment_batch(u, strong, generator=gen)])
    lx, lw, ls = model((v - mean) / std).split([B, mu * B, mu * B])
    with torch.no_grad():
        pw = F.softmax(lw.float(), 1)
        if da:
            pm = 0.999 * pm + 0.001 * pw.mean(0)
            pw = pw / pm
            pw = pw / pw.sum(1, keepdim=True)
        conf, pseudo = pw.max(1)
        mask = (conf >= 0.95).float()
    loss = F.cross_entropy(lx, Y[idx]) + (F.cross_entropy(ls, pseudo, reduction="none") * mask).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    ema.update(model, step)
    if (step + 1) % 250 == 0:
        print(f"step {step + 1} t {time.perf_counter() - t0:.0f}s loss {loss.item():.3f} mask {mask.mean().item():.2f} "
              f"live {evaluate(model):.4f} ema {evaluate(ema.model):.4f}", flush=True)
