"""Typed run configuration: a YAML recipe plus ``key=value`` overrides.

A recipe is a nested mapping that mirrors the dataclasses below. Overrides use
dotted keys (``optim.lr=0.01``, ``model.args.width=64``); values are parsed as
YAML scalars and checked against the field's type. An unknown key or a wrong
type is a :class:`ConfigError` that names the valid keys.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from mnistlab.errors import ConfigError
from mnistlab.fileio import atomic_write_text


@dataclass
class AugmentConfig:
    """Batched random augmentation of training batches (``data.augment``); every field 0 means none."""

    rotate: float = 0.0  # max degrees, uniform in [-rotate, rotate]
    translate: float = 0.0  # max shift as a fraction of the image size, per axis
    scale: float = 0.0  # max relative size change: 0.1 -> uniform in [0.9, 1.1]
    shear: float = 0.0  # max degrees of horizontal shear
    elastic: float = 0.0  # elastic distortion strength alpha, pixels (Simard et al. use 34); 0 = off
    elastic_sigma: float = 4.0  # smoothness of the elastic field, pixels (Gaussian sigma)
    erase: float = 0.0  # probability of erasing one random rectangle per image
    hflip: float = 0.0  # probability of a left-right mirror per image (clothes, not digits)
    # What scans and photos do to a page (data.augment.scan_*); each applies to an image with
    # probability scan_prob, at a strength drawn uniformly up to its value.
    noise: float = 0.0  # max std of additive Gaussian pixel noise, in [0, 1] pixel units
    speckle: float = 0.0  # max fraction of pixels turned black or white (dust, sensor dropouts)
    blur: float = 0.0  # max Gaussian blur sigma, pixels, drawn separately per axis (focus, shake)
    paper: float = 0.0  # max grey level of the paper (background), in [0, 1]
    fade: float = 0.0  # max loss of ink contrast: ink ends between 1 and 1 - fade above the paper
    shading: float = 0.0  # max amplitude of a smooth uneven background (shadows, stains), in [0, 1]
    lines: float = 0.0  # probability of a solid ruling line across the image
    outline: float = 0.0  # probability that the strokes become their outlines (hollow ink: pens that pool at the edges, edge-traced scans)
    scan_prob: float = 0.5  # probability that each of the effects above is applied to an image
    scan_images: float = 1.0  # fraction of images the effects above (outline included) may touch; the rest keep a clean page

    @property
    def enabled(self) -> bool:
        """True when any augmentation is switched on."""
        return self.scan or any(v > 0 for v in (self.rotate, self.translate, self.scale, self.shear, self.elastic,
                                                self.erase, self.hflip))

    @property
    def scan(self) -> bool:
        """True when any scan-like effect (noise, speckle, blur, paper, fade, shading, lines, outline) is switched on."""
        effects = (self.scan_prob > 0 and any(v > 0 for v in (self.noise, self.speckle, self.blur, self.paper, self.fade,
                                                              self.shading, self.lines))) or self.outline > 0
        return effects and self.scan_images > 0

    @property
    def geometric(self) -> bool:
        """True when the images are resampled (affine or elastic)."""
        return any(v > 0 for v in (self.rotate, self.translate, self.scale, self.shear, self.elastic))


@dataclass
class DataConfig:
    dataset: str = "mnist"  # spec: registered name, folder:PATH or csv:PATH
    data_dir: str | None = None  # where to look first for registered datasets
    test_dataset: str | None = None  # defaults to the test split of `dataset`
    val_size: float = 5000  # images (>= 1) or a fraction (< 1) carved from train
    train_limit: int | None = None  # use only the first N training images (after the split)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    autocontrast: bool = False  # stretch each image to [0, 1] and make it ink-on-black before normalising


@dataclass
class ModelConfig:
    name: str = "cnn"
    args: dict[str, Any] = field(default_factory=dict)  # knobs of the registered builder


@dataclass
class OptimConfig:
    name: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3  # peak learning rate
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # adam/adamw
    weight_decay: float = 0.0
    fused: bool = True  # adam/adamw: one fused kernel per update where the device has one (same arithmetic, ~4x less optimizer time on CPU)


@dataclass
class ScheduleConfig:
    name: str = "cosine"  # constant | step | cosine | onecycle | plateau
    warmup_epochs: float = 0.0  # linear warmup from 0, in epochs (fractions allowed)
    min_lr: float = 0.0  # floor of cosine / onecycle, as a fraction of optim.lr
    step_epochs: int = 1  # step: decay every N epochs
    gamma: float = 0.1  # step / plateau: multiply the lr by this
    patience: int = 2  # plateau: epochs without val-loss improvement before decay


@dataclass
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128  # global batch, across all processes
    eval_batch_size: int = 2048
    label_smoothing: float = 0.0
    class_weights: list[float] | None = None  # one weight per class for the loss
    grad_clip: float | None = None  # max global grad norm
    early_stop_metric: str = "val_acc"  # val_acc | val_loss
    early_stop_patience: int = 0  # epochs without improvement; 0 = off
    restore_best: bool = True  # keep the best-validation weights at the end
    ema: float = 0.0  # decay of an exponential moving average of the weights; 0 = off
    bf16: bool = False  # bfloat16 autocast for the forward pass, where the device has it natively (else float32)
    compile: bool = False  # torch.compile the model
    channels_last: bool = False
    threads: int | None = None  # torch intra-op threads; None = number of cores
    freeze_out: list[float] = field(default_factory=list)  # block i (from the input) stops training after this fraction of the steps; [] = never
    tta: bool = False  # test-time augmentation at evaluation: small shifts, and mirror images if augment.hflip > 0
    sync_batchnorm: bool = True  # under data-parallel training
    checkpoint_every_steps: int = 0  # also checkpoint within an epoch every N optimizer steps; 0 = only at epoch ends
    checkpoint_every_seconds: float = 60.0  # ... and once this many seconds passed since the last one; 0 = off


def _small_set_augment() -> AugmentConfig:
    return AugmentConfig(rotate=10.0, translate=0.1, scale=0.1)


@dataclass
class SmallDataConfig:
    """What `mnistlab finetune` uses instead of the recipe's settings when the training set is small."""

    below: int = 2000  # training sets with fewer images than this count as small; 0 = never
    steps: int = 300  # optimizer steps in all; epochs = ceil(steps / steps per epoch)
    batch_size: int = 32  # images per step
    val_size: float = 0.2  # fraction held out for early stopping, if every class gives >= min_val_per_class
    min_val_per_class: int = 20  # images; smaller held-out sets pick worse weights than training on them does
    patience: float = 0.3  # early stopping after this fraction of the epochs without improvement; 0 = off
    early_stop_metric: str = "val_loss"  # what early stopping and best-weights restore watch: val_loss | val_acc
    augment: AugmentConfig = field(default_factory=_small_set_augment)  # used when data.augment is all zero


