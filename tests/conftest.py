"""Shared fixtures: a small, learnable, MNIST-shaped dataset written as real IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SYNTH_TRAIN = 1200
SYNTH_TEST = 300


def synthetic_digits(n: int, seed: int, classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images [n, 28, 28] and labels [n]: one smooth prototype per class, jittered.

    Learnable in a few steps, so tests can check that training really learns.
    """
    rng = np.random.default_rng(1234)  # the prototypes are the same for every split
    protos = np.zeros((classes, 28, 28), dtype=np.float32)
    yy, xx = np.mgrid[0:28, 0:28]
    for k in range(classes):
        for _ in range(3):  # three gaussian strokes per class
            cy, cx = rng.uniform(8, 20, size=2)
            sy, sx = rng.uniform(1.5, 4, size=2)
            protos[k] += np.exp(-((yy - cy) ** 2 / (2 * sy**2) + (xx - cx) ** 2 / (2 * sx**2)))
    protos = protos / protos.max(axis=(1, 2), keepdims=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n).astype(np.uint8)
    images = protos[labels]
    shifts = rng.integers(-2, 3, size=(n, 2))
    images = np.stack([np.roll(img, tuple(s), axis=(0, 1)) for img, s in zip(images, shifts, strict=True)])
    images = images + rng.normal(0, 0.08, size=images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def write_synthetic_mnist(folder: Path, n_train: int = SYNTH_TRAIN, n_test: int = SYNTH_TEST) -> Path:
    """Write the four MNIST IDX files (gzip) of a synthetic dataset into ``folder``."""
    from mnistlab.data.idx import write_idx

    folder.mkdir(parents=True, exist_ok=True)
    x, y = synthetic_digits(n_train, seed=1)
    write_idx(folder / "train-images-idx3-ubyte.gz", x)
    write_idx(folder / "train-labels-idx1-ubyte.gz", y)
    x, y = synthetic_digits(n_test, seed=2)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", x)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", y)
    return folder


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding `mnist/` and `fashion-mnist/` made of synthetic digits."""
    root = tmp_path_factory.mktemp("synthetic-data")
    write_synthetic_mnist(root / "mnist")
    write_synthetic_mnist(root / "fashion-mnist")
    return root


@pytest.fixture
def synthetic_data(synthetic_root, monkeypatch, tmp_path) -> Path:
    """Point MNISTLAB_DATA_DIR at the synthetic data (and the cache at an empty folder); run in tmp."""
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(synthetic_root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("MNISTLAB_NO_TENSORBOARD", "1")
    monkeypatch.chdir(tmp_path)
    return synthetic_root


@pytest.fixture
def real_data_dir() -> Path:
    """The real datasets (MNISTLAB_DATA_DIR), or skip."""
    import os

    d = os.environ.get("MNISTLAB_DATA_DIR")
    if not d or not (Path(d) / "mnist").is_dir():
        pytest.skip("set MNISTLAB_DATA_DIR to a folder holding mnist/ to run real-data tests")
    return Path(d)


@pytest.fixture
def interrupt_after_checkpoint(monkeypatch):
    """``interrupt(module, n, exc)``: make ``module.save_checkpoint`` raise ``exc`` right after its
    ``n``-th save, as a crash between two checkpoints would; returns the real function so that a test
    can put it back before resuming."""

    def interrupt(module, n: int, exc: type[BaseException] = KeyboardInterrupt):
        real, calls = module.save_checkpoint, []

        def save_then_stop(run_dir, state):
            real(run_dir, state)
            calls.append(1)
            if len(calls) == n:
                raise exc

        monkeypatch.setattr(module, "save_checkpoint", save_then_stop)
        return real

    return interrupt
