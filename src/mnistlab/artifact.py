"""The model artifact: ``model.safetensors`` (weights) + ``model.json`` (everything else).

Loading needs no training code and no pickle: the JSON names the registered
architecture and its arguments, the class names and the input preprocessing.
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mnistlab.data.registry import MNIST_MEAN, MNIST_STD
from mnistlab.errors import ModelError
from mnistlab.fileio import atomic_path, atomic_write_text

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT_VERSION = 1


@dataclass
class Preprocess:
    """How an input becomes the model's tensor (the one preprocessing path)."""

    size: int = 28  # side of the square input, pixels
    channels: int = 1
    invert: bool = False  # dataset images are stored dark-on-light (never for this family)
    mean: float = MNIST_MEAN  # of pixel/255
    std: float = MNIST_STD
    mnist_style: bool = True  # real images: crop to ink, longer side 20 px, centre of mass
    autocontrast: bool = False  # each image stretched to [0, 1] and made ink-on-black before mean/std (older cards: off)


@dataclass
class ModelCard:
    """What ``model.json`` holds."""

    arch: str
    arch_args: dict[str, Any]
    classes: list[str]
    preprocess: Preprocess = field(default_factory=Preprocess)
    dataset: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: dict[str, Any] | None = None  # the run/artifact this was fine-tuned from
    adapters: dict[str, Any] | None = None  # e.g. LoRA settings, when the weights hold adapters
    versions: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    temperature: float = 1.0  # probabilities are softmax(logits / temperature), fitted on validation (older cards: 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelCard:
        data = dict(data)
        data["preprocess"] = Preprocess(**data.get("preprocess", {}))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def library_versions() -> dict[str, str]:
    import numpy

    import mnistlab

    return {
        "mnistlab": mnistlab.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP / torch.compile wrappers (so no `_orig_mod.` keys leak)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_artifact(directory: Path, model: torch.nn.Module, card: ModelCard) -> None:
    """Write weights and card into ``directory`` (atomically, file by file)."""
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()}
    if not card.versions:
        card.versions = library_versions()
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "arch": card.arch})
    atomic_write_text(directory / META, json.dumps(card.to_dict(), indent=2) + "\n")


def resolve_artifact(path: str | Path) -> Path:
    """The directory holding ``model.json`` for a run directory or artifact path."""
    p = Path(path)
    if p.is_file() and p.name in (META, WEIGHTS):
        p = p.parent
    if not p.exists():
        raise ModelError(f"model '{path}' not found", hint="give a run directory or a folder with model.json")
    if not (p / META).is_file() or not (p / WEIGHTS).is_file():
        raise ModelError(
            f"'{path}' holds no model artifact ({META} + {WEIGHTS})",
            hint="give a finished run directory; an interrupted run can be finished with `mnistlab train --resume`",
        )
    return p


def read_card(path: str | Path) -> ModelCard:
    directory = resolve_artifact(path)
    try:
        return ModelCard.from_dict(json.loads((directory / META).read_text()))
    except (json.JSONDecodeError, TypeError) as err:
        raise ModelError(f"'{directory / META}' is corrupt: {err}") from err


def build_model(card: ModelCard) -> torch.nn.Module:
    """An untrained model with the card's architecture (adapters included)."""
    from mnistlab.models import create_model
    from mnistlab.models.lora import apply_lora_from_card

    model = create_model(card.arch, **card.arch_args)
    if card.adapters:  # fine-tuning added adapters
        apply_lora_from_card(model, card.adapters)
    return model


def load_artifact(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelCard]:
    """Rebuild the model from an artifact or run directory, in eval mode."""
    directory = resolve_artifact(path)
    card = read_card(directory)
    model = build_model(card)
    try:
        state = load_file(str(directory / WEIGHTS), device=str(device))
    except Exception as err:  # safetensors raises several types for corrupt files
        raise ModelError(f"'{directory / WEIGHTS}' cannot be read: {err}", hint="the file is corrupt; re-export it") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(
            f"weights in '{directory}' do not match architecture '{card.arch}' "
            f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})"
        )
    return model.to(device).eval(), card