def _strong_augment() -> AugmentConfig:
    return AugmentConfig(rotate=30.0, translate=0.2, scale=0.25, shear=20.0, erase=0.5)


def _round_augment() -> AugmentConfig:
    return AugmentConfig(rotate=10.0, translate=0.1, scale=0.1, shear=5.0)


@dataclass
class SelfTrainingConfig:
    """``finetune.semi.method: self-training``: rounds that train the parent afresh on pseudo-labels.

    Round 0 fine-tunes on the labelled images alone (the run's own settings); each later round
    labels every unlabelled image with the last round's model (test-time augmentation) and
    trains the parent's starting weights again on those labels plus the labelled images,
    with the one-cycle settings below.
    """

    rounds: int = 5  # pseudo-labelling rounds after round 0
    epochs: int = 5  # epochs of each round over the pseudo-labelled set
    batch_size: int = 128
    lr: float = 0.02  # one-cycle peak (adamw)
    weight_decay: float = 0.0001
    label_smoothing: float = 0.1  # pseudo-labels are partly wrong: softened targets
    repeat: int = 20  # the labelled images appear this many times in each round's set
    align: bool = True  # pseudo-labels' class shares made to match the labelled set's (no class takes others over)
    bf16: bool = True  # the rounds and their labelling: bfloat16 autocast (where the device has it natively)
    channels_last: bool = True  # ... and channels_last (the default recipe trains 1.4x faster so in float32 on AVX2)
    augment: AugmentConfig = field(default_factory=_round_augment)


