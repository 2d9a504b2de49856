"""Helpers for the predict / export / serve tests: a tiny untrained artifact and test images."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = [str(i) for i in range(10)]


def make_artifact(directory: Path, arch: str = "cnn", seed: int = 0, dataset: str = "mnist") -> Path:
    """An untrained model saved as an artifact (no training needed for API behaviour)."""
    import torch

    from mnistlab.artifact import ModelCard, save_artifact
    from mnistlab.models import create_model

    torch.manual_seed(seed)
    model = create_model(arch)
    card = ModelCard(arch=model.arch_name, arch_args=dict(model.arch_args), classes=list(CLASSES), dataset=dataset,
                     metrics={"test_accuracy": 0.1})
    save_artifact(directory, model, card)
    return directory


def digit_image(kind: str = "7", size: int = 280, mode: str = "L", dark_on_light: bool = False) -> Image.Image:
    """A hand-drawn-looking digit (thick strokes) on a plain background, like the drawing page sends."""
    ink, paper = (0, 255) if dark_on_light else (255, 0)
    img = Image.new("L", (size, size), paper)
    d = ImageDraw.Draw(img)
    s = size / 280
    w = max(1, round(22 * s))
    if kind == "1":
        d.line([(140 * s, 40 * s), (140 * s, 240 * s)], fill=ink, width=w)
    elif kind == "0":
        d.ellipse([(80 * s, 40 * s), (200 * s, 240 * s)], outline=ink, width=w)
    else:  # a 7
        d.line([(70 * s, 50 * s), (210 * s, 50 * s), (120 * s, 240 * s)], fill=ink, width=w, joint="curve")
    return img.convert(mode)


def png_bytes(img: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_args)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (its pixel data is cut short)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    idat = zlib.compress(b"\x00" * 4096, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


_CACHE: dict[str, Path] = {}


def tiny_artifact() -> Path:
    """One tiny untrained artifact shared by the whole test session (removed at exit)."""
    if "artifact" not in _CACHE:
        import atexit
        import shutil
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="mnistlab-deploy-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _CACHE["artifact"] = make_artifact(root / "tiny-model")
    return _CACHE["artifact"]


def tiny_exported() -> tuple[Path, Path]:
    """(artifact dir, .onnx file) of the tiny model, exported once per test session (export takes seconds)."""
    artifact = tiny_artifact()
    if "onnx" not in _CACHE:
        from mnistlab.artifact import load_artifact
        from mnistlab.export import export_onnx

        model, card = load_artifact(artifact)
        _CACHE["onnx"] = export_onnx(model, card, artifact.parent / "tiny.onnx")
    return artifact, _CACHE["onnx"]
