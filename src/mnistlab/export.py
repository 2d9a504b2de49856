"""Export a trained model to ONNX or TorchScript, with the preprocessing contract inside.

The exported graph takes ``pixels``: uint8 [N, 1, S, S], the preprocessed image in MNIST
polarity (0 background, 255 ink), exactly what ``mnistlab.data.images.preprocess_image``
returns, and gives ``logits`` and ``probabilities``, float32 [N, classes]. Normalisation by the
card's mean and std is part of the graph; the batch size is dynamic; the model card (class names,
preprocessing) is stored in the file (ONNX ``metadata_props`` under ``mnistlab.card``, TorchScript
extra file ``model.json``). After writing, :func:`check_parity` compares the file with eager
PyTorch on real images.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mnistlab.artifact import ModelCard, load_artifact, unwrap
from mnistlab.data.dataset import load_dataset
from mnistlab.data.imagedata import normalize
from mnistlab.errors import ConfigError, DataError, MnistlabError
from mnistlab.evaluate import predict_logits
from mnistlab.fileio import atomic_write_bytes
from mnistlab.predict import META_CARD, OnnxPredictor

INPUT_NAME = "pixels"
OUTPUT_NAMES = ("logits", "probabilities")
TORCHSCRIPT_CARD = "model.json"
# int8 covers the weight-heavy ops; softmax and normalisation stay float, so probabilities sum to 1
QUANTIZED_OPS = ["Conv", "MatMul", "Gemm"]
FORMATS = ("onnx", "torchscript")
MAX_FLOAT_DIFF = 1e-3  # largest logit difference accepted for a float export before failing
RANDOM_CHECK_IMAGES = 1000  # random-pixel images for the parity check when the model's test set is unavailable


class PixelClassifier(nn.Module):
    """uint8 pixels [N, 1, S, S] -> (logits, probabilities) float32 [N, classes].

    Normalises with the function training uses (``data.imagedata.normalize``): x/255, the per-image
    contrast stretch when ``autocontrast``, minus mean, over std. Probabilities are
    softmax(logits / temperature), the card's calibrated ones; the logits are the model's own.
    """

    def __init__(self, model: nn.Module, mean: float, std: float, autocontrast: bool = False,
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.model = unwrap(model)
        self.mean = float(mean)
        self.std = float(std)
        self.autocontrast = bool(autocontrast)
        self.temperature = float(temperature)

    @classmethod
    def from_card(cls, model: nn.Module, card: ModelCard) -> PixelClassifier:
        """The wrapper with the card's preprocessing and temperature."""
        pre = card.preprocess
        return cls(model, pre.mean, pre.std, pre.autocontrast, card.temperature)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and probabilities float32 [N, classes] for uint8 pixels [N, 1, S, S]."""
        x = normalize(pixels, self.mean, self.std, self.autocontrast)
        logits = self.model(x)
        return logits, F.softmax(logits / self.temperature, dim=1)


def _card_json(card: ModelCard) -> str:
    return json.dumps(card.to_dict(), sort_keys=True)


def _metadata(card: ModelCard) -> dict[str, str]:
    """What an exported file says about itself, as string key/value pairs."""
    size = card.preprocess.size
    return {
        META_CARD: _card_json(card),
        "classes": json.dumps(card.classes),
        "preprocess": json.dumps(asdict(card.preprocess)),
        "input": (f"{INPUT_NAME}: uint8 [N, {card.preprocess.channels}, {size}, {size}], MNIST-style preprocessed "
                  "image, 0 background, 255 ink; normalisation is inside the graph"),
        "outputs": "logits, probabilities: float32 [N, classes]",
    }


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's progress lines and its warnings about optional packages."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _example(card: ModelCard) -> torch.Tensor:
    size = card.preprocess.size
    return torch.zeros(2, card.preprocess.channels, size, size, dtype=torch.uint8)


def export_onnx(model: nn.Module, card: ModelCard, out: Path, *, opset: int | None = None) -> Path:
    """Write ``model`` as one self-contained ONNX file (uint8 pixels in, dynamic batch)."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError:
        raise MnistlabError("ONNX export needs onnx and onnxscript", hint="pip install 'mnistlab[export]'") from None
    wrapper = PixelClassifier.from_card(model, card).cpu().eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapper, (_example(card),), dynamo=True, verbose=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_shapes={"pixels": {0: batch}},
        )
    proto = program.model_proto
    _set_metadata(proto, card)
    proto.doc_string = f"mnistlab {card.arch} classifier over {len(card.classes)} classes ({card.dataset or 'custom data'})"
    atomic_write_bytes(out, proto.SerializeToString())
    return out


