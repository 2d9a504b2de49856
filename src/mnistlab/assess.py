"""Evaluate a trained model (a run directory or an artifact) on one split of a labelled dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, load_artifact, resolve_artifact
from mnistlab.config import Config, config_from_dict, load_yaml
from mnistlab.data.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from mnistlab.data.dataset import ImageData, load_dataset, split_train_val
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.evaluate import (
    Report,
    plot_confusion,
    plot_corruption_grid,
    plot_reliability,
    plot_top_losses,
    predict_logits,
    recipe_tta,
    report_from_logits,
)
from mnistlab.explain import explain_top_losses
from mnistlab.splits import eval_split

SPLITS = ("test", "val", "train")
CPU_BATCH = 256  # images per forward pass on a CPU
ROBUSTNESS_IMAGES = 2000  # images corrupted by default: a standard error of about 0.5 points at 95% accuracy
SMALL_SET_VAL_FRACTION = 0.1  # validation share when the training set is too small for val_size images


@dataclass
class RunEvaluation:
    """A model's report on one split: which model, which dataset and split, and the figures."""

    model: Path  # the artifact directory that was evaluated
    dataset: str  # the dataset spec
    split: str
    report: Report
    robustness: Robustness | None = None

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready object: model, dataset, split, then the report's figures (and ``robustness``)."""
        out = {"model": str(self.model), "dataset": self.dataset, "split": self.split, **self.report.to_dict()}
        if self.robustness is not None:
            out["robustness"] = self.robustness.to_dict()
        return out


def _saved_config(directory: Path) -> Config | None:
    """The config.yaml a run directory holds; None for a bare artifact."""
    path = directory / "config.yaml"
    return config_from_dict(load_yaml(path)) if path.is_file() else None


def _split_data(name: str, spec: str, split: str, cfg: Config | None, data_dir: str | None,
                progress: bool) -> ImageData:
    """The images of ``split``; "val" is the run's own seeded validation split, so it needs the run's config."""
    if split == "all":  # a plain class-folder tree: every image in it
        return load_dataset(spec, "train", data_dir=data_dir, progress=progress)
    if split != "val":
        return load_dataset(spec, split, data_dir=data_dir, progress=progress)
    if cfg is None:
        raise MnistlabError(f"'{name}' has no config.yaml, so its validation split is unknown",
                            hint="use --split test, or give a run directory")
    train = load_dataset(spec, "train", data_dir=data_dir, progress=progress)
    val_size = cfg.data.val_size
    if not (val_size < 1 or len(train) >= 4 * val_size):
        val_size = SMALL_SET_VAL_FRACTION
    _, val = split_train_val(train, val_size, seed=cfg.seed)
    return val


def _check_classes(data: ImageData, card: ModelCard, spec: str) -> None:
    if data.classes != card.classes:
        raise MnistlabError(f"dataset '{spec}' has classes {data.classes[:6]}..., the model {card.classes[:6]}...",
                            hint="evaluate on data with the model's classes, or fine-tune first")


