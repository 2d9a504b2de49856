"""The data layer: dataset registry and lookup, IDX files, real-image preprocessing, in-memory datasets, augmentation.

Names are imported on first use, so light commands (``mnistlab data list``) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "augment": ("augment_batch",),
    "dataset": ("SPLITS", "class_balanced_subset", "load_dataset", "split_train_val"),
    "idx": ("read_idx", "write_idx"),
    "imagedata": ("ImageData", "normalize"),
    "images": ("IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "ImageError", "image_to_array", "images_to_tensor",
               "load_image", "preprocess_image"),
    "registry": ("DATASETS", "MNIST_MEAN", "MNIST_STD", "DatasetInfo", "FileInfo", "get_dataset_info"),
    "sources": ("VERIFY_PASSES", "download_file", "locate", "search_dirs", "verify"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FileInfo",
    "IMAGE_EXTENSIONS",
    "ImageData",
    "ImageError",
    "MAX_IMAGE_PIXELS",
    "MNIST_MEAN",
    "MNIST_STD",
    "SPLITS",
    "VERIFY_PASSES",
    "augment_batch",
    "class_balanced_subset",
    "download_file",
    "get_dataset_info",
    "image_to_array",
    "images_to_tensor",
    "load_dataset",
    "load_image",
    "locate",
    "normalize",
    "preprocess_image",
    "read_idx",
    "search_dirs",
    "split_train_val",
    "verify",
    "write_idx",
]

if TYPE_CHECKING:
    from mnistlab.data.augment import augment_batch
    from mnistlab.data.dataset import SPLITS, class_balanced_subset, load_dataset, split_train_val
    from mnistlab.data.idx import read_idx, write_idx
    from mnistlab.data.imagedata import ImageData, normalize
    from mnistlab.data.images import (
        IMAGE_EXTENSIONS,
        MAX_IMAGE_PIXELS,
        ImageError,
        image_to_array,
        images_to_tensor,
        load_image,
        preprocess_image,
    )
    from mnistlab.data.registry import (
        DATASETS,
        MNIST_MEAN,
        MNIST_STD,
        DatasetInfo,
        FileInfo,
        get_dataset_info,
    )
    from mnistlab.data.sources import VERIFY_PASSES, download_file, locate, search_dirs, verify


assert sorted(__all__) == sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'mnistlab.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mnistlab.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
