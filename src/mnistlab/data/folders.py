"""``folder:PATH`` datasets: one sub-folder of image files per class, optionally split into train/ and test/.

Layouts accepted:

    PATH/<class>/*.png                      the whole folder is the train split
    PATH/train/<class>/*, PATH/test/<class>/*   the two splits; classes come from train/

Every image goes through ``preprocess_image``, the same path ``predict`` and the server use.
Unreadable files are skipped, recorded in ``ImageData.skipped`` and reported on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mnistlab.data.imagedata import ImageData
from mnistlab.data.images import ImageError, image_to_array, images_to_tensor, is_image_file
from mnistlab.data.registry import MNIST_MEAN, MNIST_STD
from mnistlab.errors import DataError


def _class_dirs(root: Path) -> list[Path]:
    """The class sub-folders of ``root``, sorted by name (hidden folders left out)."""
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _visible_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder`` (recursively), sorted."""
    files = []
    for path in folder.rglob("*"):
        rel = path.relative_to(folder).parts
        if path.is_file() and not any(part.startswith(".") for part in rel):
            files.append(path)
    return sorted(files)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _split_root(root: Path, split: str, spec: str) -> tuple[Path, list[str]]:
    """The folder holding ``split``'s class folders, and the class names (from the train split)."""
    train_dir, test_dir = root / "train", root / "test"
    if train_dir.is_dir():
        classes = [d.name for d in _class_dirs(train_dir)]
        if split == "train":
            return train_dir, classes
        if not test_dir.is_dir():
            raise DataError(f"{spec}: {root} has train/ but no test/ sub-folder; add {test_dir} "
                            f"or pass a separate test dataset")
        extra = sorted({d.name for d in _class_dirs(test_dir)} - set(classes))
        if extra:
            raise DataError(f"{spec}: {test_dir} has class folders that train/ lacks: {', '.join(extra)}; "
                            f"rename or remove them")
        return test_dir, classes
    if split == "test":
        raise DataError(f"{spec}: {root} has no test/ sub-folder, so it only provides a train split; "
                        f"pass a separate test dataset or arrange it as {root}/train/<class> and {root}/test/<class>")
    return root, [d.name for d in _class_dirs(root)]


def is_plain_tree(root: Path) -> bool:
    """True for a folder of class sub-folders with no train/ or test/ split inside: one set of images."""
    return root.is_dir() and not (root / "train").is_dir() and not (root / "test").is_dir()


def load_folder(root: Path, split: str, *, spec: str) -> ImageData:
    """Load the ``split`` of an image-folder dataset; see the module docstring for layouts.

    Raises DataError when the folder is missing, has no class sub-folders or no readable image.
    """
    if not root.is_dir():
        raise DataError(f"{spec}: {root} is not a folder; give a folder holding one sub-folder per class")
    split_dir, classes = _split_root(root, split, spec)
    if not classes:
        raise DataError(f"{spec}: {split_dir} has no class sub-folders; put images in one sub-folder "
                        f"per class, e.g. {split_dir}/cat/1.png")
    loose = [p for p in split_dir.iterdir() if p.is_file() and is_image_file(p)]
    if loose:
        _warn(f"ignored {len(loose)} image files directly in {split_dir} (e.g. {loose[0].name}); "
              f"put each in its class sub-folder")
    arrays, labels = [], []
    skipped: list[tuple[str, str]] = []
    ignored: list[Path] = []
    for label, cls in enumerate(classes):
        class_dir = split_dir / cls
        if not class_dir.is_dir():
            _warn(f"{split_dir} has no folder for class {cls!r}; it has no {split} examples")
            continue
        count = 0
        for path in _visible_files(class_dir):
            if not is_image_file(path):
                ignored.append(path)
                continue
            try:
                arrays.append(image_to_array(path))
            except ImageError as err:
                skipped.append((str(path), err.reason))
                _warn(f"skipped {path}: {err.reason}")
                continue
            labels.append(label)
            count += 1
        if count == 0:
            _warn(f"class {cls!r} ({class_dir}) has no readable images")
    if ignored:
        _warn(f"ignored {len(ignored)} files without an image extension (e.g. {ignored[0]})")
    if not arrays:
        raise DataError(f"{spec}: no readable images in {split_dir} ({len(skipped)} skipped); "
                        f"add png/jpg/bmp/gif/tif/webp files under its class sub-folders")
    return ImageData(
        images=images_to_tensor(arrays),
        labels=torch.tensor(labels, dtype=torch.int64),
        classes=classes,
        name=spec,
        mean=MNIST_MEAN,
        std=MNIST_STD,
        skipped=skipped,
    )
