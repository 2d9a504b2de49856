"""A person's own digits: a drawn folder of mixed sizes, modes, formats and polarities, fine-tuned and evaluated.

The images are drawn here (seven-segment digits with jittered strokes), saved as PNG, JPEG and
BMP in L, RGB and RGBA, dark-on-light and light-on-dark, at sizes from 24 to 400 pixels, plus
the broken files a real folder holds: they are skipped with a message naming each one.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from finetune_helpers import DIGITS, draw_digit, make_parent

from mnistlab.artifact import load_artifact
from mnistlab.cli.main import main
from mnistlab.data.dataset import load_dataset

SIZES = [(24, 24), (64, 48), (120, 160), (400, 300), (90, 90), (33, 70)]
STYLES = [("png", "L"), ("jpg", "RGB"), ("bmp", "L"), ("png", "RGBA"), ("jpg", "L"), ("bmp", "RGB"), ("png", "RGB")]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose PNG header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + _png_chunk(b"IEND", b""))


def draw_folder(root: Path, per_class: int, seed: int) -> int:
    """Write ``per_class`` drawn images of each digit under ``root/<digit>/``; return how many."""
    rng = np.random.default_rng(seed)
    n = 0
    for digit in DIGITS:
        (root / digit).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt, mode = STYLES[(n + seed) % len(STYLES)]
            size = SIZES[(n * 5 + seed) % len(SIZES)]
            img = draw_digit(digit, rng, size=size, dark_on_light=bool((n + i) % 2), mode=mode)
            img.save(root / digit / f"{digit}-{i}.{fmt}", **({"quality": 90} if fmt == "jpg" else {}))
            n += 1
    return n


@pytest.fixture
def drawn_digits(tmp_path) -> tuple[Path, list[Path]]:
    root = tmp_path / "my_digits"
    draw_folder(root / "train", per_class=8, seed=0)
    draw_folder(root / "test", per_class=4, seed=1)
    png = io.BytesIO()
    draw_digit("8", np.random.default_rng(9), size=(200, 200), dark_on_light=True).save(png, format="PNG")
    bad = {
        "zero-byte.png": b"",
        "truncated.png": png.getvalue()[: len(png.getvalue()) // 2],
        "not-an-image.jpg": b"these are my notes, not a picture\n" * 4,
        "huge.png": huge_png_header(),
    }
    paths = []
    for i, (name, data) in enumerate(bad.items()):
        path = root / "train" / str(i) / name
        path.write_bytes(data)
        paths.append(path)
    return root, paths


def test_drawn_folder_loads_every_good_image_and_names_every_bad_one(drawn_digits, capsys):
    root, bad = drawn_digits
    data = load_dataset(f"folder:{root}", "train")
    err = capsys.readouterr().err
    assert len(data) == 80 and data.class_counts().tolist() == [8] * 10
    assert sorted(Path(f).name for f, _ in data.skipped) == sorted(p.name for p in bad)
    for path in bad:
        assert str(path) in err  # each broken file is named; the rest loaded
    assert tuple(data.images.shape[1:]) == (1, 28, 28)
    # MNIST style whatever the source: black background, white ink, centred
    images = data.images.float()
    assert images[:, :, :3, :].mean() < 5 and images.amax(dim=(1, 2, 3)).min() > 200


def test_finetune_on_drawn_digits_and_evaluate(drawn_digits, tmp_path, monkeypatch, capsys):
    root, bad = drawn_digits
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MNISTLAB_NO_TENSORBOARD", "1")
    parent = make_parent(tmp_path / "parent")
    code = main(["finetune", str(parent), "finetune-digits", "--dataset", f"folder:{root}", "--out", "mine",
                 "--quiet", "--json", "finetune.small.steps=60", "optim.lr=0.003", "train.threads=1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    for path in bad:
        assert str(path) in err
    assert summary["train_images"] == 80  # 8 per class, all of them train (too few to hold any out)
    assert summary["parent_test_accuracy"] is not None  # classes 0..9 match the parent's: before/after
    assert summary["test_accuracy"] >= 0.6 > summary["parent_test_accuracy"]  # 10 classes: chance is 0.1
    _, card = load_artifact("mine")
    assert card.parent["head"] == "kept" and card.preprocess.mnist_style and card.dataset == f"folder:{root}"
    code = main(["eval", "mine", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
