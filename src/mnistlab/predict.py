"""One predictor over a trained model: a torch artifact (run directory) or an exported ``.onnx`` file.

    predictor = load_predictor("runs/train-20260101-120000")   # or "model.onnx"
    [p] = predictor.predict_images([load_image("seven.png")])
    p.label, p.probability, p.top_k

Real images go through ``mnistlab.data.images.preprocess_image``, the one preprocessing path;
already-preprocessed pixels (uint8 [N, 1, S, S], MNIST polarity) go straight to
``predict_pixels``. Normalisation by the card's mean and std (after the per-image contrast
stretch when the card says ``autocontrast``) happens inside the backend: in eager PyTorch with
the same function training uses, in the ONNX graph for an ``.onnx`` file. Probabilities are
softmax(logits / T) with the card's fitted ``temperature`` (1 on older cards); logits, and so
the predicted class, are the model's own.
The ONNX backend runs on ONNX Runtime and never imports torch.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mnistlab.data.registry import MNIST_MEAN, MNIST_STD
from mnistlab.errors import ModelError

ONNX_SUFFIXES = (".onnx", ".ort")  # ONNX Runtime reads both: the graph, or its ORT-format build
META_CARD = "mnistlab.card"  # ONNX metadata_props key holding the model card as JSON
RUN_CHUNK = 1024  # images per forward pass when predicting many


@dataclass
class Prediction:
    """One image's prediction: the best class, its probability, all probabilities and the top k."""

    label: str
    index: int
    probability: float
    probabilities: dict[str, float]
    top_k: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "index": self.index, "probability": self.probability,
                "probabilities": self.probabilities, "top_k": self.top_k}