def evaluate_run(model: str | Path, *, split: str = "test", dataset: str | None = None, data_dir: str | None = None,
                 batch_size: int | None = None, plots: Path | None = None, progress: bool = True,
                 robustness: RobustnessPlan | None = None) -> RunEvaluation:
    """Evaluate a run directory or artifact on ``split`` of ``dataset`` (default: the one it was trained on).

    The run's recipe decides test-time augmentation, threads and the default batch size; a
    bare artifact uses the default config. The report's calibration uses the card's temperature.
    With ``robustness``, accuracy under the corruption battery too. With ``plots`` given,
    confusion_matrix.png, top_losses.png, reliability.png (and robustness.png) are written there.
    """
    if split not in SPLITS:
        raise MnistlabError(f"unknown split '{split}'", hint=f"choose one of {', '.join(SPLITS)}")
    directory = resolve_artifact(model)
    net, card = load_artifact(directory)
    saved = _saved_config(Path(directory))
    cfg = saved or Config()
    spec = dataset or (cfg.data.test_dataset if split == "test" and cfg.data.test_dataset else None) or card.dataset
    split = eval_split(spec, split)
    data = _split_data(str(model), spec, split, saved, data_dir or cfg.data.data_dir, progress)
    _check_classes(data, card, spec)
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    classify = card_classifier(net, card, cfg, batch_size)
    logits = classify(data.images)
    report = report_from_logits(logits, data.labels, data.classes, card.temperature)
    robust = None
    if robustness is not None:
        classify = card_classifier(net, card, cfg, batch_size, fast=True)
        robust = robustness_table({"model": classify}, data.images, data.labels, robustness)["model"]
    if plots is not None:
        out = Path(plots)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(report, out / "confusion_matrix.png")
        plot_top_losses(data.images, logits, data.labels, data.classes, out / "top_losses.png")
        explain_top_losses(net, data.images, logits, data.labels, data.classes, out / "top_losses_explained.png",
                           mean=card.preprocess.mean, std=card.preprocess.std,
                           autocontrast=card.preprocess.autocontrast, temperature=card.temperature)
        if report.calibration is not None:
            plot_reliability(report.calibration, out / "reliability.png")
        if robust is not None:
            plot_corruption_grid(data.images, data.labels, data.classes, classify, robustness, out / "robustness.png")
    return RunEvaluation(model=Path(directory), dataset=spec, split=split, report=report, robustness=robust)


Classifier = Callable[[torch.Tensor], torch.Tensor]  # uint8 images [N, C, H, W] -> logits float [N, classes]


def card_classifier(net: torch.nn.Module, card: ModelCard, cfg: Config, batch_size: int | None = None,
                    fast: bool = False) -> Classifier:
    """The evaluation path of a loaded artifact as one function: its preprocessing, the recipe's test-time augmentation.

    ``fast``: channels-last batches of :data:`CPU_BATCH`, several times faster on a CPU than the
    default layout (``net`` is converted in place), for the many passes of the corruption battery.
    The plain path is exactly the one training's test evaluation takes.
    """
    cpu_fast = fast and next(net.parameters()).device.type == "cpu"
    if cpu_fast:
        net = net.to(memory_format=torch.channels_last)

    def classify(images: torch.Tensor) -> torch.Tensor:
        return predict_logits(net, images, mean=card.preprocess.mean, std=card.preprocess.std,
                              batch_size=batch_size or (CPU_BATCH if cpu_fast else cfg.train.eval_batch_size),
                              channels_last=cpu_fast, autocontrast=card.preprocess.autocontrast, **recipe_tta(cfg))

    return classify


@dataclass(frozen=True)
class RobustnessPlan:
    """Which corruptions at which severities, on how many images, with which seed."""

    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = SEVERITIES
    images: int | None = ROBUSTNESS_IMAGES  # a seeded sample of N images of the split (None: all)
    seed: int = 0


