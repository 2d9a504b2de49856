"""The registered datasets of the MNIST family: files, checksums, mirrors, classes and statistics.

Checksums are md5s of the *decompressed* IDX bytes (gzip containers differ between mirrors).
Only checksums that are actually known are recorded; the rest are None and verification then
reports "no checksum known" and falls back to a structural check.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

from mnistlab.errors import DataError

SPLIT_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
# MNIST's pixel statistics (of pixel/255). Also the normalisation of folder and CSV inputs: they
# are turned into MNIST-style digits (by preprocess_image, or already are for Kaggle CSVs), and
# these are what a model pretrained on MNIST expects when it is fine-tuned on them.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


@dataclass(frozen=True)
class FileInfo:
    """One IDX file of a dataset, by its decompressed base name."""

    filename: str  # e.g. "train-images-idx3-ubyte"; mirrors serve filename + ".gz"
    md5: str | None = None  # md5 of the decompressed bytes; None when not known
    size: int | None = None  # decompressed size in bytes


@dataclass(frozen=True)
class DatasetInfo:
    """Everything needed to find, check and decode one registered dataset."""

    name: str
    description: str
    classes: tuple[str, ...]
    mean: float  # of pixel/255 over the train images
    std: float
    files: dict[str, FileInfo]  # keys: SPLIT_KEYS
    mirrors: tuple[str, ...]  # base URLs; a file is fetched as mirror + filename + ".gz"
    homepage: str
    train_size: int  # number of examples
    test_size: int
    transpose: bool = False  # EMNIST stores images transposed relative to MNIST
    label_offset: int = 0  # subtracted from stored labels (EMNIST letters store 1..26)
    label_column: int | None = None  # label files of shape [N, K]: the column holding the class
    archives: tuple[str, ...] = ()  # zip archives holding filename + ".gz" members (EMNIST)
    stats_note: str = field(default="", compare=False)  # where mean/std come from, if approximate


def _image_size(n: int) -> int:
    """Decompressed bytes of an IDX uint8 file of n 28x28 images."""
    return 16 + n * 28 * 28


def _idx_files(
    train_n: int,
    test_n: int,
    *,
    prefix: str = "",
    test_stem: str = "t10k",
    md5s: tuple[str | None, str | None, str | None, str | None] = (None, None, None, None),
) -> dict[str, FileInfo]:
    """The four standard IDX files (uint8 labels) named the MNIST way."""
    names = (
        f"{prefix}train-images-idx3-ubyte",
        f"{prefix}train-labels-idx1-ubyte",
        f"{prefix}{test_stem}-images-idx3-ubyte",
        f"{prefix}{test_stem}-labels-idx1-ubyte",
    )
    sizes = (_image_size(train_n), 8 + train_n, _image_size(test_n), 8 + test_n)
    return {key: FileInfo(n, m, s) for key, n, m, s in zip(SPLIT_KEYS, names, md5s, sizes, strict=True)}


DIGITS = tuple(string.digits)
_EMNIST_MERGED = tuple(string.digits + string.ascii_uppercase + "abdefghnqrt")  # 47 classes
_EMNIST_HOME = "https://www.nist.gov/itl/products-and-services/emnist-dataset"
_EMNIST_ARCHIVE = ("https://biometrics.nist.gov/cs_links/EMNIST/gzip.zip",)
# (name, description, classes, train_n, test_n, mean, std); stats of pixel/255 over the train
# images, as commonly reported; they are approximate (about 3 digits).
_EMNIST_SPLITS = (
    ("balanced", "47 balanced classes: digits, upper case, and lower case letters that differ from upper",
     _EMNIST_MERGED, 112_800, 18_800, 0.1751, 0.3332),
    ("byclass", "62 unbalanced classes: digits, upper case and lower case letters",
     tuple(string.digits + string.ascii_uppercase + string.ascii_lowercase), 697_932, 116_323, 0.1736, 0.3317),
    ("bymerge", "47 unbalanced classes: byclass with look-alike upper and lower case letters merged",
     _EMNIST_MERGED, 697_932, 116_323, 0.1736, 0.3317),
    ("digits", "10 balanced digit classes, 280,000 images", DIGITS, 240_000, 40_000, 0.1733, 0.3317),
    ("letters", "26 balanced letter classes, upper and lower case merged",
     tuple(string.ascii_lowercase), 124_800, 20_800, 0.1722, 0.3309),
    ("mnist", "10 digit classes, the same sizes as MNIST but EMNIST's processing",
     DIGITS, 60_000, 10_000, 0.1733, 0.3317),
)


def _emnist(split: str, description: str, classes: tuple[str, ...], train_n: int, test_n: int,
            mean: float, std: float) -> DatasetInfo:
    return DatasetInfo(
        name=f"emnist-{split}",
        description=f"EMNIST {split}: {description} (NIST Special Database 19, Cohen et al. 2017)",
        classes=classes,
        mean=mean,
        std=std,
        files=_idx_files(train_n, test_n, prefix=f"emnist-{split}-", test_stem="test"),
        mirrors=(),
        homepage=_EMNIST_HOME,
        train_size=train_n,
        test_size=test_n,
        transpose=True,
        label_offset=1 if split == "letters" else 0,
        archives=_EMNIST_ARCHIVE,
        stats_note="approximate, as commonly reported",
    )


def _qmnist() -> DatasetInfo:
    names = ("qmnist-train-images-idx3-ubyte", "qmnist-train-labels-idx2-int",
             "qmnist-test-images-idx3-ubyte", "qmnist-test-labels-idx2-int")
    # Label files are int32 [N, 8]: digit, NIST HSF series, writer id, ... (column 0 is the class).
    sizes = (_image_size(60_000), 12 + 60_000 * 32, _image_size(60_000), 12 + 60_000 * 32)
    return DatasetInfo(
        name="qmnist",
        description="QMNIST: MNIST reconstructed from NIST SD19, with the full 60,000-image test set "
        "(Yadav and Bottou 2019)",
        classes=DIGITS,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        files={key: FileInfo(n, None, s) for key, n, s in zip(SPLIT_KEYS, names, sizes, strict=True)},
        mirrors=("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",),
        homepage="https://github.com/facebookresearch/qmnist",
        train_size=60_000,
        test_size=60_000,
        label_column=0,
        stats_note="MNIST's: QMNIST's training set reconstructs MNIST's",
    )


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        description="MNIST handwritten digits (LeCun, Cortes and Burges)",
        classes=DIGITS,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        files=_idx_files(60_000, 10_000, md5s=(
            "6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
            "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637",
        )),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        homepage="http://yann.lecun.com/exdb/mnist/",
        train_size=60_000,
        test_size=10_000,
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        description="Fashion-MNIST: Zalando article images, a drop-in replacement for MNIST (MIT licence)",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        mean=0.2860,
        std=0.3530,
        files=_idx_files(60_000, 10_000, md5s=(
            "f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
            "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965",
        )),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        train_size=60_000,
        test_size=10_000,
    ),
    "kmnist": DatasetInfo(
        name="kmnist",
        description="Kuzushiji-MNIST: 10 classes of cursive Japanese hiragana (ROIS-DS CODH, CC BY-SA 4.0)",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        mean=0.1918,
        std=0.3483,
        files=_idx_files(60_000, 10_000),
        mirrors=(
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        homepage="https://github.com/rois-codh/kmnist",
        train_size=60_000,
        test_size=10_000,
        stats_note="approximate, as commonly reported",
    ),
    "qmnist": _qmnist(),
    **{f"emnist-{s[0]}": _emnist(*s) for s in _EMNIST_SPLITS},
}


def get_dataset_info(name: str) -> DatasetInfo:
    """The registered dataset called ``name``; DataError listing the valid names otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        known = ", ".join(sorted(DATASETS))
        raise DataError(
            f"unknown dataset {name!r}: use one of {known}, or folder:PATH (one sub-folder of images "
            f"per class) or csv:PATH (Kaggle digit-recognizer layout)"
        ) from None
