"""In-memory datasets: load any dataset spec into uint8 tensors, split, subsample, normalise.

A spec is a registered name (``mnist``, ``emnist-letters``, ...), ``folder:PATH`` or
``csv:PATH`` (see docs/design.md, "Datasets"). Every loader returns an ImageData whose images are a
uint8 tensor [N, 1, 28, 28]; batches are index slices of it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from mnistlab.data.csvdata import load_csv
from mnistlab.data.folders import load_folder
from mnistlab.data.idx import read_idx
from mnistlab.data.imagedata import ImageData
from mnistlab.data.registry import DatasetInfo, get_dataset_info
from mnistlab.data.sources import locate
from mnistlab.errors import DataError

SPLITS = ("train", "test")
# A spec prefix and the loader of its files: (path, split, spec=...) -> ImageData.
LOADERS = {"folder:": load_folder, "csv:": load_csv}


def _file_key(path: Path) -> tuple[str, int, int]:
    """Identity of a file for caching: resolved path, size and modification time."""
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _decode_idx_pair(images_key: tuple[str, int, int], labels_key: tuple[str, int, int], transpose: bool,
                     label_offset: int, label_column: int | None, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode an images/labels IDX pair into (uint8 [N, 1, 28, 28], int64 [N]); cached by file identity."""
    images_path, labels_path = Path(images_key[0]), Path(labels_key[0])
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    fix = "delete it and download it again (mnistlab data download NAME)"
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path} holds {images.dtype} {images.shape}, not uint8 images [N, H, W]; {fix}")
    if label_column is not None:
        if labels.ndim != 2 or labels.shape[1] <= label_column:
            raise DataError(f"{labels_path} holds labels of shape {labels.shape}, expected [N, >{label_column}]; {fix}")
        labels = labels[:, label_column]  # [N, K] -> [N]: the class column
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds labels of shape {labels.shape}, expected [N]; {fix}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path} has {len(labels)} labels for {len(images)} images in {images_path}; {fix}")
    labels = labels.astype(np.int64) - label_offset
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{labels_path} has labels outside 0..{num_classes - 1} (after offset {label_offset}); {fix}")
    if transpose:
        images = images.transpose(0, 2, 1)  # [N, W, H] as stored by EMNIST -> [N, H, W]
    tensor = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    return tensor, torch.from_numpy(labels)


def _load_registered(info: DatasetInfo, split: str, *, data_dir: str | os.PathLike | None, download: bool,
                     progress: bool) -> ImageData:
    paths = locate(info.name, data_dir, download=download, progress=progress)
    images, labels = _decode_idx_pair(
        _file_key(paths[f"{split}_images"]), _file_key(paths[f"{split}_labels"]),
        info.transpose, info.label_offset, info.label_column, len(info.classes),
    )
    # Clones keep the cached tensors safe from in-place edits by callers.
    return ImageData(images=images.clone(), labels=labels.clone(), classes=list(info.classes),
                     name=info.name, mean=info.mean, std=info.std)


def load_dataset(spec: str, split: str = "train", *, data_dir: str | os.PathLike | None = None,
                 download: bool = True, progress: bool = True) -> ImageData:
    """Load one split ("train" or "test") of the dataset named by ``spec`` into memory.

    ``spec`` is a registered name, ``folder:PATH`` or ``csv:PATH``. ``data_dir``, ``download``
    and ``progress`` apply to registered datasets (see ``locate``). Raises DataError for an
    unknown spec or split, missing or unreadable files.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {spec}: use 'train' or 'test'")
    spec = spec.strip()
    for prefix, loader in LOADERS.items():
        if spec.startswith(prefix):
            path = spec[len(prefix):].strip()
            if not path:
                raise DataError(f"{spec!r} names no path: write {prefix}PATH")
            return loader(Path(path).expanduser(), split, spec=spec)
    info = get_dataset_info(spec.lower())
    return _load_registered(info, split, data_dir=data_dir, download=download, progress=progress)


def _parse_val_size(val_size: int | float, n: int) -> int:
    """The number of validation examples that ``val_size`` asks for out of ``n``."""
    if isinstance(val_size, bool) or not isinstance(val_size, (int, float)):
        raise DataError(f"val_size must be a count or a fraction in (0, 1), got {val_size!r}")
    if isinstance(val_size, float) and not val_size.is_integer():
        if not 0 < val_size < 1:
            raise DataError(f"val_size {val_size} is neither a fraction in (0, 1) nor a whole count")
        count = round(val_size * n)
    else:  # a count, also when written as a float such as 5000.0
        count = int(val_size)
    if count < 0:
        raise DataError(f"val_size must not be negative, got {val_size}")
    if count > 0 and count >= n:
        raise DataError(f"val_size {val_size} leaves no training data out of {n} examples; ask for fewer")
    return count


def _per_class_indices(labels: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
    """For each distinct label (including -1), its example indices in a seeded random order."""
    labels = labels.cpu()
    groups = []
    for value in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == value).flatten()
        groups.append(idx[torch.randperm(len(idx), generator=generator)])
    return groups


def split_train_val(data: ImageData, val_size: int | float, seed: int) -> tuple[ImageData, ImageData]:
    """Split off a validation set, stratified by class and reproducible from ``seed``.

    ``val_size`` is a count (int, or a whole float such as 5000.0) or a fraction in (0, 1); 0 gives
    an empty validation set.
    Both parts keep the original example order.
    """
    n = len(data)
    count = _parse_val_size(val_size, n)
    if count == 0:
        empty = torch.zeros(0, dtype=torch.int64)
        return data.subset(torch.arange(n)), data.subset(empty)
    generator = torch.Generator().manual_seed(seed)
    groups = _per_class_indices(data.labels, generator)
    sizes = torch.tensor([len(g) for g in groups], dtype=torch.float64)
    exact = sizes * count / n
    take = exact.floor().long()
    # Largest remainders get the leftover slots, so the total is exactly ``count``.
    leftover = count - int(take.sum())
    if leftover > 0:
        order = torch.argsort(exact - take, descending=True, stable=True)
        take[order[:leftover]] += 1
    val_idx = torch.cat([g[:k] for g, k in zip(groups, take.tolist(), strict=True)])
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[val_idx] = True
    return data.subset(torch.nonzero(~is_val).flatten()), data.subset(torch.nonzero(is_val).flatten())


def class_balanced_subset(data: ImageData, k_per_class: int, seed: int) -> ImageData:
    """Exactly ``k_per_class`` random examples of every class, reproducible from ``seed``.

    Raises DataError naming the classes that have fewer than ``k_per_class`` examples.
    """
    if k_per_class < 1:
        raise DataError(f"k_per_class must be at least 1, got {k_per_class}")
    counts = data.class_counts()
    short = [f"{data.classes[c]} ({int(counts[c])})" for c in range(len(data.classes)) if counts[c] < k_per_class]
    if short:
        raise DataError(
            f"{data.name}: {len(short)} classes have fewer than {k_per_class} examples: "
            f"{', '.join(short[:10])}{' ...' if len(short) > 10 else ''}; ask for fewer per class"
        )
    generator = torch.Generator().manual_seed(seed)
    labels = data.labels.cpu()
    picks = []
    for c in range(len(data.classes)):
        idx = torch.nonzero(labels == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=generator)[:k_per_class]])
    return data.subset(torch.sort(torch.cat(picks)).values)
