"""Probe: one few-labels cell on Fashion-MNIST (10 labels per class), scored on 5,000 held-out TRAINING images.

The cell runs as `benchmarks/few_labels.py` runs it (configs/finetune-few-labels.yaml, one thread, a
fresh fastcnn parent normalising with Fashion-MNIST's mean and std), then the run's model reads
5,000 training images that are not among the labelled ones (their labels are read only here;
the test set is never read). Prints one JSON line. Usage:

    MNISTLAB_DATA_DIR=... python benchmarks/results/fashion_few_labels_probe.py TAG SEED scratch|semi \\
        [arch={"widths":[32,64,128]} | parent=PRETRAIN_RUN] [key=value ...]

``parent=`` fine-tunes a `mnistlab pretrain` run instead of a fresh model.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.artifact import ModelCard, Preprocess, load_artifact, save_artifact
from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.dataset import class_balanced_subset, load_dataset
from mnistlab.data.registry import get_dataset_info
from mnistlab.evaluate import predict_logits
from mnistlab.finetune.run import finetune
from mnistlab.models import create_model

DATASET, SHOTS = "fashion-mnist", 10

torch.set_num_threads(1)
tag, seed, method, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
arch = next((json.loads(e[5:]) for e in extra if e.startswith("arch=")), {})
pretrained = next((e[7:] for e in extra if e.startswith("parent=")), None)
extra = [e for e in extra if not e.startswith(("arch=", "parent="))]
train = load_dataset(DATASET, "train", progress=False)
labelled = {bytes(i.numpy().tobytes()) for i in class_balanced_subset(train, SHOTS, seed=seed).images}
others = torch.tensor([bytes(i.numpy().tobytes()) not in labelled for i in train.images])
pick = torch.randperm(int(others.sum()), generator=torch.Generator().manual_seed(123))[:5000]
held_x, held_y = train.images[others][pick], train.labels[others][pick]
with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    info = get_dataset_info(DATASET)
    torch.manual_seed(seed)
    model = create_model("fastcnn", **arch)
    save_artifact(work / "parent", model, ModelCard(
        arch=model.arch_name, arch_args=dict(model.arch_args), classes=[str(i) for i in range(10)],
        preprocess=Preprocess(mean=info.mean, std=info.std), dataset="none"))
    parent = pretrained or work / "parent"
    overrides = [f"seed={seed}", f"data.dataset={DATASET}", f"finetune.parent={parent}",
                 f"finetune.shots={SHOTS}", "train.threads=1", *extra]
    if method == "semi":
        overrides.append(f"finetune.semi.unlabelled={DATASET}")
    t0 = time.perf_counter()
    finetune(load_config(resolve_recipe("finetune-few-labels"), overrides), out=work / "run", quiet=True)
    seconds = time.perf_counter() - t0
    model, card = load_artifact(work / "run")
    logits = predict_logits(model.eval(), held_x, mean=card.preprocess.mean, std=card.preprocess.std)
    accuracy = (logits.argmax(1) == held_y).float().mean().item()
print(json.dumps({"tag": tag, "seed": seed, "method": method, "arch": arch, "parent": pretrained, "overrides": extra,
                  "held_out_train_accuracy": round(100 * accuracy, 2), "seconds": round(seconds, 1)}))