@dataclass
class SemiConfig:
    """Semi-supervised fine-tuning (``finetune.semi``; --unlabelled sets ``unlabelled``).

    ``method: fixmatch``: each step adds ``ratio`` unlabelled images per labelled one; a weakly
    augmented view whose top probability reaches ``threshold`` gives a pseudo-label that the
    strongly augmented view learns. ``method: self-training``: see :class:`SelfTrainingConfig`.
    """

    unlabelled: str | None = None  # dataset spec whose training images (labels never read) train too; None = off
    method: str = "fixmatch"  # fixmatch | self-training
    threshold: float = 0.95  # confidence a pseudo-label needs (softmax probability of the weak view)
    ratio: int = 7  # unlabelled images per labelled image in a step (FixMatch's mu)
    weight: float = 1.0  # weight of the unlabelled loss beside the labelled one (FixMatch's lambda_u)
    strong: AugmentConfig = field(default_factory=_strong_augment)  # the strong view; the weak one is data.augment
    align: bool = False  # distribution alignment of the pseudo-labels toward uniform classes (ReMixMatch)
    self_training: SelfTrainingConfig = field(default_factory=SelfTrainingConfig)  # method: self-training


@dataclass
class FinetuneConfig:
    """How `mnistlab finetune` adapts a pretrained model (the CLI flags --strategy/--shots/--merge set these)."""

    parent: str | None = None  # the run directory or artifact fine-tuned from (set by the CLI)
    strategy: str = "full"  # full | head | partial | lora
    shots: int | None = None  # train on K images per class (class-balanced, seeded); None = all
    reset_head: bool = False  # re-initialise the head even when the classes match the parent's
    layer_lr_decay: float = 1.0  # full/partial: lr factor per block going down from the head (0.5 halves it)
    partial_blocks: int = 1  # partial: how many of the last body blocks train (the head always trains)
    gradual_unfreeze: int = 0  # partial: epochs between unfreezing one more block, head first; 0 = all at once
    lora_rank: int = 4  # rank r of the adapters B @ A
    lora_alpha: float = 8.0  # adapter output scaled by alpha / r
    lora_targets: list[str] = field(default_factory=lambda: ["linear", "conv"])  # layer kinds or name globs
    merge: bool = False  # lora: fold the adapters into plain weights in the saved artifact
    steps: int | None = None  # optimizer steps in all, overriding train.epochs; None = the recipe's epochs
    small: SmallDataConfig = field(default_factory=SmallDataConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)  # --unlabelled: semi-supervised (FixMatch or self-training)


def _pretrain_augment() -> AugmentConfig:
    return AugmentConfig(rotate=20.0, translate=0.15, scale=0.25, shear=15.0, erase=0.3)


@dataclass
class PretrainConfig:
    """Self-supervised pretraining (`mnistlab pretrain`): the dataset's labels are never read while it trains."""

    objective: str = "simclr"  # simclr: two augmented views of each image, NT-Xent contrastive loss
    temperature: float = 0.2  # NT-Xent softmax temperature
    projection_dim: int = 64  # width of the projection head's output (dropped after pretraining)
    projection_hidden: int = 256  # width of its hidden layer
    augment: AugmentConfig = field(default_factory=_pretrain_augment)  # how each view is drawn
    probe_images: int = 10000  # labelled training images the linear probe fits on afterwards; 0 = no probe
    probe_steps: int = 300  # full-batch steps of the linear probe (off the clock)


@dataclass
class ReadConfig:
    """Training the sequence reader (``task: read``, ``read_train``): a CNN with a CTC head on synthetic
    strings of the dataset's training digits (``data.strings``), drawn afresh each epoch."""

    height: int = 32  # pixels the line image of a string is scaled to (the crnn takes 32)
    max_length: int = 10  # characters in a training string: 1 to this
    steps_per_epoch: int = 500  # optimizer steps (batches of train.batch_size strings) per epoch
    val_strings: int = 300  # strings of validation digits (lengths 3-10, every overlap level) checked each epoch
    test_strings: int = 400  # 5-digit strings of test digits (every overlap level) in summary.json
    workers: int = 1  # processes drawing training strings beside the training one; 0 = in the training process