def _set_metadata(proto: Any, card: ModelCard) -> None:
    """Replace the ONNX model's metadata_props with the card's key/value pairs."""
    del proto.metadata_props[:]
    for key, value in _metadata(card).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def export_torchscript(model: nn.Module, card: ModelCard, out: Path) -> Path:
    """Write ``model`` as a traced TorchScript file with the card as extra file ``model.json``."""
    wrapper = PixelClassifier.from_card(model, card).cpu().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still the way to get a .pt graph
        traced = torch.jit.trace(wrapper, (_example(card),))
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        try:
            torch.jit.save(traced, tmp, _extra_files={TORCHSCRIPT_CARD: _card_json(card)})
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return out


def load_torchscript(path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript file written by :func:`export_torchscript` and its card (a dict)."""
    extra = {TORCHSCRIPT_CARD: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[TORCHSCRIPT_CARD] or "{}")


@dataclass
class Parity:
    """How an exported file compares with eager PyTorch on the same images."""

    images: int
    source: str  # where the images came from, e.g. "mnist test"
    max_logit_diff: float
    same_predictions: float  # share of images where both pick the same class
    accuracy_eager: float | None = None  # when labels are known
    accuracy_export: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The figures as a plain dict (for JSON reports)."""
        return asdict(self)


def exported_logits(path: Path, pixels: np.ndarray, fmt: str) -> np.ndarray:
    """Logits float32 [N, classes] of an exported file for uint8 pixels [N, 1, S, S]."""
    if fmt == "onnx":
        return OnnxPredictor(path).run(pixels)[0]
    module, _ = load_torchscript(path)
    with torch.inference_mode():
        parts = [module(torch.from_numpy(pixels[i:i + 1024]))[0] for i in range(0, len(pixels), 1024)]
    return torch.cat(parts).numpy()


def check_parity(model: nn.Module, card: ModelCard, path: Path, fmt: str, pixels: torch.Tensor,
                 labels: torch.Tensor | None, source: str) -> Parity:
    """Compare the exported file with eager PyTorch (the evaluation path) on uint8 pixels [N, 1, S, S]."""
    eager = predict_logits(unwrap(model), pixels, mean=card.preprocess.mean, std=card.preprocess.std,
                           autocontrast=card.preprocess.autocontrast).numpy()
    exported = exported_logits(path, pixels.numpy(), fmt)
    parity = Parity(
        images=len(pixels), source=source,
        max_logit_diff=float(np.abs(eager - exported).max()) if len(pixels) else 0.0,
        same_predictions=float((eager.argmax(1) == exported.argmax(1)).mean()) if len(pixels) else 1.0,
    )
    if labels is not None and len(labels) and int(labels.min()) >= 0:
        y = labels.numpy()
        parity.accuracy_eager = float((eager.argmax(1) == y).mean())
        parity.accuracy_export = float((exported.argmax(1) == y).mean())
    return parity


class _Calibration:
    """Feeds uint8 pixel batches to onnxruntime's static quantization calibrator."""

    def __init__(self, pixels: np.ndarray, batch: int = 128) -> None:
        self._batches = iter([{INPUT_NAME: pixels[i:i + batch]} for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch for the calibrator; None when all are used."""
        return next(self._batches, None)


def quantize_onnx(src: Path, out: Path, calibration: np.ndarray, card: ModelCard) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on uint8 pixels [M, 1, S, S]."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_Calibration, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quantized = Path(tmp) / "quantized.onnx"
        with _quiet_exporter(), contextlib.redirect_stderr(io.StringIO()):
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
            quantize_static(str(prepared), str(quantized), Reader(calibration), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=QUANTIZED_OPS)
        proto = onnx.load(str(quantized))
        _set_metadata(proto, card)
        atomic_write_bytes(out, proto.SerializeToString())
    return out


@dataclass(frozen=True)
class ExportOptions:
    """How to export: file format, int8 quantization, and the images for the parity check and calibration."""

    fmt: str = "onnx"  # "onnx" or "torchscript"
    int8: bool = False  # ONNX only: static int8, calibrated on training images
    force: bool = False  # replace an existing file
    check_images: int | None = None  # parity check on the first N test images; None: all
    calibration_images: int = 1000  # training images that calibrate int8
    data_dir: str | Path | None = None  # where to look first for the model's dataset


@dataclass
class ExportResult:
    """What was written and how it compares with eager PyTorch."""

    out: Path
    fmt: str
    int8: bool
    arch: str
    parity: Parity  # the float export
    bytes: int
    int8_parity: Parity | None = None

    def to_dict(self) -> dict[str, Any]:
        """The report as one JSON-ready object (out, format, int8, parity, int8_parity, bytes)."""
        report: dict[str, Any] = {"out": str(self.out), "format": self.fmt, "int8": self.int8,
                                  "parity": self.parity.to_dict()}
        if self.int8_parity is not None:
            report["int8_parity"] = self.int8_parity.to_dict()
        report["bytes"] = self.bytes
        return report

    @property
    def parity_ok(self) -> bool:
        """Whether the float export matches eager PyTorch within :data:`MAX_FLOAT_DIFF`."""
        return not self.parity.max_logit_diff > MAX_FLOAT_DIFF  # NaN fails too


def parity_images(card: ModelCard, *, data_dir: str | Path | None = None, limit: int | None = None,
                note: Callable[[str], None] | None = None) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """(uint8 pixels [N, 1, S, S], labels or None, description) for the parity check.

    The model's own test set (its first ``limit`` images), or seeded random pixels when that
    set is unavailable; ``note`` then hears why.
    """
    size = card.preprocess.size
    try:
        if not card.dataset:
            raise DataError("the model card names no dataset")
        data = load_dataset(card.dataset, "test", data_dir=data_dir, download=False, progress=False)
        if data.images.shape[1:] != (card.preprocess.channels, size, size):
            raise DataError(f"{card.dataset} images are {list(data.images.shape[1:])}")
        n = len(data) if limit is None else min(limit, len(data))
        labels = data.labels[:n] if data.classes == card.classes else None
        return data.images[:n], labels, f"{card.dataset} test"
    except DataError as err:
        if note is not None:
            note(f"parity checked on random pixels, not real images ({err})")
        g = torch.Generator().manual_seed(0)
        n = limit or RANDOM_CHECK_IMAGES
        shape = (n, card.preprocess.channels, size, size)
        return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8), None, "random pixels"


def calibration_images(card: ModelCard, count: int, *, data_dir: str | Path | None = None) -> np.ndarray:
    """uint8 pixels [M, 1, S, S] from the training set (a seeded random sample of ``count``) for int8 calibration."""
    if not card.dataset:
        raise DataError("--int8 needs calibration images, but the model card names no dataset")
    data = load_dataset(card.dataset, "train", data_dir=data_dir, progress=False)
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(len(data), generator=g)[:count]
    return data.images[index].numpy()


def _check_target(out: Path, options: ExportOptions) -> None:
    """Refuse what cannot be written: int8 outside ONNX, an existing file without force, a folder."""
    if options.fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{options.fmt}'", hint=f"choose one of {', '.join(FORMATS)}")
    if options.int8 and options.fmt != "onnx":
        raise ConfigError("--int8 is for --format onnx", hint="drop --int8 or export to ONNX")
    if out.exists() and not options.force:
        raise ConfigError(f"'{out}' already exists", hint="choose another --out, or add --force to replace it")
    if out.is_dir():
        raise ConfigError(f"'{out}' is a folder", hint="give a file name such as model.onnx")


def export_model(model: str | Path, out: Path, options: ExportOptions = ExportOptions(), *,
                 note: Callable[[str], None] | None = None) -> ExportResult:
    """Export a run directory or artifact to ``out`` and check the file against eager PyTorch.

    With ``options.int8`` the ONNX file is then quantized in place and checked again.
    ``note`` hears remarks such as a parity check falling back to random pixels.
    """
    out = Path(out)
    _check_target(out, options)
    net, card = load_artifact(model)
    pixels, labels, source = parity_images(card, data_dir=options.data_dir, limit=options.check_images, note=note)
    if options.fmt == "torchscript":
        export_torchscript(net, card, out)
    else:
        export_onnx(net, card, out)
    result = ExportResult(out=out, fmt=options.fmt, int8=options.int8, arch=card.arch, bytes=0,
                          parity=check_parity(net, card, out, options.fmt, pixels, labels, source))
    if options.int8:
        calibration = calibration_images(card, options.calibration_images, data_dir=options.data_dir)
        quantize_onnx(out, out, calibration, card)
        result.int8_parity = check_parity(net, card, out, "onnx", pixels, labels, source)
    result.bytes = out.stat().st_size
    return result
