"""Robustness and calibration, side by side: clean accuracy, corrupted accuracy and ECE per recipe.

In one run, seed by seed, it trains
- `tutorial`: the classic tutorial CNN (time_to_accuracy.TutorialCNN) the tutorial way: images
  normalised up front, a shuffling DataLoader, batch 64, Adam at 1e-3, 5 epochs, no augmentation;
  on the 55,000 training images of mnistlab's seeded split, so that its temperature is fitted on
  the same 5,000 validation images as the recipes';
- each mnistlab recipe named by `--recipes` (default: mnist-fast, mnist-best, mnist-robust), as
  `mnistlab train RECIPE seed=S train.threads=T` trains it (temperature fitted at the end of training).

Then every model of the seed meets the same corrupted images (`mnistlab eval --robustness`'s
battery, `--images` of the MNIST test set, seeded): the fifteen MNIST-C families at the severity
MNIST-C uses and the five other corruptions at severity 3. Reported per recipe, mean and sample
standard deviation over seeds: clean test accuracy (all 10,000), MNIST-C mean and worst, the mean
over the corruptions whose kind mnist-robust's augmentation never imitates (UNSEEN), ECE (15 bins)
on the clean test set before and after temperature scaling, and training seconds.

    MNISTLAB_DATA_DIR=... python benchmarks/robustness.py --seeds 0 1 2
    MNISTLAB_DATA_DIR=... python benchmarks/robustness.py --seeds 0 --recipes mnist-best --no-tutorial --tag best
    python benchmarks/robustness.py --merge a.json b.json --tag all      # seeds or recipes run in separate processes

Writes benchmarks/results/robustness-<device>[-tag].{json,md}. Results: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from time_to_accuracy import MNIST_MEAN, MNIST_STD, TutorialCNN, environment, stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mnistlab.artifact import load_artifact
from mnistlab.assess import Classifier, RobustnessPlan, card_classifier, robustness_table
from mnistlab.calibration import fit_temperature
from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.corruptions import CORRUPTIONS, MNIST_C
from mnistlab.evaluate import calibration_of
from mnistlab.runner import run_training
from mnistlab.splits import make_splits

RESULTS = Path(__file__).parent / "results"
# Corruptions whose kind mnist-robust's augmentation never imitates: no inverted bands, zigzags,
# mud blobs, negatives (the contrast stretch handles those) or down-sampling in training. Canny
# edges is seen since the recipe trains on outlined strokes (data.augment.outline, 2026-12-06).
UNSEEN = ("stripe", "zigzag", "spatter", "inversion", "pixelation")
DEFAULT_RECIPES = ["mnist-fast", "mnist-best", "mnist-robust"]


def batched(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The tutorial model's logits for uint8 images, normalised with the tutorial's constants."""
    model.eval()
    with torch.inference_mode():
        return torch.cat([model((images[i:i + 1000].float() / 255 - MNIST_MEAN) / MNIST_STD)
                          for i in range(0, len(images), 1000)])


def train_tutorial(seed: int, splits: Any) -> tuple[Classifier, float, float]:
    """(classifier, temperature fitted on validation, train seconds) of the tutorial CNN trained the tutorial way."""
    torch.manual_seed(seed)
    x = (splits.train.images.float() / 255 - MNIST_MEAN) / MNIST_STD
    loader = DataLoader(TensorDataset(x, splits.train.labels), batch_size=64, shuffle=True)
    model = TutorialCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for _ in range(5):
        model.train()
        for xb, yb in loader:
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    seconds = time.perf_counter() - t0
    temperature = fit_temperature(batched(model, splits.val.images), splits.val.labels)
    return (lambda images: batched(model, images)), temperature, seconds


def train_recipe(recipe: str, seed: int, threads: int, tmp: Path) -> tuple[Classifier, float, float]:
    """(classifier over the saved artifact, its temperature, train seconds) of `mnistlab train RECIPE seed=S`."""
    name, *overrides = recipe.split()
    cfg = load_config(resolve_recipe(name), overrides + [f"seed={seed}", f"train.threads={threads}", "device=cpu"])
    result = run_training(cfg, out=tmp / f"{name}-{seed}", quiet=True)
    net, card = load_artifact(result.run_dir)
    return card_classifier(net, card, cfg, fast=True), card.temperature, result.summary["train_seconds"]


def measure(models: dict[str, tuple[Classifier, float, float]], test: Any, images: int, seed: int) -> dict[str, Any]:
    """Every figure of every model of one seed (the corrupted images are made once and shared)."""
    out: dict[str, Any] = {}
    for key, (classify, temperature, seconds) in models.items():
        logits = classify(test.images)
        c = calibration_of(logits, test.labels, temperature)
        out[key] = {"clean": (logits.argmax(1) == test.labels).float().mean().item(), "ece": c.ece,
                    "ece_scaled": c.ece_scaled, "nll": c.nll, "nll_scaled": c.nll_scaled,
                    "temperature": temperature, "train_seconds": round(seconds, 1), "corruptions": {}}
    classifiers = {key: m[0] for key, m in models.items()}
    for name, spec in CORRUPTIONS.items():
        severity = spec.published or 3
        plan = RobustnessPlan(corruptions=(name,), severities=(severity,), images=images, seed=seed)
        for key, r in robustness_table(classifiers, test.images, test.labels, plan).items():
            out[key]["corruptions"][name] = r.accuracy[name][severity]
    for row in out.values():
        acc = row["corruptions"]
        mc = {n: acc[n] for n in MNIST_C}
        row.update(mnist_c_mean=sum(mc.values()) / len(mc), mnist_c_worst=min(mc.values()),
                   mnist_c_worst_name=min(mc, key=mc.get), unseen_mean=sum(acc[n] for n in UNSEEN) / len(UNSEEN),
                   all_mean=sum(acc.values()) / len(acc))
    return out