@dataclass
class Config:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # read by `mnistlab finetune`
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # read by `mnistlab pretrain`
    task: str = "classify"  # classify: one label per image | read: strings of characters (read_train, CTC)
    read: ReadConfig = field(default_factory=ReadConfig)  # read by `mnistlab train` when task is read


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _valid_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cls):
        hint = _hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += _valid_keys(hint, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _check(value: Any, hint: Any, key: str) -> Any:
    """Return ``value`` converted to ``hint``, or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if hint is Any:
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}", hint=f"write e.g. {key}=[1,2]")
        (item,) = typing.get_args(hint) or (Any,)
        return [_check(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(hint):
        if isinstance(value, dict):
            return _from_dict(hint, value, key + ".")
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key} must be {name}, got {value!r}", hint=f"fix the value of {key}")


def _from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        valid = ", ".join(_valid_keys(cls, prefix))
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'", hint=f"valid keys: {valid}")
    kwargs = {k: _check(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a checked :class:`Config` from a (possibly partial) nested mapping."""
    if not isinstance(data, dict):
        raise ConfigError("a recipe must be a YAML mapping of sections (data, model, optim, ...)")
    cfg = _from_dict(Config, data)
    validate_config(cfg)
    return cfg


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: [low, high], either end open."""

    low: float = 0.0
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        below = v < self.high if self.high_open else v <= self.high
        return math.isfinite(v) and above and below

    def describe(self) -> str:
        if self.high == math.inf:
            if self.low == 0:
                return "positive" if self.low_open else "zero or more"
            return f"{'more than' if self.low_open else 'at least'} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE, PROBABILITY, FRACTION = Range(low_open=True), Range(0, 1), Range(0, 1, high_open=True)
# Settings whose range is not "zero or more", by class and field (a class appears in several sections:
# data.augment and finetune.small.augment are both AugmentConfig). Every other int or float field,
# including fields added later, must be finite and zero or more.
RANGES: dict[str, Range] = {
    "Config.seed": Range(0, 2**32 - 1),
    "AugmentConfig.rotate": Range(0, 180), "AugmentConfig.translate": PROBABILITY,
    "AugmentConfig.scale": FRACTION, "AugmentConfig.shear": Range(0, 90, high_open=True),
    "AugmentConfig.elastic_sigma": POSITIVE, "AugmentConfig.erase": PROBABILITY, "AugmentConfig.hflip": PROBABILITY,
    "AugmentConfig.speckle": PROBABILITY, "AugmentConfig.paper": PROBABILITY, "AugmentConfig.fade": PROBABILITY,
    "AugmentConfig.shading": PROBABILITY, "AugmentConfig.lines": PROBABILITY, "AugmentConfig.outline": PROBABILITY,
    "AugmentConfig.scan_prob": PROBABILITY,
    "AugmentConfig.scan_images": PROBABILITY,
    "DataConfig.train_limit": Range(1),
    "OptimConfig.lr": POSITIVE, "OptimConfig.momentum": FRACTION, "OptimConfig.betas": FRACTION,
    "ScheduleConfig.min_lr": PROBABILITY, "ScheduleConfig.step_epochs": Range(1), "ScheduleConfig.gamma": POSITIVE,
    "TrainConfig.epochs": Range(1), "TrainConfig.batch_size": Range(1), "TrainConfig.eval_batch_size": Range(1),
    "TrainConfig.label_smoothing": FRACTION, "TrainConfig.grad_clip": POSITIVE, "TrainConfig.ema": FRACTION,
    "TrainConfig.threads": Range(1), "TrainConfig.freeze_out": FRACTION,
    "SmallDataConfig.steps": Range(1), "SmallDataConfig.batch_size": Range(1), "SmallDataConfig.val_size": FRACTION,
    "SmallDataConfig.patience": PROBABILITY,
    "FinetuneConfig.shots": Range(1), "FinetuneConfig.layer_lr_decay": POSITIVE, "FinetuneConfig.lora_rank": Range(1),
    "FinetuneConfig.lora_alpha": POSITIVE, "FinetuneConfig.steps": Range(1),
    "SemiConfig.threshold": PROBABILITY, "SemiConfig.ratio": Range(1),
    "SelfTrainingConfig.rounds": Range(1), "SelfTrainingConfig.epochs": Range(1),
    "SelfTrainingConfig.batch_size": Range(1), "SelfTrainingConfig.lr": POSITIVE,
    "SelfTrainingConfig.label_smoothing": FRACTION, "SelfTrainingConfig.repeat": Range(1),
    "PretrainConfig.temperature": POSITIVE, "PretrainConfig.projection_dim": Range(1),
    "PretrainConfig.projection_hidden": Range(1), "PretrainConfig.probe_steps": Range(1),
    "ReadConfig.height": Range(8), "ReadConfig.max_length": Range(1, 40), "ReadConfig.steps_per_epoch": Range(1),
}


def validate_config(cfg: Any, prefix: str = "") -> None:
    """Check every numeric setting against its range (:data:`RANGES`); a ConfigError names the first one out."""
    for f in dataclasses.fields(cfg):
        key, value = prefix + f.name, getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate_config(value, key + ".")
            continue
        allowed = RANGES.get(f"{type(cfg).__name__}.{f.name}", Range())
        for i, v in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v not in allowed:
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise ConfigError(f"{where} must be {allowed.describe()}, got {v!r}", hint=f"fix the value of {where}")
    if isinstance(cfg, OptimConfig) and len(cfg.betas) != 2:
        raise ConfigError(f"{prefix}betas must be two numbers, got {cfg.betas!r}", hint=f"write e.g. {prefix}betas=[0.9,0.999]")
    if isinstance(cfg, DataConfig) and cfg.val_size >= 1 and not float(cfg.val_size).is_integer():
        raise ConfigError(f"{prefix}val_size must be a whole number of images (>= 1) or a fraction below 1, "
                          f"got {cfg.val_size!r}", hint=f"fix the value of {prefix}val_size")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """The fully resolved configuration as plain data (what `config.yaml` holds)."""
    return dataclasses.asdict(cfg)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not key=value", hint="write e.g. optim.lr=0.01")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` overrides into a nested mapping (checked later).

    ``model.name=OTHER`` drops the recipe's ``model.args``: they are knobs of the model the recipe
    names (``mnistlab train model.name=resnet`` on the default recipe must not hand fastcnn's
    knobs to a ResNet). ``model.args.*`` given as overrides are kept.
    """
    valid = ", ".join(_valid_keys(Config))
    given_args: set[str] = set()
    for item in overrides:
        path, value = _parse_override(item)
        if path[:2] == ["model", "args"]:
            given_args.update([path[2]] if len(path) > 2 else (value if isinstance(value, dict) else {}))
        if path == ["model", "name"] and isinstance(data.get("model"), dict) and data["model"].get("name") != value:
            args = data["model"].get("args")
            if isinstance(args, dict):
                data["model"]["args"] = {k: v for k, v in args.items() if k in given_args}
        node: dict[str, Any] = data
        cls: Any = Config
        for i, part in enumerate(path[:-1]):
            hint = _hints(cls).get(part) if cls is not None else None
            if cls is not None and hint is None:
                raise ConfigError(f"unknown config key '{'.'.join(path[: i + 1])}'", hint=f"valid keys: {valid}")
            cls = hint if dataclasses.is_dataclass(hint) else None
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{'.'.join(path[: i + 1])}' is not a section", hint=f"valid keys: {valid}")
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe '{path}' not found", hint="give a path to a YAML file, e.g. configs/mnist-fast.yaml")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe '{path}' is not valid YAML: {err}".splitlines()[0]) from err
    if not isinstance(data, dict):
        raise ConfigError(f"recipe '{path}' must be a mapping of sections (data, model, optim, ...)")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (or the defaults when ``path`` is None) and apply overrides."""
    data = load_yaml(path) if path is not None else {}
    return config_from_dict(apply_overrides(data, overrides or []))


def save_config(cfg: Config, path: Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


DRY_RUN_MARKER = "dry-run"  # a file in a run directory started with --dry-run


def save_run_config(cfg: Config, run_dir: Path, *, dry_run: bool = False) -> None:
    """A new run directory's config.yaml; a ``--dry-run`` also leaves a marker, so that
    ``--resume`` continues it on the same small slice instead of at full size."""
    save_config(cfg, Path(run_dir) / "config.yaml")
    if dry_run:
        atomic_write_text(Path(run_dir) / DRY_RUN_MARKER, "started with --dry-run: --resume continues it on the same small slice\n")


def started_dry(run_dir: str | Path) -> bool:
    """True when the run in ``run_dir`` was started with ``--dry-run``."""
    return (Path(run_dir) / DRY_RUN_MARKER).is_file()


RECIPES_DIR = Path(__file__).parent / "configs"
DEFAULT_RECIPE = "mnist-fast"


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with mnistlab (``configs/*.yaml``)."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(name_or_path: str | None) -> Path:
    """A recipe file from a path, or from a shipped recipe's name (``mnist-fast``)."""
    if name_or_path is None:
        name_or_path = DEFAULT_RECIPE
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = RECIPES_DIR / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if shipped.is_file() and (len(p.parts) == 1 or p.parent.name == "configs"):
        return shipped
    raise ConfigError(
        f"recipe '{name_or_path}' not found",
        hint=f"give a YAML path or a shipped recipe: {', '.join(shipped_recipes())}",
    )
