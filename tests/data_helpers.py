"""Helpers for the data-layer tests: tiny registered datasets, a local HTTP server, drawn digits."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mnistlab.data import registry
from mnistlab.data.idx import encode_idx, write_idx
from mnistlab.data.registry import DATASETS, SPLIT_KEYS, DatasetInfo, FileInfo

TINY_TRAIN = 30
TINY_TEST = 12
NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def tiny_arrays(seed: int = 0, n_train: int = TINY_TRAIN, n_test: int = TINY_TEST,
                classes: int = 3) -> dict[str, np.ndarray]:
    """Random uint8 images and balanced labels for the four dataset files."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        out[f"{split}_images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        out[f"{split}_labels"] = (np.arange(n) % classes).astype(np.uint8)
    return out


def md5_of(array: np.ndarray) -> str:
    """md5 of the decompressed IDX bytes of ``array``."""
    return hashlib.md5(encode_idx(array)).hexdigest()


def tiny_info(name: str = "tiny", arrays: dict[str, np.ndarray] | None = None, *, mirrors: tuple[str, ...] = (),
              names: tuple[str, ...] = NAMES, checksums: bool = True, **extra) -> DatasetInfo:
    """A registry entry for ``arrays`` (md5s computed from them unless ``checksums`` is False)."""
    arrays = arrays if arrays is not None else tiny_arrays()
    files = {
        key: FileInfo(fname, md5_of(arrays[key]) if checksums else None, len(encode_idx(arrays[key])))
        for key, fname in zip(SPLIT_KEYS, names, strict=True)
    }
    n_classes = int(max(arrays["train_labels"].reshape(len(arrays["train_labels"]), -1)[:, 0].max(), 2)) + 1
    info = DatasetInfo(
        name=name, description="a tiny test dataset", classes=tuple(str(i) for i in range(n_classes)),
        mean=0.5, std=0.25, files=files, mirrors=mirrors, homepage="http://127.0.0.1/",
        train_size=len(arrays["train_images"]), test_size=len(arrays["test_images"]),
    )
    return replace(info, **extra)


def register(monkeypatch, info: DatasetInfo) -> DatasetInfo:
    """Add ``info`` to the registry for the duration of one test."""
    monkeypatch.setitem(registry.DATASETS, info.name, info)
    assert DATASETS[info.name] is info
    return info


def write_files(folder: Path, info: DatasetInfo, arrays: dict[str, np.ndarray], *, gz: bool = True) -> Path:
    """Write the dataset's four IDX files into ``folder``."""
    for key in SPLIT_KEYS:
        write_idx(folder / (info.files[key].filename + (".gz" if gz else "")), arrays[key])
    return folder


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass


@contextlib.contextmanager
def http_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 from a thread; yields the base URL ending in '/'."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on a local port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def draw_digit(shape: str = "seven", size: tuple[int, int] = (120, 160), *, dark_ink: bool = True,
               stroke: int | None = None) -> Image.Image:
    """A grayscale ('L') drawing of a simple glyph: 'seven', 'ring' or 'bar'."""
    w, h = size
    ink, paper = (0, 255) if dark_ink else (255, 0)
    img = Image.new("L", size, paper)
    d = ImageDraw.Draw(img)
    s = stroke or max(2, min(w, h) // 10)
    if shape == "seven":
        d.line([(0.25 * w, 0.2 * h), (0.75 * w, 0.2 * h), (0.45 * w, 0.8 * h)], fill=ink, width=s)
    elif shape == "ring":
        d.ellipse([0.3 * w, 0.2 * h, 0.7 * w, 0.8 * h], outline=ink, width=s)
    elif shape == "bar":
        d.line([(0.5 * w, 0.2 * h), (0.5 * w, 0.8 * h)], fill=ink, width=s)
    else:
        raise ValueError(shape)
    return img


def as_mode(img: Image.Image, mode: str, *, dark_ink: bool = True) -> Image.Image:
    """``img`` (an 'L' drawing) converted to ``mode``; RGBA/LA put the ink on transparency."""
    if mode in ("RGBA", "LA"):
        gray = np.asarray(img)
        alpha = (255 - gray) if dark_ink else gray  # opaque where the ink is
        colour = 0 if dark_ink else 255
        layers = [np.full_like(gray, colour)] * (3 if mode == "RGBA" else 1) + [alpha]
        return Image.fromarray(np.stack(layers, axis=-1))  # [H, W, 4] -> RGBA, [H, W, 2] -> LA
    if mode == "I;16":
        return Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    if mode == "P":
        return img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return img.convert(mode)
