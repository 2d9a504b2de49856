"""load_dataset for registered, folder: and csv: specs; splitting, subsets and normalisation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import as_mode, draw_digit, register, tiny_arrays, tiny_info, write_files

from mnistlab.data.dataset import class_balanced_subset, load_dataset, split_train_val
from mnistlab.data.imagedata import ImageData, normalize
from mnistlab.data.registry import MNIST_MEAN, MNIST_STD
from mnistlab.errors import DataError

REAL_DATA_DIR = os.environ.get("MNISTLAB_DATA_DIR")  # read before the fixtures below clear it


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.delenv("MNISTLAB_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr("mnistlab.data.sources.SYSTEM_DATA_ROOT", tmp_path / "system")


# registered datasets ---------------------------------------------------------------------------


def test_registered_dataset(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    info = register(monkeypatch, tiny_info("tiny", arrays))
    write_files(tmp_path / "d", info, arrays)
    for split in ("train", "test"):
        data = load_dataset("tiny", split, data_dir=tmp_path / "d", download=False)
        assert data.images.dtype == torch.uint8 and data.images.shape == (len(arrays[f"{split}_images"]), 1, 28, 28)
        assert data.labels.dtype == torch.int64
        np.testing.assert_array_equal(data.images[:, 0].numpy(), arrays[f"{split}_images"])
        np.testing.assert_array_equal(data.labels.numpy(), arrays[f"{split}_labels"])
        assert (data.name, data.mean, data.std, data.classes) == ("tiny", 0.5, 0.25, ["0", "1", "2"])
    again = load_dataset("tiny", "train", data_dir=tmp_path / "d", download=False)
    again.images.zero_()  # a caller's in-place edit must not reach the cache
    assert load_dataset("tiny", "train", data_dir=tmp_path / "d").images.any()


def test_emnist_style_transpose_and_label_offset(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    stored = dict(arrays)
    for split in ("train", "test"):
        stored[f"{split}_images"] = arrays[f"{split}_images"].transpose(0, 2, 1).copy()  # [N, W, H]
        stored[f"{split}_labels"] = arrays[f"{split}_labels"] + 1  # letters are stored 1..26
    info = register(monkeypatch, tiny_info("em", stored, transpose=True, label_offset=1,
                                           classes=("a", "b", "c")))
    write_files(tmp_path / "em", info, stored)
    data = load_dataset("em", "train", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(data.images[:, 0].numpy(), arrays["train_images"])
    np.testing.assert_array_equal(data.labels.numpy(), arrays["train_labels"])
    assert data.images.is_contiguous()


def test_qmnist_style_label_table(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    for split in ("train", "test"):
        table = np.full((len(arrays[f"{split}_labels"]), 8), 99, np.int32)  # [N, 8]; column 0 is the digit
        table[:, 0] = arrays[f"{split}_labels"]
        arrays[f"{split}_labels"] = table
    info = register(monkeypatch, tiny_info("q", arrays, label_column=0))
    write_files(tmp_path / "q", info, arrays)
    data = load_dataset("q", "test", data_dir=tmp_path / "q", download=False)
    np.testing.assert_array_equal(data.labels.numpy(), arrays["test_labels"][:, 0])


def test_labels_out_of_range_is_an_error(tmp_path, monkeypatch):
    arrays = tiny_arrays()
    info = register(monkeypatch, tiny_info("bad", arrays, classes=("0", "1")))  # labels go up to 2
    write_files(tmp_path / "bad", info, arrays)
    with pytest.raises(DataError, match="labels outside 0..1"):
        load_dataset("bad", data_dir=tmp_path, download=False)


def test_unknown_name_and_split():
    with pytest.raises(DataError, match=r"unknown dataset 'mnist2'.*emnist-letters.*folder:PATH.*csv:PATH"):
        load_dataset("mnist2")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val")
    with pytest.raises(DataError, match="names no path"):
        load_dataset("folder:")


# folder: datasets -------------------------------------------------------------------------------


def _save(img, path: Path, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, fmt)


def _make_folder(root: Path) -> None:
    """Two classes drawn in varied sizes, modes, formats and polarities, plus broken files."""
    variants = [((40, 60), "L", "png", True), ((300, 200), "RGB", "jpg", False), ((28, 28), "RGBA", "png", True),
                ((90, 90), "P", "bmp", True), ((64, 48), "L", "PNG", False)]
    for cls, shape in (("one", "bar"), ("zero", "ring")):
        for i, (size, mode, ext, dark) in enumerate(variants):
            img = as_mode(draw_digit(shape, size, dark_ink=dark), mode, dark_ink=dark)
            _save(img, root / cls / f"{i}.{ext}", {"jpg": "JPEG", "PNG": "PNG"}.get(ext))
    (root / "one" / "empty.png").write_bytes(b"")
    (root / "zero" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (root / "zero" / "fake.png").write_text("text with an image name")
    (root / "zero" / "notes.txt").write_text("not an image, ignored")
    (root / "zero" / ".hidden.png").write_bytes(b"")  # hidden: ignored, not reported


def test_folder_dataset(tmp_path, capsys):
    _make_folder(tmp_path / "digits")
    data = load_dataset(f"folder:{tmp_path / 'digits'}")
    assert data.classes == ["one", "zero"]
    assert len(data) == 10 and data.images.shape == (10, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.tolist() == [0] * 5 + [1] * 5
    assert (data.mean, data.std) == (MNIST_MEAN, MNIST_STD)
    skipped = dict(data.skipped)
    root = tmp_path / "digits"
    assert set(skipped) == {str(root / "one" / "empty.png"), str(root / "zero" / "broken.jpg"), str(root / "zero" / "fake.png")}
    assert skipped[str(root / "one" / "empty.png")] == "empty file (0 bytes)"
    assert skipped[str(root / "zero" / "broken.jpg")].startswith("corrupt or truncated image")
    assert skipped[str(root / "zero" / "fake.png")] == "not an image file"
    err = capsys.readouterr().err
    for name in ("empty.png", "broken.jpg", "fake.png", "notes.txt"):
        assert name in err
    # every image went through the MNIST-style path: bars are tall and thin, rings wide
    images = data.images[:, 0].float()
    assert (images[:5, :, :10].sum() + images[:5, :, 18:].sum()) < 0.05 * images[:5].sum()
    assert images[5:, :, 18:].sum() > 0.2 * images[5:].sum()


def test_a_val_size_too_large_for_a_small_folder_falls_back_to_a_tenth_and_says_so(tmp_path, capsys):
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.splits import make_splits

    _make_folder(tmp_path / "digits")  # 10 images; the default val_size is 5000
    cfg = load_config(resolve_recipe(None), [f"data.dataset=folder:{tmp_path / 'digits'}"])
    splits = make_splits(cfg, test=False)
    assert len(splits.val) == 1 and len(splits.train) == 9
    assert "data.val_size=5000 is over a quarter of the 10 training images; validating on 10%" in capsys.readouterr().err
    make_splits(load_config(resolve_recipe(None), [f"data.dataset=folder:{tmp_path / 'digits'}", "data.val_size=2"]),
                test=False)
    assert "note: data.val_size" not in capsys.readouterr().err  # a size that fits is used as given, silently


def test_folder_train_test_layout(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls, shape in (("a", "bar"), ("b", "ring")):
            for i in range(n):
                _save(draw_digit(shape, (50 + i, 50)), tmp_path / "ds" / split / cls / f"{i}.png")
    train = load_dataset(f"folder:{tmp_path / 'ds'}", "train")
    test = load_dataset(f"folder:{tmp_path / 'ds'}", "test")
    assert (len(train), len(test), train.classes, test.classes) == (6, 4, ["a", "b"], ["a", "b"])
    assert test.labels.tolist() == [0, 0, 1, 1]


def test_folder_errors(tmp_path):
    _make_folder(tmp_path / "digits")
    with pytest.raises(DataError, match="no test/ sub-folder.*separate test dataset"):
        load_dataset(f"folder:{tmp_path / 'digits'}", "test")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "flat").mkdir()
    _save(draw_digit(), tmp_path / "flat" / "a.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'flat'}")
    (tmp_path / "junk" / "x").mkdir(parents=True)
    (tmp_path / "junk" / "x" / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"no readable images .*\(1 skipped\)"):
        load_dataset(f"folder:{tmp_path / 'junk'}")


# csv: datasets ----------------------------------------------------------------------------------


def _write_csv(path: Path, rows: np.ndarray, labelled: bool = True, header: bool = True) -> Path:
    names = (["label"] if labelled else []) + [f"pixel{i}" for i in range(784)]
    lines = [",".join(names)] if header else []
    lines += [",".join(str(v) for v in row) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _csv_rows(n: int, labelled: bool = True) -> np.ndarray:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, 784))
    return np.column_stack([np.arange(n) % 10, pixels]) if labelled else pixels


def test_csv_train_and_test_files(tmp_path):
    rows = _csv_rows(12)
    train = load_dataset(f"csv:{_write_csv(tmp_path / 'train.csv', rows)}")
    assert train.images.shape == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    np.testing.assert_array_equal(train.images.reshape(12, 784).numpy(), rows[:, 1:])
    assert train.labels.tolist() == list(np.arange(12) % 10) and train.classes == [str(i) for i in range(10)]
    test_rows = _csv_rows(5, labelled=False)
    test = load_dataset(f"csv:{_write_csv(tmp_path / 'test.csv', test_rows, labelled=False)}", "test")
    assert test.labels.tolist() == [-1] * 5
    np.testing.assert_array_equal(test.images[3, 0].numpy(), test_rows[3].reshape(28, 28))
    folder = load_dataset(f"csv:{tmp_path}", "test")  # a Kaggle folder: test.csv
    assert len(folder) == 5
    headerless = load_dataset(f"csv:{_write_csv(tmp_path / 'b' / 'mnist_test.csv', rows, header=False)}", "test")
    assert len(headerless) == 12  # a labelled file named *test* serves the test split


def test_csv_split_rules(tmp_path):
    labelled = _write_csv(tmp_path / "digits.csv", _csv_rows(3))
    with pytest.raises(DataError, match="is labelled training data"):
        load_dataset(f"csv:{labelled}", "test")
    unlabelled = _write_csv(tmp_path / "test.csv", _csv_rows(3, labelled=False), labelled=False)
    with pytest.raises(DataError, match="no label column"):
        load_dataset(f"csv:{unlabelled}", "train")
    with pytest.raises(DataError, match="has no train.csv"):
        load_dataset(f"csv:{tmp_path}", "train")


def test_csv_errors_name_the_line(tmp_path):
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    path = tmp_path / "train.csv"
    cases = [
        (lambda row: row[:-1], r"line 3 has 784 columns, expected 785"),
        (lambda row: row[:7] + ["x7"] + row[8:], r"line 3, column 8 is not a whole number: 'x7'"),
        (lambda row: row[:9] + ["300"] + row[10:], r"line 3, column 10 has pixel value 300, outside 0..255"),
        (lambda row: ["-2"] + row[1:], r"line 3 has a negative label -2"),
    ]
    for damage, pattern in cases:
        rows = [[str(v) for v in row] for row in _csv_rows(3)]
        rows[1] = damage(rows[1])
        path.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
        with pytest.raises(DataError, match=pattern):
            load_dataset(f"csv:{path}")
    path.write_text(",".join(["a"] * 10) + "\n")
    with pytest.raises(DataError, match="line 1 of .* has 10 columns; expected 785"):
        load_dataset(f"csv:{path}")
    path.write_text(header + "\n")
    with pytest.raises(DataError, match="has a header but no rows"):
        load_dataset(f"csv:{path}")


def test_csv_is_fast_enough(tmp_path):
    rows = _csv_rows(2000)
    path = tmp_path / "train.csv"
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=",".join(["label"] + [f"pixel{i}" for i in range(784)]),
               comments="")
    start = time.perf_counter()
    assert len(load_dataset(f"csv:{path}")) == 2000
    assert time.perf_counter() - start < 3.0  # 42,000 rows take about 2 s


# splits, subsets, normalisation -----------------------------------------------------------------


def _data(counts: list[int]) -> ImageData:
    """Examples whose first two pixels encode their index, so they can be told apart."""
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    ids = torch.arange(len(labels))
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids % 256, ids // 256
    return ImageData(images, labels, [str(k) for k in range(len(counts))], "synthetic", 0.1, 0.3)


def _ids(data: ImageData) -> list[int]:
    return (data.images[:, 0, 0, 0].long() + 256 * data.images[:, 0, 0, 1].long()).tolist()


def test_split_is_stratified_disjoint_and_seeded():
    data = _data([500, 300, 200])
    train, val = split_train_val(data, 0.1, seed=0)
    assert (len(train), len(val)) == (900, 100)
    assert val.class_counts().tolist() == [50, 30, 20]
    assert train.class_counts().tolist() == [450, 270, 180]
    assert sorted(_ids(train) + _ids(val)) == list(range(1000))  # disjoint and complete
    assert _ids(train) == sorted(_ids(train))  # original order kept
    again_train, again_val = split_train_val(data, 0.1, seed=0)
    assert _ids(again_val) == _ids(val) and _ids(again_train) == _ids(train)
    assert _ids(split_train_val(data, 0.1, seed=1)[1]) != _ids(val)
    for k in range(3):  # validation examples are spread over each class, not its first ones
        picked = [i for i, label in zip(_ids(val), val.labels.tolist(), strict=True) if label == k]
        assert max(picked) - min(picked) > 0.5 * data.class_counts()[k]


def test_split_odd_sizes():
    data = _data([3, 3, 5])
    train, val = split_train_val(data, 4, seed=3)
    assert (len(train), len(val)) == (7, 4)
    assert sorted(_ids(train) + _ids(val)) == list(range(11))
    assert set(val.labels.tolist()) == {0, 1, 2}  # every class represented


def test_split_sizes_and_errors():
    data = _data([10, 10])
    train, val = split_train_val(data, 0, seed=0)
    assert (len(train), len(val)) == (20, 0) and val.images.shape == (0, 1, 28, 28)
    assert len(split_train_val(data, 5.0, seed=0)[1]) == 5  # a whole float is a count
    for bad in (20, 25, 1.5, -1, "x"):
        with pytest.raises(DataError):
            split_train_val(data, bad, seed=0)


def test_class_balanced_subset():
    data = _data([50, 20, 30])
    few = class_balanced_subset(data, 7, seed=0)
    assert few.class_counts().tolist() == [7, 7, 7]
    assert torch.equal(few.images, class_balanced_subset(data, 7, seed=0).images)
    assert not torch.equal(few.images, class_balanced_subset(data, 7, seed=1).images)
    with pytest.raises(DataError, match=r"fewer than 25 examples: 1 \(20\)"):
        class_balanced_subset(data, 25, seed=0)


def test_normalize_subset_to():
    x = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    y = normalize(x, 0.5, 0.25)
    assert y.dtype == torch.float32 and y.flatten().tolist() == [-2.0, 2.0]
    assert normalize(x.float() / 255, 0.5, 0.25).flatten().tolist() == [-2.0, 2.0]
    data = _data([3, 2])
    part = data.subset(torch.tensor([4, 0]))
    assert part.labels.tolist() == [1, 0] and part.classes == data.classes and len(part) == 2
    assert part.to("cpu").images.device.type == "cpu"
    assert len(data.subset(data.labels == 1)) == 2


# the real thing ---------------------------------------------------------------------------------


@pytest.mark.real_data
def test_real_mnist(monkeypatch):
    if not REAL_DATA_DIR or not (Path(REAL_DATA_DIR) / "mnist").is_dir():
        pytest.skip("set MNISTLAB_DATA_DIR to a folder holding mnist/ to run real-data tests")
    monkeypatch.setenv("MNISTLAB_DATA_DIR", REAL_DATA_DIR)
    start = time.perf_counter()
    train = load_dataset("mnist", "train", download=False)
    seconds = time.perf_counter() - start
    test = load_dataset("mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.class_counts().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.class_counts().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert seconds < 3
    fashion = load_dataset("fashion-mnist", "test", download=False)
    assert fashion.classes[0] == "T-shirt/top" and fashion.class_counts().tolist() == [1000] * 10
