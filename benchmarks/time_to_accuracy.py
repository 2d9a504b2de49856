"""Time to accuracy: training seconds until MNIST test accuracy first reaches a target, side by side.

In one run, seed by seed and alternating, it trains
- `baseline`: the classic tutorial CNN (conv32-pool-conv64-pool-conv64-dense64-dense10) the tutorial
  way: all 60,000 training images normalised up front as float32 tensors, a torch DataLoader with
  shuffling, batch 64, Adam at 1e-3, 5 epochs, no augmentation;
- each mnistlab recipe named by `--recipes` (default `mnist-fast`), through `mnistlab.runner`, exactly
  as `mnistlab train RECIPE seed=S` trains it (its own 55,000 / 5,000 train / validation split).

The clock covers the training steps only. Test accuracy is measured off the clock: the baseline
`--baseline-evals` times per epoch (default 4, which can only make the baseline look faster), a
recipe after every epoch (for this one run the recipe's per-epoch validation pass is pointed at the
test set; its early stopping and best-weight restore are switched off so no choice sees test labels).
"Reached" is the training seconds at the first measurement >= `--target`; "not reached" is a result.
The ratio is the baseline's 5-epoch training time over the recipe's time to the target (and over
its full training time), mean and sample standard deviation over seeds.

    MNISTLAB_DATA_DIR=... python benchmarks/time_to_accuracy.py --seeds 5
    MNISTLAB_DATA_DIR=... python benchmarks/time_to_accuracy.py --recipes mnist-best --no-baseline --seeds 5
    MNISTLAB_DATA_DIR=... python benchmarks/time_to_accuracy.py --device cuda --recipes mnist-fast "mnist-fast train.batch_size=512 optim.lr=0.04"
    python benchmarks/time_to_accuracy.py --merge a.json b.json --tag joined      # seeds run in separate processes

Writes benchmarks/results/time_to_accuracy-<device>.{json,md} (`--tag` adds to the name). Results with
hardware, versions and seeds: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.dataset import ImageData, load_dataset
from mnistlab.device import native_bf16, resolve_device, settle_bf16
from mnistlab.distributed import default_threads
from mnistlab.evaluate import predict_logits
from mnistlab.runner import RunPlan, run_training
from mnistlab.seeds import describe
from mnistlab.splits import Splits, make_splits

RESULTS = Path(__file__).parent / "results"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # the tutorial's constants


class TutorialCNN(nn.Module):
    """The Keras/PyTorch tutorial convnet, written the way the tutorials write it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.fc1 = nn.Linear(64 * 3 * 3, 64)  # 28 -> 26 -> 13 -> 11 -> 5 -> 3
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        x = torch.flatten(x, 1)  # [B, 64, 3, 3] -> [B, 576]
        return self.fc2(torch.relu(self.fc1(x)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    model.eval()
    correct = sum((model(x[i : i + 2000].to(device)).argmax(1).cpu() == y[i : i + 2000]).sum().item()
                  for i in range(0, len(x), 2000))
    model.train()
    return correct / len(x)


def run_baseline(train: ImageData, test: ImageData, seed: int, device: torch.device, epochs: int,
                 evals_per_epoch: int) -> dict[str, Any]:
    """The tutorial loop; returns the (train seconds, test accuracy) curve and the totals."""
    torch.manual_seed(seed)
    x = (train.images.float() / 255 - MNIST_MEAN) / MNIST_STD
    tx = (test.images.float() / 255 - MNIST_MEAN) / MNIST_STD
    loader = DataLoader(TensorDataset(x, train.labels), batch_size=64, shuffle=True)
    model = TutorialCNN().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    steps = len(loader)
    marks = {round(steps * (k + 1) / evals_per_epoch) - 1 for k in range(evals_per_epoch)}
    curve, clock = [], 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        for i, (xb, yb) in enumerate(loader):
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            if i in marks:
                sync(device)
                clock += time.perf_counter() - t0
                curve.append([round(clock, 3), test_accuracy(model, tx, test.labels, device), epoch + (i + 1) / steps])
                t0 = time.perf_counter()
    return {"curve": curve, "train_seconds": round(clock, 3), "final_accuracy": curve[-1][1]}


def run_recipe(recipe: str, seed: int, device: str, threads: int) -> dict[str, Any]:
    """`mnistlab train RECIPE [key=value ...] seed=S`, its per-epoch validation pass pointed at the test set."""
    name, *overrides = recipe.split()
    cfg = load_config(resolve_recipe(name), overrides + [
        f"seed={seed}", f"device={device}", f"train.threads={threads}",
        "train.restore_best=false", "train.early_stop_patience=0"])
    splits = make_splits(cfg, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix="tta-"))
    try:
        result = run_training(cfg, out=tmp / "run", quiet=True, plan=RunPlan(splits=Splits(splits.train, splits.test, splits.test)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    curve, clock = [], 0.0
    for row in result.fit.history:
        clock += row["seconds"]
        curve.append([round(clock, 3), row["val_acc"], row["epoch"]])
    return {"curve": curve, "train_seconds": result.summary["train_seconds"],
            "final_accuracy": result.summary["test_accuracy"], "epochs": result.summary["epochs"],
            "model": cfg.model.name, "tta": cfg.train.tta,
            "bf16": settle_bf16(cfg, resolve_device(device), quiet=True).train.bf16,  # as trained
            "accuracy_by_tta": evaluation_views(result.fit.model, splits, cfg.train.eval_batch_size)}


def evaluation_views(model: nn.Module, splits: Splits, batch_size: int) -> dict[str, float]:
    """Test accuracy of the final weights without TTA, with shifts, and with shifts and mirror images."""
    test, out = splits.test, {}
    for name, tta, mirror in (("none", False, False), ("shifts", True, False), ("shifts+mirror", True, True)):
        logits = predict_logits(model, test.images, mean=splits.train.mean, std=splits.train.std,
                                batch_size=batch_size, tta=tta, mirror=mirror)
        out[name] = (logits.argmax(1) == test.labels).float().mean().item()
    return out


def datasets_of(recipes: list[str]) -> str:
    """The datasets the recipes train on, for the result's title."""
    return ", ".join(sorted({load_config(resolve_recipe(r.split()[0])).data.dataset for r in recipes}))


def reached(curve: list[list[float]], target: float) -> float | None:
    """Training seconds at the first measurement at or above ``target``, or None."""
    return next((t for t, acc, _ in curve if acc >= target), None)


def stats(values: list[float]) -> dict[str, float] | None:
    """Mean, sample std, min, max and count over seeds; None for no values."""
    found = describe(values)
    return None if found is None else found.to_dict()


def environment(device: torch.device) -> dict[str, Any]:
    import mnistlab

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    env = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
           "mnistlab": mnistlab.__version__, "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
           "device": str(device), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "native_bf16": native_bf16(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        env["load_average"] = os.getloadavg()
    except OSError:
        pass
    return env


def summarize(runs: dict[str, list[dict[str, Any]]], target: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base = runs.get("baseline", [])
    base_total = statistics.fmean(r["train_seconds"] for r in base) if base else None
    for name, rs in runs.items():
        hits = [reached(r["curve"], target) for r in rs]
        s = {
            "seeds": len(rs),
            "final_accuracy": stats([r["final_accuracy"] for r in rs]),
            "train_seconds": stats([r["train_seconds"] for r in rs]),
            "seconds_to_target": stats([h for h in hits if h is not None]),
            "reached": f"{sum(h is not None for h in hits)}/{len(rs)}",
        }
        if base_total and name != "baseline":
            s["ratio_baseline_5_epochs_over_time_to_target"] = stats(
                [base_total / h for h in hits if h is not None])
            s["ratio_baseline_5_epochs_over_train_seconds"] = stats([base_total / r["train_seconds"] for r in rs])
        views = [r["accuracy_by_tta"] for r in rs if "accuracy_by_tta" in r]
        if views:
            s["accuracy_by_tta"] = {k: stats([v[k] for v in views]) for k in views[0]}
        out[name] = s
    return out


def fmt(s: dict[str, float] | None, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
    if s is None:
        return "not reached"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}{unit}"


def markdown(summary: dict[str, Any], env: dict[str, Any], target: float, dataset: str) -> str:
    where = env.get("gpu", env["cpu"])
    lines = [f"Time to {100 * target:.1f}% test accuracy ({dataset}); {where}, {env['cores']} cores, "
             f"{env['threads']} threads, torch {env['torch']}, Python {env['python']}, {env['date']}; "
             f"mean ± std over seeds.", "",
             "| run | seeds | reached | seconds to target | train seconds | final test accuracy (%) "
             "| baseline 5 epochs / time to target |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in summary.items():
        ratio = (fmt(s.get("ratio_baseline_5_epochs_over_time_to_target"), digits=1, unit="x")
                 if name != "baseline" and "baseline" in summary else "")
        lines.append(f"| {name} | {s['seeds']} | {s['reached']} | {fmt(s['seconds_to_target'], digits=1)} | "
                     f"{fmt(s['train_seconds'], digits=1)} | {fmt(s['final_accuracy'], 100)} "
                     f"(min {100 * s['final_accuracy']['min']:.2f}) | {ratio} |")
    for name, s in summary.items():
        if "accuracy_by_tta" in s:
            by = "; ".join(f"{k} {fmt(v, 100)}%" for k, v in s["accuracy_by_tta"].items())
            lines.append(f"\n{name}, test accuracy of the final weights by test-time augmentation: {by}.")
    return "\n".join(lines)


def save(runs: dict[str, list[dict[str, Any]]], env: dict[str, Any], args: argparse.Namespace,
         device: torch.device, dataset: str, final: bool, seeds: list[int]) -> None:
    """Write the JSON and Markdown after every seed (atomically), so an interrupted run keeps its seeds."""
    summary = summarize(runs, args.target)
    if "merged_from" not in env:
        env["load_average_end"] = os.getloadavg()
    md = markdown(summary, env, args.target, dataset)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"time_to_accuracy-{device.type}" + (f"-{args.tag}" if args.tag else "")
    for path, text in ((args.out / f"{stem}.json", json.dumps(
            {"environment": env, "target": args.target, "seeds": seeds,
             "summary": summary, "runs": runs}, indent=1) + "\n"), (args.out / f"{stem}.md", md + "\n")):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    if final:
        print(md)
        print(f"wrote {args.out / stem}.json and .md")


def merge(args: argparse.Namespace) -> int:
    """Combine runs of separate invocations (e.g. seeds split over processes) into one result."""
    parts = [json.loads(path.read_text()) for path in args.merge]
    runs: dict[str, list[dict[str, Any]]] = {}
    seeds: list[int] = []
    for part in parts:
        seeds += part["seeds"]
        for name, rs in part["runs"].items():
            runs.setdefault(name, []).extend(rs)
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the files repeat seeds {sorted(seeds)}; merge runs of different seeds")
    env = {**parts[0]["environment"], "merged_from": [str(p) for p in args.merge],
           "load_average_end": [part["environment"].get("load_average_end") for part in parts]}
    args.target = parts[0]["target"]
    device = torch.device(env["device"])
    dataset = datasets_of([r for r in runs if r != "baseline"])
    save(runs, env, args, device, dataset, final=True, seeds=seeds)
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["mnist-fast"], help="mnistlab recipes (names or paths), each optionally with overrides in one quoted argument: "
                        "'mnist-fast train.batch_size=256'")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--target", type=float, default=0.99)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (both the baseline and the recipes)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    p.add_argument("--baseline-epochs", type=int, default=5)
    p.add_argument("--baseline-evals", type=int, default=4, help="test evaluations per baseline epoch")
    p.add_argument("--no-baseline", action="store_true", help="only the recipes (e.g. the slow best recipes)")
    p.add_argument("--tag", default="", help="added to the result file names")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                   help="no training: combine result files of the same recipes (different seeds) into one")
    args = p.parse_args()
    if args.merge:
        return merge(args)
    if not os.environ.get("MNISTLAB_DATA_DIR"):
        print("warning: MNISTLAB_DATA_DIR is not set; datasets are looked up in the cache", file=sys.stderr)
    os.environ.setdefault("MNISTLAB_NO_TENSORBOARD", "1")
    threads = args.threads or default_threads()
    torch.set_num_threads(threads)
    device = torch.device(args.device)
    env = environment(device)
    print(json.dumps(env))
    train, test = load_dataset("mnist", "train"), load_dataset("mnist", "test")
    runs: dict[str, list[dict[str, Any]]] = {} if args.no_baseline else {"baseline": []}
    runs.update({r: [] for r in args.recipes})
    dataset = datasets_of(args.recipes)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        if not args.no_baseline:
            r = run_baseline(train, test, seed, device, args.baseline_epochs, args.baseline_evals)
            runs["baseline"].append(r)
            print(f"seed {seed} baseline: {r['train_seconds']:.1f} s, final {100 * r['final_accuracy']:.2f}%, "
                  f"{args.target:.3f} at {reached(r['curve'], args.target)}", flush=True)
        for recipe in args.recipes:
            torch.set_num_threads(threads)
            r = run_recipe(recipe, seed, args.device, threads)
            runs[recipe].append(r)
            print(f"seed {seed} {recipe}: {r['train_seconds']:.1f} s, final {100 * r['final_accuracy']:.2f}%, "
                  f"{args.target:.3f} at {reached(r['curve'], args.target)}", flush=True)
        save(runs, env, args, device, dataset, final=seed == seeds[-1], seeds=seeds[:seeds.index(seed) + 1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