def summarize(seeds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean and spread over seeds, per recipe."""
    keys = ("clean", "mnist_c_mean", "mnist_c_worst", "unseen_mean", "all_mean", "ece", "ece_scaled", "temperature",
            "train_seconds")
    recipes = sorted({k for rows in seeds.values() for k in rows}, key=lambda k: (k != "tutorial", k))
    out: dict[str, Any] = {}
    for recipe in recipes:
        rows = [rows[recipe] for rows in seeds.values() if recipe in rows]
        out[recipe] = {"seeds": len(rows), **{k: stats([r[k] for r in rows]) for k in keys},
                       "worst_names": sorted({r["mnist_c_worst_name"] for r in rows}),
                       "corruptions": {n: stats([r["corruptions"][n] for r in rows]) for n in CORRUPTIONS}}
    return out


def _pm(s: dict[str, float] | None, scale: float = 100.0, digits: int = 2) -> str:
    if s is None:
        return "-"
    spread = f" ± {scale * s['std']:.{digits}f}" if s.get("std") is not None and s["n"] > 1 else ""
    return f"{scale * s['mean']:.{digits}f}{spread}"


def markdown(result: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md: the summary, then accuracy per corruption."""
    env, summary = result["environment"], result["summary"]
    lines = [f"Robustness on {result['images']} MNIST test images (clean: all 10,000), {env['cpu']}, "
             f"{env['threads']} thread(s), torch {env['torch']}, seeds {result['seeds']}.", "",
             "| recipe | seeds | clean % | MNIST-C mean % | MNIST-C worst % | unseen mean % | all 20 mean % "
             "| ECE % raw | ECE % after T | T | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for recipe, s in summary.items():
        lines.append(f"| {recipe} | {s['seeds']} | {_pm(s['clean'])} | {_pm(s['mnist_c_mean'])} | "
                     f"{_pm(s['mnist_c_worst'])} ({', '.join(s['worst_names'])}) | {_pm(s['unseen_mean'])} | "
                     f"{_pm(s['all_mean'])} | {_pm(s['ece'])} | {_pm(s['ece_scaled'])} | "
                     f"{_pm(s['temperature'], 1, 3)} | {_pm(s['train_seconds'], 1, 0)} |")
    lines += ["", "| corruption (severity) | " + " | ".join(summary) + " |", "|---|" + "---|" * len(summary)]
    for name, spec in CORRUPTIONS.items():
        mark = "" if spec.published else " (extra)"
        unseen = " †" if name in UNSEEN else ""
        lines.append(f"| {name} s{spec.published or 3}{mark}{unseen} | "
                     + " | ".join(_pm(s["corruptions"][name], digits=1) for s in summary.values()) + " |")
    lines += ["", "† never imitated by mnist-robust's augmentation."]
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], tag: str | None) -> Path:
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / ("robustness-cpu" + (f"-{tag}" if tag else ""))
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    return stem


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--recipes", nargs="+", default=DEFAULT_RECIPES, help="recipes, each with key=value overrides")
    ap.add_argument("--no-tutorial", action="store_true", help="leave the tutorial CNN out")
    ap.add_argument("--images", type=int, default=2000, help="test images corrupted (seeded sample)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tag", help="suffix of the result files")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="join earlier result files instead of running")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        seeds: dict[str, dict[str, Any]] = {}
        for part in parts:
            for seed, rows in part["per_seed"].items():
                seeds.setdefault(seed, {}).update(rows)
        result = {**parts[0], "per_seed": seeds, "seeds": sorted(int(s) for s in seeds), "summary": summarize(seeds)}
        print(markdown(result))
        print(f"wrote {write(result, args.tag)}.{{json,md}}")
        return 0
    per_seed: dict[str, dict[str, Any]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="robustness-"))
    try:
        for seed in args.seeds:
            splits = make_splits(load_config(resolve_recipe("mnist-fast"), [f"seed={seed}"]), progress=False)
            models = {} if args.no_tutorial else {"tutorial": train_tutorial(seed, splits)}
            for recipe in args.recipes:
                models[recipe] = train_recipe(recipe, seed, args.threads, tmp)
                print(f"seed {seed}: trained {recipe} in {models[recipe][2]:.0f} s", file=sys.stderr)
            per_seed[str(seed)] = measure(models, splits.test, args.images, seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = {"environment": environment(torch.device("cpu")), "images": args.images, "seeds": args.seeds,
              "unseen": list(UNSEEN), "per_seed": per_seed, "summary": summarize(per_seed)}
    print(markdown(result))
    print(f"wrote {write(result, args.tag)}.{{json,md}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
