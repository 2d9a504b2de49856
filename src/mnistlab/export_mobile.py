"""Export for phones: ONNX Runtime's ORT format (float or int8) and ExecuTorch ``.pte`` (XNNPACK).

Both take the same graph as ``mnistlab export --format onnx`` (``export.PixelClassifier``):
uint8 ``pixels`` [N, 1, S, S] in, ``logits`` and ``probabilities`` float32 [N, classes] out,
normalisation inside. An ``.ort`` file is the ONNX graph after ONNX Runtime's basic
(hardware-independent) optimisations, serialised in the flatbuffer format that ONNX Runtime
Mobile loads without an ONNX parser; the model card stays in its metadata (``mnistlab.card``,
as in an ``.onnx``), and desktop ONNX Runtime opens it the same way. With int8 the ONNX graph is first quantized
statically (``export.quantize_onnx``, calibrated on training images), then converted. Every
file is checked against eager PyTorch on the model's test set, as ``export`` does.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mnistlab.artifact import ModelCard, load_artifact
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.evaluate import predict_logits
from mnistlab.export import (
    ExportOptions,
    ExportResult,
    Parity,
    PixelClassifier,
    _check_target,
    calibration_images,
    check_parity,
    export_onnx,
    parity_images,
    quantize_onnx,
)
from mnistlab.fileio import atomic_path

MOBILE_FORMATS = ("ort", "executorch")


def convert_to_ort(src: Path, out: Path) -> Path:
    """Write the ONNX file ``src`` as an ORT-format file ``out`` (basic optimisations, portable to any CPU)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    options.add_session_config_entry("session.save_model_format", "ORT")
    with atomic_path(out) as tmp:
        options.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return out


def export_ort(net: torch.nn.Module, card: ModelCard, out: Path, *, int8: bool = False,
               calibration: np.ndarray | None = None) -> Path:
    """``net`` as an ORT-format file (int8: statically quantized on ``calibration`` pixels first)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        onnx_file = export_onnx(net, card, Path(tmp) / "model.onnx")
        if int8:
            onnx_file = quantize_onnx(onnx_file, Path(tmp) / "model-int8.onnx", calibration, card)
        return convert_to_ort(onnx_file, out)


def executorch_available() -> str | None:
    """None when ExecuTorch with its XNNPACK backend imports; otherwise why not."""
    # torchao says it cannot load its CUDA kernels, torch that an enum it registers needs no registering: true, and beside the point
    logs = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import executorch.backends.xnnpack.partition.xnnpack_partitioner  # noqa: F401
            import executorch.exir  # noqa: F401
            import executorch.runtime  # noqa: F401
    except Exception as err:  # ImportError, or a native library built against another torch
        return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    finally:
        for log, level in zip(logs, levels, strict=True):
            log.setLevel(level)
    return None


def export_executorch(net: torch.nn.Module, card: ModelCard, out: Path) -> Path:
    """``net`` (with its normalisation) as an ExecuTorch program lowered to XNNPACK: uint8 [1, C, S, S] in."""
    why = executorch_available()
    if why is not None:
        raise MnistlabError(f"--format executorch needs ExecuTorch ({why})",
                            hint="pip install executorch (it must match the installed torch); see README 'Phone export'")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    wrapper = PixelClassifier.from_card(net, card).cpu().eval()
    size, channels = card.preprocess.size, card.preprocess.channels
    # One image per call, the phone's case: with a dynamic batch, ExecuTorch 1.5's memory plan
    # refused inputs of more than 15 images whatever bound was declared.
    example = (torch.zeros(1, channels, size, size, dtype=torch.uint8),)
    program = torch.export.export(wrapper, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notes from inside torch.export and ExecuTorch
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    with atomic_path(out) as tmp:
        Path(tmp).write_bytes(lowered.buffer)
    return out


def executorch_logits(path: Path, pixels: np.ndarray) -> np.ndarray:
    """Logits float32 [N, classes] of a ``.pte`` file for uint8 pixels [N, 1, S, S] (ExecuTorch runtime, one image a call)."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    batch = torch.from_numpy(np.ascontiguousarray(pixels))
    return torch.cat([method.execute([batch[i:i + 1]])[0] for i in range(len(batch))]).numpy()


def _executorch_parity(net: torch.nn.Module, card: ModelCard, path: Path, pixels: torch.Tensor,
                       labels: torch.Tensor | None, source: str) -> Parity:
    eager = predict_logits(net, pixels, mean=card.preprocess.mean, std=card.preprocess.std,
                           autocontrast=card.preprocess.autocontrast).numpy()
    exported = executorch_logits(path, pixels.numpy())
    parity = Parity(images=len(pixels), source=source, max_logit_diff=float(np.abs(eager - exported).max()),
                    same_predictions=float((eager.argmax(1) == exported.argmax(1)).mean()))
    if labels is not None:
        y = labels.numpy()
        parity.accuracy_eager = float((eager.argmax(1) == y).mean())
        parity.accuracy_export = float((exported.argmax(1) == y).mean())
    return parity


def export_mobile(model: str | Path, out: Path, options: ExportOptions, *,
                  note: Callable[[str], None] | None = None) -> ExportResult:
    """Export a run directory or artifact as ``ort`` or ``executorch`` and check it against eager PyTorch.

    ORT with ``options.int8``: the float file is written and checked, then replaced by the int8
    one, checked again (``int8_parity``), like ``export --format onnx --int8``.
    """
    out = Path(out)
    if options.fmt not in MOBILE_FORMATS:
        raise ConfigError(f"unknown phone export format '{options.fmt}'", hint=f"choose one of {', '.join(MOBILE_FORMATS)}")
    if options.int8 and options.fmt != "ort":
        raise ConfigError("--int8 is for --format onnx or ort", hint="drop --int8, or export to ort")
    _check_target(out, replace(options, fmt="onnx", int8=False))  # an existing file without --force, a folder
    if options.fmt == "executorch" and (why := executorch_available()) is not None:
        raise MnistlabError(f"--format executorch needs ExecuTorch ({why})",
                            hint="pip install executorch (it must match the installed torch); see README 'Phone export'")
    out.parent.mkdir(parents=True, exist_ok=True)
    net, card = load_artifact(model)
    pixels, labels, source = parity_images(card, data_dir=options.data_dir, limit=options.check_images, note=note)
    if options.fmt == "executorch":
        export_executorch(net, card, out)
        parity = _executorch_parity(net, card, out, pixels, labels, source)
        return ExportResult(out=out, fmt="executorch", int8=False, arch=card.arch, parity=parity, bytes=out.stat().st_size)
    export_ort(net, card, out)
    result = ExportResult(out=out, fmt="ort", int8=options.int8, arch=card.arch, bytes=0,
                          parity=check_parity(net, card, out, "onnx", pixels, labels, source))
    if options.int8:
        calibration = calibration_images(card, options.calibration_images, data_dir=options.data_dir)
        export_ort(net, card, out, int8=True, calibration=calibration)
        result.int8_parity = check_parity(net, card, out, "onnx", pixels, labels, source)
    result.bytes = out.stat().st_size
    return result