@dataclass
class Robustness:
    """Accuracy of one model under each corruption and severity, next to its clean accuracy."""

    clean: float
    accuracy: dict[str, dict[int, float]]  # corruption -> severity -> accuracy
    n: int
    seed: int

    def published(self) -> dict[str, float]:
        """Accuracy on each MNIST-C family at the severity MNIST-C uses (families not measured are left out)."""
        return {name: sev[CORRUPTIONS[name].published] for name, sev in self.accuracy.items()
                if CORRUPTIONS[name].published in sev}

    def summary(self) -> dict[str, Any]:
        """Means and worst cases: over the MNIST-C families at their published severity, and over everything run."""
        out: dict[str, Any] = {"clean": self.clean}
        mc = self.published()
        if mc:
            worst = min(mc, key=mc.get)
            out.update(mnist_c_mean=sum(mc.values()) / len(mc), mnist_c_worst=mc[worst], mnist_c_worst_name=worst,
                       mnist_c_families=len(mc))
        cells = [(acc, f"{name} s{s}") for name, sev in self.accuracy.items() for s, acc in sev.items()]
        if cells:
            out.update(mean=sum(a for a, _ in cells) / len(cells), worst=min(cells)[0], worst_name=min(cells)[1])
        return out

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready object: images, seed, the summary figures and every cell."""
        return {"images": self.n, "seed": self.seed, **self.summary(),
                "mnist_c": self.published(),
                "corruptions": {name: {str(s): a for s, a in sev.items()} for name, sev in self.accuracy.items()}}


def robustness_plan(corruptions: str | None = None, images: int | None = None, seed: int = 0) -> RobustnessPlan:
    """A plan from the command line's words: comma-separated corruption names (None: all); images None:
    :data:`ROBUSTNESS_IMAGES`, 0: all."""
    names = tuple(n.strip() for n in corruptions.split(",") if n.strip()) if corruptions else tuple(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(f"unknown corruption '{unknown[0] if unknown else corruptions}'",
                          hint=f"choose from {', '.join(CORRUPTIONS)}")
    if images is not None and images < 0:
        raise ConfigError(f"--robustness-images must be 0 (all) or more, got {images}", hint="give a count, or 0 for all")
    count = ROBUSTNESS_IMAGES if images is None else images or None
    return RobustnessPlan(corruptions=names, images=count, seed=seed)


def robustness_table(classifiers: dict[str, Classifier], images: torch.Tensor, labels: torch.Tensor,
                     plan: RobustnessPlan = RobustnessPlan()) -> dict[str, Robustness]:
    """Each classifier's accuracy on ``images`` clean and under every corruption and severity of ``plan``.

    The corrupted images are made once per (corruption, severity) from ``plan.seed`` and shared by
    every classifier, so two runs, and two models in one run, see the same pixels.
    """
    if plan.images is not None and plan.images < len(labels):  # a seeded sample, in the split's order
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(plan.seed))[: plan.images].sort().values
        images, labels = images[keep], labels[keep]
    labels = labels.long()

    def accuracy(classify: Classifier, x: torch.Tensor) -> float:
        return (classify(x).argmax(1) == labels).float().mean().item() if len(labels) else float("nan")

    results = {key: Robustness(accuracy(f, images), {}, len(labels), plan.seed) for key, f in classifiers.items()}
    for name in plan.corruptions:
        for severity in plan.severities:
            x = corrupt(images, name, severity, plan.seed)
            for key, f in classifiers.items():
                results[key].accuracy.setdefault(name, {})[severity] = accuracy(f, x)
    return results


def format_robustness(r: Robustness) -> str:
    """The table: one row per corruption (accuracy % per severity, their mean, and MNIST-C's severity), then the summary."""
    severities = sorted({s for sev in r.accuracy.values() for s in sev})
    head = f"{'corruption':<15}" + "".join(f"{'s' + str(s):>7}" for s in severities) + f"{'mean':>8}{'MNIST-C':>9}"
    lines = [f"robustness on {r.n} images (seed {r.seed}): accuracy %, severities 1 (mild) to 5", head,
             f"{'clean':<15}" + " " * (7 * len(severities)) + f"{100 * r.clean:8.2f}"]
    for name, sev in r.accuracy.items():
        published = CORRUPTIONS[name].published
        mark = f"{100 * sev[published]:6.2f} s{published}" if published in sev else f"{'-':>9}"
        lines.append(f"{name:<15}" + "".join(f"{100 * sev[s]:7.2f}" if s in sev else f"{'':>7}" for s in severities)
                     + f"{100 * sum(sev.values()) / len(sev):8.2f}{mark}")
    s = r.summary()
    if "mnist_c_mean" in s:
        lines.append(f"MNIST-C families at their published severity ({s['mnist_c_families']}): mean "
                     f"{100 * s['mnist_c_mean']:.2f}%, worst {100 * s['mnist_c_worst']:.2f}% ({s['mnist_c_worst_name']})")
    if "mean" in s:
        lines.append(f"every corruption and severity: mean {100 * s['mean']:.2f}%, worst {100 * s['worst']:.2f}% "
                     f"({s['worst_name']})")
    return "\n".join(lines)