def predictions_from_probs(probs: np.ndarray, classes: Sequence[str], top_k: int = 3) -> list[Prediction]:
    """A :class:`Prediction` per row of probabilities float [N, classes]."""
    k = max(1, min(int(top_k), len(classes)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]  # [N, k], most probable first
    out = []
    for row, best in zip(probs.tolist(), order.tolist(), strict=True):
        out.append(Prediction(
            label=classes[best[0]], index=best[0], probability=row[best[0]],
            probabilities={c: p for c, p in zip(classes, row, strict=True)},
            top_k=[{"label": classes[i], "probability": row[i]} for i in best],
        ))
    return out


class Predictor:
    """A model that maps pixels to class probabilities; subclasses supply ``_run``.

    ``card`` is the model card as a JSON-ready dict (``model.json``), ``classes`` its class
    names, ``name`` a short id (the run directory's or the file's name), ``backend`` "torch"
    or "onnxruntime".
    """

    backend = ""

    def __init__(self, card: dict[str, Any], source: Path) -> None:
        self.card = card
        self.source = source
        self.name = source.stem if is_onnx_file(source) else source.name
        self.classes: list[str] = [str(c) for c in card["classes"]]
        pre = card.get("preprocess") or {}
        self.size = int(pre.get("size", 28))
        self.mean = float(pre.get("mean", MNIST_MEAN))
        self.std = float(pre.get("std", MNIST_STD))
        self.mnist_style = bool(pre.get("mnist_style", True))
        self.invert = bool(pre.get("invert", False))
        self.autocontrast = bool(pre.get("autocontrast", False))
        self.temperature = float(card.get("temperature", 1.0))  # probabilities = softmax(logits / temperature)
        if int(pre.get("channels", 1)) != 1:
            raise ModelError(f"'{source}' expects {pre.get('channels')}-channel input",
                             hint="predict on real images supports grayscale (1-channel) models")

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) float32 [N, classes] for uint8 pixels [N, 1, S, S]."""
        raise NotImplementedError

    def run(self, pixels: np.ndarray, chunk: int = RUN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probabilities) float32 [N, classes] for uint8 pixels [N, 1, S, S], in chunks."""
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        if pixels.ndim != 4 or pixels.shape[1:] != (1, self.size, self.size):
            raise ModelError(f"expected pixels [N, 1, {self.size}, {self.size}], got {list(pixels.shape)}")
        if len(pixels) == 0:
            empty = np.zeros((0, len(self.classes)), dtype=np.float32)
            return empty, empty.copy()
        parts = [self._run(pixels[i:i + chunk]) for i in range(0, len(pixels), chunk)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def prepare(self, image: Image.Image) -> np.ndarray:
        """The model's view of a real image: uint8 [S, S] (the one preprocessing path)."""
        from mnistlab.data.images import preprocess_image

        if self.mnist_style:
            pixels = preprocess_image(image, size=self.size)
        else:  # a model trained on plain resized images: grayscale and resize only
            pixels = np.asarray(image.convert("L").resize((self.size, self.size), Image.LANCZOS), dtype=np.uint8)
        return 255 - pixels if self.invert else pixels

    def prepare_source(self, source: Any, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
        """Load (path, bytes or file object) and prepare one image; raises ImageError when unusable
        (``max_pixels``: refuse larger images before decoding; default ``images.MAX_IMAGE_PIXELS``)."""
        from mnistlab.data.images import load_image

        return self.prepare(load_image(source, name=name, max_pixels=max_pixels))

    def predict_pixels(self, pixels: np.ndarray, top_k: int = 3) -> list[Prediction]:
        """Predictions for prepared uint8 pixels [N, 1, S, S] (or [N, S, S])."""
        pixels = np.asarray(pixels, dtype=np.uint8)
        if pixels.ndim == 3:
            pixels = pixels[:, None]  # [N, S, S] -> [N, 1, S, S]
        _, probs = self.run(pixels)
        return predictions_from_probs(probs, self.classes, top_k)

    def predict_images(self, images: Iterable[Image.Image], top_k: int = 3) -> list[Prediction]:
        """Predictions for decoded images, preprocessed the MNIST way."""
        prepared = [self.prepare(img) for img in images]
        if not prepared:
            return []
        return self.predict_pixels(np.stack(prepared), top_k)


def fold_batchnorm(model: Any, size: int) -> Any:
    """``model`` (in eval mode) with each BatchNorm folded into the conv or linear layer before it
    (torch.fx's ``fuse``): the same function with fewer layers, 2-3x faster at the batch sizes a
    server sees (fastcnn, batch 32, one thread: 1.05 ms against 2.4 ms). The original comes back
    when the model cannot be traced or the folded one disagrees with it.
    """
    import torch

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        with warnings.catch_warnings():  # the module imports torch.utils.mkldnn, which warns about torch.jit
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse

            folded = fuse(model)
        probe = torch.randn(4, 1, size, size, generator=torch.Generator().manual_seed(0))  # [N, 1, S, S] like run()
        with torch.inference_mode():
            want, got = model(probe), folded(probe)
        if got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            return folded
    except Exception:  # not traceable (data-dependent control flow), or fx gone: run it as it is
        pass
    return model


class TorchPredictor(Predictor):
    """Eager PyTorch over a model artifact (run directory or model.json + model.safetensors)."""

    backend = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "cpu") -> None:
        import torch

        from mnistlab.artifact import load_artifact, resolve_artifact
        from mnistlab.data.imagedata import normalize

        directory = resolve_artifact(path)
        model, card = load_artifact(directory, device=device)
        super().__init__(card.to_dict(), directory.resolve())
        # channels_last: several times faster convolutions on CPU for these small images
        self.model = fold_batchnorm(model.eval(), self.size).to(memory_format=torch.channels_last)
        self.device = torch.device(device)
        self._normalize = normalize

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        with torch.inference_mode():
            x = self._normalize(torch.from_numpy(pixels).to(self.device), self.mean, self.std, self.autocontrast)
            logits = self.model(x.contiguous(memory_format=torch.channels_last)).float()
            probs = (logits / self.temperature).softmax(1)
        return logits.cpu().numpy(), probs.cpu().numpy()


class OnnxPredictor(Predictor):
    """ONNX Runtime over a graph written by ``mnistlab export`` (input ``pixels`` uint8)."""

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise ModelError("running an .onnx model needs onnxruntime", hint="pip install 'mnistlab[export]'") from None
        file = Path(path)
        if not file.is_file():
            raise ModelError(f"model '{path}' not found", hint="give a run directory, or an .onnx or .ort file from `mnistlab export`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting on shared cores
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for bad files
            raise ModelError(f"'{path}' is not a valid ONNX model: {str(err).splitlines()[0][:200]}",
                             hint="re-export it with `mnistlab export`") from err
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_CARD not in meta:
            raise ModelError(f"'{path}' carries no mnistlab model card in its metadata",
                             hint="export it with `mnistlab export`, which records classes and preprocessing")
        super().__init__(json.loads(meta[META_CARD]), file.resolve())
        self.output_names = ["logits", "probabilities"]

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = self.session.run(self.output_names, {"pixels": pixels})
        return logits, probs


def is_onnx_file(path: str | os.PathLike) -> bool:
    """True when ``path`` names an ONNX Runtime model (``.onnx``, or ``.ort`` from ``export --format ort``)."""
    return Path(path).suffix.lower() in ONNX_SUFFIXES


def load_predictor(path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None) -> Predictor:
    """A predictor for a run directory / artifact (eager PyTorch) or an ``.onnx``/``.ort`` file (ONNX Runtime).

    ``threads`` sets the backend's intra-op thread count (None: leave the default).
    """
    if is_onnx_file(path):
        return OnnxPredictor(path, threads=threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return TorchPredictor(path, device=device)


def find_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The files named by ``inputs``: files as given, folders searched recursively for images.

    Hidden files and folders are skipped; a name that does not exist is kept, so the caller
    reports it with the other failures.
    """
    from mnistlab.data.images import is_image_file

    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in path.rglob("*") if p.is_file() and is_image_file(p)
                     and not any(part.startswith(".") for part in p.relative_to(path).parts)]
            files.extend(sorted(found))
        else:
            files.append(path)
    return files
