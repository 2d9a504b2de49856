"""Self-training probe (issue 16): a teacher fine-tuned on 10 labels per class, then rounds of TTA pseudo-labels on the
unlabelled training images and a fresh fastcnn trained on them plus the labelled images (x20). Scored on 5,000 held-out
TRAINING images (labels read only to score); the test set is not read.
Usage: python benchmarks/results/self_training_probe.py SEED MODE ROUNDS EPOCHS [DATASET [HFLIP [TEACHERS]]]
MODE "all" labels every unlabelled image each round; a number q keeps, in round r, the (r + 1) * q most confident
fraction of each predicted class (curriculum). HFLIP: mirror probability in the teacher's and the rounds' augmentation.
TEACHERS: how many teachers (fresh models of their own seeds, the same labelled images) whose mean TTA softmax gives
round 0's pseudo-labels; later rounds learn from the last student alone.
"""
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch
import torch.nn.functional as F
from few_labels import fresh_parent

from mnistlab.artifact import load_artifact
from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.dataset import class_balanced_subset, load_dataset
from mnistlab.evaluate import predict_logits
from mnistlab.finetune.run import finetune
from mnistlab.models import create_model
from mnistlab.train import fit

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
mode = sys.argv[2] if len(sys.argv) > 2 else "all"
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 4
epochs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
dataset = sys.argv[5] if len(sys.argv) > 5 else "mnist"
hflip = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
teachers = int(sys.argv[7]) if len(sys.argv) > 7 else 1
torch.set_num_threads(2)
work = Path(tempfile.mkdtemp())
train = load_dataset(dataset, "train", progress=False)
lab = class_balanced_subset(train, 10, seed=seed)
seen = {bytes(i.numpy().tobytes()) for i in lab.images}
keep = torch.tensor([bytes(i.numpy().tobytes()) not in seen for i in train.images])  # as finetune.semi.keep_apart, keeping the labels to score
rest = train.subset(keep)
g = torch.Generator().manual_seed(1234)
perm = torch.randperm(len(rest), generator=g)
held, pool = rest.subset(perm[:5000]), rest.subset(perm[5000:])
t0 = time.time()
models = []
for k in range(teachers):  # teacher k: a fresh model initialised with seed + 1000 k; the same labelled images (cfg.seed draws them)
    init = seed + 1000 * k
    parent = fresh_parent(work / f"fresh{k}", "fastcnn", init, dataset)
    cfg = load_config(resolve_recipe("finetune-few-labels"), [f"seed={seed}", f"data.dataset={dataset}", f"finetune.parent={parent}",
          "finetune.shots=10", "finetune.steps=1500", "train.threads=2", f"data.augment.hflip={hflip}"])
    finetune(cfg, out=work / f"teacher{k}", quiet=True)
    models.append(load_artifact(work / f"teacher{k}"))
model, card = models[0]
pp = card.preprocess
def logits_of(m, imgs, tta=False):
    return predict_logits(m, imgs, mean=pp.mean, std=pp.std, autocontrast=pp.autocontrast, tta=tta, bf16=True, channels_last=True)
def acc(m, tta=False):  # TTA over shifts (no mirror images)
    return (logits_of(m, held.images, tta).argmax(1) == held.labels).float().mean().item()
def ensemble_logits(imgs):  # log of the teachers' mean TTA softmax
    return torch.stack([F.softmax(logits_of(m, imgs, tta=True), 1) for m, _ in models]).mean(0).log()
for k, (m, _) in enumerate(models):
    print(f"teacher {k} held {acc(m):.4f}", flush=True)
if teachers > 1:
    print(f"ensemble of {teachers} held {(ensemble_logits(held.images).argmax(1) == held.labels).float().mean().item():.4f}", flush=True)
print(f"teachers secs {time.time()-t0:.0f}", flush=True)
scfg = load_config(resolve_recipe("mnist-fast"), [f"seed={seed}", f"train.epochs={epochs}", "train.threads=2",
     "data.augment.rotate=10", "data.augment.translate=0.1", "data.augment.scale=0.1", "data.augment.shear=5",
     "train.label_smoothing=0.1", f"data.augment.hflip={hflip}"])
teacher = model
for r in range(rounds):
    with torch.no_grad():
        lg = ensemble_logits(pool.images) if r == 0 and teachers > 1 else logits_of(teacher, pool.images, tta=True)
    conf, pl = F.softmax(lg, 1).max(1)
    if mode == "all":
        sel = torch.ones(len(pl), dtype=torch.bool)
    else:  # class-balanced top fraction, growing
        q = min(1.0, float(mode) * (r + 1))
        sel = torch.zeros(len(pl), dtype=torch.bool)
        per = int(q * len(pl) / 10)
        for c in range(10):
            idx = (pl == c).nonzero().squeeze(1)
            top = idx[conf[idx].argsort(descending=True)[:per]]
            sel[top] = True
    pacc = (pl[sel] == pool.labels[sel]).float().mean().item()
    data = replace(pool, images=torch.cat([pool.images[sel]] + [lab.images] * 20), labels=torch.cat([pl[sel]] + [lab.labels] * 20),
                   mean=pp.mean, std=pp.std)
    torch.manual_seed(seed * 100 + r)
    student = create_model("fastcnn")
    t1 = time.time()
    out = fit(scfg, student, data, None, device=torch.device("cpu"), quiet=True)
    student = out.model if hasattr(out, "model") else out[0]
    student.eval()
    print(f"round {r} pseudo {int(sel.sum())} acc-of-pseudo {pacc:.4f} student held {acc(student):.4f} tta {acc(student, True):.4f} fit {time.time()-t1:.0f}s", flush=True)
    teacher = student
