"""Probe: what a SimCLR backbone's frozen features give with 10 labels per class (benchmarks/README.md, "Few labels").

The labelled images are `finetune --shots 10`'s seeded draw; 5,000 of the other training images are held out to
score (as results/self_training_probe.py holds them out), the rest are the unlabelled pool. The test set is not read.
Prints the accuracy on the held-out images of a linear probe on the 100 labelled images' features, k-nearest
neighbours (cosine) and label propagation (Zhou et al. 2004) over a 20-neighbour graph of all the images' features.
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/fashion_features_probe.py SEED PRETRAIN_RUN [DATASET]
"""
import sys
import time

import torch
import torch.nn.functional as F

from mnistlab.artifact import load_artifact
from mnistlab.data.dataset import class_balanced_subset, load_dataset
from mnistlab.ssl import features, linear_probe

torch.set_num_threads(1)
seed, run = int(sys.argv[1]), sys.argv[2]
dataset = sys.argv[3] if len(sys.argv) > 3 else "fashion-mnist"
train = load_dataset(dataset, "train", progress=False)
lab = class_balanced_subset(train, 10, seed=seed)
seen = {bytes(i.numpy().tobytes()) for i in lab.images}
rest = train.subset(torch.tensor([bytes(i.numpy().tobytes()) not in seen for i in train.images]))
perm = torch.randperm(len(rest), generator=torch.Generator().manual_seed(1234))
held, pool = rest.subset(perm[:5000]), rest.subset(perm[5000:])
model, card = load_artifact(run)
pp, cpu = card.preprocess, torch.device("cpu")
t0 = time.time()
fl, fh, fp = (features(model, d.images, pp.mean, pp.std, cpu) for d in (lab, held, pool))
print(f"features {tuple(fl.shape[1:])}, {time.time() - t0:.0f} s")
print(f"linear probe, 100 labels: {linear_probe(fl, lab.labels, fh, held.labels, 10, 500):.4f}")
centre = fp.mean(0)


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x - centre, dim=1)


for k in (1, 5, 10):
    nearest = (unit(fh) @ unit(fl).T).topk(k, 1).indices
    votes = F.one_hot(lab.labels[nearest], 10).sum(1)
    print(f"{k}-nearest neighbours: {(votes.argmax(1) == held.labels).float().mean().item():.4f}")
X = unit(torch.cat([fl, fp, fh]))
n, nl, k = len(X), len(fl), 20
sims, nbrs = [], []
for i in range(0, n, 4096):
    v, j = (X[i:i + 4096] @ X.T).topk(k + 1, 1)
    sims.append(v[:, 1:])
    nbrs.append(j[:, 1:])
weights = torch.cat(sims).clamp_min(0) ** 3
rows = torch.arange(n).repeat_interleave(k)
W = torch.sparse_coo_tensor(torch.stack([rows, torch.cat(nbrs).reshape(-1)]), weights.reshape(-1), (n, n)).coalesce()
W = (W + W.t()).coalesce()
d = torch.sparse.sum(W, 1).to_dense().clamp_min(1e-12).sqrt()[:, None]
Y0 = torch.zeros(n, 10)
Y0[torch.arange(nl), lab.labels] = 1
Z = Y0.clone()
for _ in range(40):
    Z = 0.99 * torch.sparse.mm(W, Z / d) / d + 0.01 * Y0
pred = Z.argmax(1)
print(f"label propagation: held-out {(pred[-len(fh):] == held.labels).float().mean().item():.4f}, "
      f"pool {(pred[nl:nl + len(fp)] == pool.labels).float().mean().item():.4f}, {time.time() - t0:.0f} s")
