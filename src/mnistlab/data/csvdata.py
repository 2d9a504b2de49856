"""``csv:PATH`` datasets in the Kaggle digit-recognizer layout.

A train file has a header ``label,pixel0,...,pixel783`` and one image per row; a test file has
no label column (its labels are set to -1). Pixels are 0..255 in MNIST polarity (0 background),
row-major 28x28, so they are used as they are: no ``preprocess_image``. A header row is optional.

Which file serves which split:
- ``csv:DIR`` (the folder Kaggle's download unpacks to): "train" is DIR/train.csv and "test"
  is DIR/test.csv.
- ``csv:FILE`` with labels serves "train"; it serves "test" only when its name contains
  "test" (``mnist_test.csv``, ``fashion-mnist_test.csv``). This keeps a run whose test set
  defaults to its training spec from silently evaluating on its own training data.
- ``csv:FILE`` without labels is a test file: it serves "test" and cannot be trained on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from mnistlab.data.imagedata import ImageData
from mnistlab.data.registry import MNIST_MEAN, MNIST_STD
from mnistlab.errors import DataError

PIXELS = 28 * 28
MAX_CLASSES = 1000  # a label past this is a broken file, not a class: the class list would exhaust memory
_ENCODING = "utf-8-sig"  # tolerate a byte-order mark from spreadsheet exports


def _resolve_file(path: Path, split: str, spec: str) -> Path:
    if path.is_dir():
        file = path / f"{split}.csv"
        if not file.is_file():
            raise DataError(f"{spec}: {path} has no {split}.csv; point csv: at the CSV file itself or add {file}")
        return file
    if not path.is_file():
        raise DataError(f"{spec}: {path} does not exist; give the path of a Kaggle-style CSV file or its folder")
    return path


def _first_line(file: Path) -> str:
    with open(file, encoding=_ENCODING) as f:
        return f.readline().strip()


def _is_number(text: str) -> bool:
    text = text.strip()
    return text.lstrip("+-").isdigit()


def _find_bad_line(file: Path, ncols: int, skip: int, labelled: bool) -> str:
    """Describe the first row that is not ``ncols`` integers with pixels in 0..255."""
    with open(file, encoding=_ENCODING) as f:
        for lineno, line in enumerate(f, start=1):
            if lineno <= skip or not line.strip():
                continue
            fields = line.rstrip("\r\n").split(",")
            if len(fields) != ncols:
                return f"line {lineno} has {len(fields)} columns, expected {ncols}"
            for col, text in enumerate(fields):
                if not _is_number(text):
                    return f"line {lineno}, column {col + 1} is not a whole number: {text.strip()[:20]!r}"
                value = int(text)
                if labelled and col == 0:
                    if value < 0:
                        return f"line {lineno} has a negative label {value}"
                elif not 0 <= value <= 255:
                    return f"line {lineno}, column {col + 1} has pixel value {value}, outside 0..255"
    return "it could not be parsed"


def _check_split(file: Path, split: str, labelled: bool, spec: str) -> None:
    if split == "train" and not labelled:
        raise DataError(f"{spec}: {file} has no label column (784 columns), so it is a test file and "
                        f"cannot be trained on; use the labelled train.csv")
    if split == "test" and labelled and "test" not in file.stem.lower():
        raise DataError(f"{spec}: {file} is labelled training data, so it is not used as the test split; "
                        f"pass a separate test CSV whose name contains 'test', or point csv: at a folder "
                        f"holding train.csv and test.csv")


def load_csv(path: Path, split: str, *, spec: str) -> ImageData:
    """Load a Kaggle-layout CSV split; see the module docstring for which file serves which split.

    Raises DataError naming the line on a wrong column count, a non-numeric value or a pixel
    outside 0..255.
    """
    file = _resolve_file(path, split, spec)
    try:
        return _parse(file, split, spec)
    except UnicodeDecodeError as err:
        raise DataError(f"{spec}: {file} is not UTF-8 text (byte {err.start} is {err.object[err.start:err.start + 1]!r}); "
                        "save it as a UTF-8 CSV") from None


def _parse(file: Path, split: str, spec: str) -> ImageData:
    first = _first_line(file)
    if not first:
        raise DataError(f"{spec}: {file} is empty; it needs a header and one row per image")
    fields = first.split(",")
    skip = 0 if _is_number(fields[0]) else 1
    ncols = len(fields)
    if ncols not in (PIXELS, PIXELS + 1):
        raise DataError(f"{spec}: line 1 of {file} has {ncols} columns; expected {PIXELS + 1} "
                        f"(label,pixel0..pixel783) or {PIXELS} (pixel0..pixel783, a test file)")
    labelled = ncols == PIXELS + 1
    _check_split(file, split, labelled, spec)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            rows = np.loadtxt(file, delimiter=",", skiprows=skip, dtype=np.int32, ndmin=2, encoding=_ENCODING)
    except (ValueError, OverflowError) as err:
        raise DataError(f"{spec}: {file}: {_find_bad_line(file, ncols, skip, labelled)}; fix or remove that row") from err
    if rows.shape[0] == 0:
        raise DataError(f"{spec}: {file} has a header but no rows")
    pixels = rows[:, 1:] if labelled else rows  # [N, 784]
    if pixels.min() < 0 or pixels.max() > 255 or (labelled and rows[:, 0].min() < 0):
        raise DataError(f"{spec}: {file}: {_find_bad_line(file, ncols, skip, labelled)}; fix or remove that row")
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))  # [N, 784] -> [N, 1, 28, 28]
    if labelled:
        labels = torch.from_numpy(rows[:, 0].astype(np.int64))
        if int(labels.max()) >= MAX_CLASSES:
            row = int(labels.argmax()) + 1 + skip
            raise DataError(f"{spec}: {file}: line {row} has label {int(labels.max())}; labels are class numbers "
                            f"0..{MAX_CLASSES - 1}; fix or remove that row")
        num_classes = max(10, int(labels.max()) + 1)
    else:
        labels = torch.full((rows.shape[0],), -1, dtype=torch.int64)
        num_classes = 10
    return ImageData(images=images, labels=labels, classes=[str(i) for i in range(num_classes)],
                     name=spec, mean=MNIST_MEAN, std=MNIST_STD)
