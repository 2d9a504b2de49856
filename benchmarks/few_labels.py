"""Few-labels benchmark: test accuracy with 1, 10 and 100 labelled images per class, the rest unlabelled.

For each cell (dataset, labels per class K, method, seed) the labelled images are the seeded,
class-balanced K-per-class draw of `mnistlab finetune --shots K` from the training split; the
other training images are the unlabelled set (any image equal to a labelled one is dropped by
`finetune.semi.keep_apart`). Methods, all through `mnistlab.finetune.run.finetune` with the
recipe configs/finetune-few-labels.yaml, so every method trains the same steps on the same images:
- `scratch`: a freshly initialised model of the same architecture, labelled images only;
- `semi`: the same fresh model, plus the unlabelled images (`--unlabelled`; the recipe's `finetune.semi.method`, self-training);
- `pretrain`: fine-tuned from a self-supervised `mnistlab pretrain` run (`--pretrained RUN`);
- `both`: from that run, plus the unlabelled images.
A method that needs `--pretrained` is left out without one. Accuracy is on the full 10,000-image
test set; the table gives mean and sample standard deviation over seeds, and training seconds.

    OMP_NUM_THREADS=1 MNISTLAB_DATA_DIR=... python benchmarks/few_labels.py --cells mnist:10 --methods scratch,semi --seeds 1

Writes benchmarks/results/few_labels.{json,md,png}; finished cells are kept in the JSON, so an
interrupted run continues where it stopped (`--fresh` starts over). Cells run in separate
processes join with `--merge results/a.json results/b.json:scratch --name all`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from mnistlab.artifact import ModelCard, Preprocess, save_artifact
from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.registry import get_dataset_info
from mnistlab.finetune.run import finetune
from mnistlab.models import create_model
from mnistlab.seeds import seed_stats

CELLS = ["mnist:1", "mnist:10", "mnist:100", "fashion-mnist:10"]
METHODS = ["scratch", "semi", "pretrain", "both"]
RESULTS = Path(__file__).parent / "results"


def fresh_parent(folder: Path, arch: str, seed: int, dataset: str) -> Path:
    """A freshly initialised model artifact (`scratch` and `semi` start from it), normalising with ``dataset``'s
    mean and std (before 2026-12-07 always MNIST's)."""
    info = get_dataset_info(dataset)
    torch.manual_seed(seed)
    model = create_model(arch)
    save_artifact(folder, model, ModelCard(arch=model.arch_name, arch_args=dict(model.arch_args),
                                           classes=[str(i) for i in range(10)],
                                           preprocess=Preprocess(mean=info.mean, std=info.std), dataset="none"))
    return folder


def run_cell(dataset: str, shots: int, method: str, seed: int, parent: Path, extra: list[str], work: Path) -> dict:
    """One cell: the fine-tuning run's test accuracy and training seconds."""
    overrides = [f"seed={seed}", f"data.dataset={dataset}", f"finetune.parent={parent}", f"finetune.shots={shots}",
                 "train.threads=1", *extra]
    if method in ("semi", "both"):
        overrides.append(f"finetune.semi.unlabelled={dataset}")
    cfg = load_config(resolve_recipe("finetune-few-labels"), overrides)
    t0 = time.perf_counter()
    result = finetune(cfg, out=work / f"{dataset}-{shots}-{method}-{seed}", quiet=True)
    s = result.summary
    return {"test_accuracy": s["test_accuracy"], "train_seconds": s["train_seconds"],
            "wall_seconds": round(time.perf_counter() - t0, 1), "unlabelled": s.get("unlabelled"),
            "overrides": extra, "parent": str(parent)}  # per cell: the "env" block describes the last invocation only


def table(results: dict) -> str:
    """The markdown table: one row per (dataset, K), one column per method: mean ± std (seeds), seconds."""
    rows = {}
    for key, cell in results["cells"].items():
        dataset, shots, method, _ = key.split("|")
        rows.setdefault((dataset, int(shots)), {}).setdefault(method, []).append(cell)
    lines = ["| dataset | labels/class | " + " | ".join(METHODS) + " |", "|---" * (2 + len(METHODS)) + "|"]
    for (dataset, shots), by in sorted(rows.items()):
        out = []
        for m in METHODS:
            cells = by.get(m, [])
            if not cells:
                out.append("-")
                continue
            mean, std = seed_stats([100 * c["test_accuracy"] for c in cells])
            secs = sum(c["train_seconds"] for c in cells) / len(cells)
            spread = f" ± {std:.2f}" if len(cells) > 1 else ""
            out.append(f"{mean:.2f}{spread} ({len(cells)} seed{'s' * (len(cells) > 1)}, {secs:.0f} s)")
        lines.append(f"| {dataset} | {shots} | " + " | ".join(out) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    """Accuracy against labels per class (MNIST), one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for m in METHODS:
        points = {}
        for key, cell in results["cells"].items():
            dataset, shots, method, _ = key.split("|")
            if dataset == "mnist" and method == m:
                points.setdefault(int(shots), []).append(100 * cell["test_accuracy"])
        if points:
            xs = sorted(points)
            ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=m)
    ax.set(xscale="log", xlabel="labelled images per class", ylabel="MNIST test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", default=",".join(CELLS), help="dataset:K pairs, comma-separated")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--arch", default="fastcnn", help="architecture of the fresh model (scratch, semi)")
    ap.add_argument("--pretrained", type=Path, help="a `mnistlab pretrain` run (pretrain, both)")
    ap.add_argument("--name", default="few_labels", help="results file stem")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--merge", nargs="+", metavar="JSON[:METHODS]",
                    help="join earlier result files (cells run in separate processes) into --name instead of running; "
                         "FILE:scratch,semi takes only those methods' cells of FILE")
    ap.add_argument("overrides", nargs="*", help="key=value overrides for every cell (e.g. finetune.steps=1000)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    if args.merge:
        write_results(merged(args.merge), args.name)
        return
    results = {"cells": {}} if args.fresh or not path.is_file() else json.loads(path.read_text())
    results["env"] = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor(),
                      "threads": 1, "arch": args.arch, "overrides": args.overrides,
                      "pretrained": str(args.pretrained) if args.pretrained else None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for cell in args.cells.split(","):
            dataset, shots = cell.split(":")
            for method in args.methods.split(","):
                if method in ("pretrain", "both") and args.pretrained is None:
                    continue
                for seed in range(args.seeds):
                    key = f"{dataset}|{shots}|{method}|{seed}"
                    if key in results["cells"]:
                        continue
                    parent = args.pretrained if method in ("pretrain", "both") else fresh_parent(
                        work / f"fresh-{seed}", args.arch, seed, dataset)
                    results["cells"][key] = run_cell(dataset, int(shots), method, seed, parent, args.overrides, work)
                    print(key, results["cells"][key], flush=True)
                    path.write_text(json.dumps(results, indent=1))
    write_results(results, args.name, json_too=False)


def merged(sources: list[str]) -> dict:
    """The cells of several result files in one (``FILE`` or ``FILE:method,method``); the same cell in two files must agree."""
    out: dict = {"cells": {}, "env": []}
    for source in sources:
        name, _, methods = source.partition(":")
        p, keep = Path(name), set(methods.split(",")) if methods else set(METHODS)
        part = json.loads(p.read_text())
        for key, cell in part["cells"].items():
            if key.split("|")[2] not in keep:
                continue
            if key in out["cells"] and out["cells"][key] != cell:
                raise SystemExit(f"{p}: cell {key} differs from an earlier file's; merge files that ran different cells")
            out["cells"][key] = cell
        out["env"].append({"file": p.name, "methods": sorted(keep), **part.get("env", {})})
    return out


def write_results(results: dict, name: str, json_too: bool = True) -> None:
    """The table (.md) and the plot (.png) of ``results``, and with ``json_too`` the JSON; the table is printed too."""
    if json_too:
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=1))
    (RESULTS / f"{name}.md").write_text(table(results) + "\n")
    plot(results, RESULTS / f"{name}.png")
    print(table(results))


if __name__ == "__main__":
    main()
