"""Evaluate a trained model (a run directory or an artifact) on one split of a labelled dataset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mnistlab.artifact import ModelCard, load_artifact, resolve_artifact
from mnistlab.config import Config, config_from_dict, load_yaml
from mnistlab.data.dataset import ImageData, load_dataset, split_train_val
from mnistlab.errors import MnistlabError
from mnistlab.evaluate import (
    Report,
    plot_confusion,
    plot_top_losses,
    predict_logits,
    recipe_tta,
    report_from_logits,
)
from mnistlab.splits import eval_split

SPLITS = ("test", "val", "train")
SMALL_SET_VAL_FRACTION = 0.1  # validation share when the training set is too small for val_size images


@dataclass
class RunEvaluation:
    """A model's report on one split: which model, which dataset and split, and the figures."""

    model: Path  # the artifact directory that was evaluated
    dataset: str  # the dataset spec
    split: str
    report: Report

    def to_dict(self) -> dict[str, Any]:
        """One JSON-ready object: model, dataset, split, then the report's figures."""
        return {"model": str(self.model), "dataset": self.dataset, "split": self.split, **self.report.to_dict()}


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
                 batch_size: int | None = None, plots: Path | None = None, progress: bool = True) -> RunEvaluation:
    """Evaluate a run directory or artifact on ``split`` of ``dataset`` (default: the one it was trained on).

    The run's recipe decides test-time augmentation, threads and the default batch size; a
    bare artifact uses the default config. With ``plots`` given, confusion_matrix.png and
    top_losses.png are written into that folder.
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
    logits = predict_logits(net, data.images, mean=card.preprocess.mean, std=card.preprocess.std,
                            batch_size=batch_size or cfg.train.eval_batch_size, **recipe_tta(cfg))
    report = report_from_logits(logits, data.labels, data.classes)
    if plots is not None:
        out = Path(plots)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(report, out / "confusion_matrix.png")
        plot_top_losses(data.images, logits, data.labels, data.classes, out / "top_losses.png")
    return RunEvaluation(model=Path(directory), dataset=spec, split=split, report=report)
