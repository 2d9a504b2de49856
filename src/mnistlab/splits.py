"""Train / validation / test data from a config: the one place the split rules live.

    pool  = the training split of data.dataset (or a caller's own pool, e.g. fine-tuning's shots)
    val   = carved from the pool, stratified by class and seeded (data.val_size)
    train = the rest, capped at data.train_limit
    test  = the test split of data.test_dataset (default data.dataset), with the training classes
    --dry-run: the first images of each

Every command (train, finetune, cv, tune, eval) makes its data here, so a run's validation
split can be rebuilt from its saved config alone.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mnistlab.config import Config
from mnistlab.data.dataset import ImageData, load_dataset, split_train_val
from mnistlab.data.folders import is_plain_tree
from mnistlab.errors import DataError, MnistlabError

DRY_RUN_TRAIN = 512  # images in the --dry-run slice
DRY_RUN_EVAL = 256
SMALL_SET_VAL_FRACTION = 0.1  # validation share when the training set is too small for val_size images


@dataclass
class Splits:
    """The data of one run; ``val`` and ``test`` are None when there is none."""

    train: ImageData
    val: ImageData | None
    test: ImageData | None

    def without_test(self) -> Splits:
        """The same train and validation data, with no test set (searches never look at it)."""
        return Splits(self.train, self.val, None)


def eval_split(spec: str, split: str) -> str:
    """The split an evaluation of ``spec`` reads: "all" for the test split of a plain class-folder tree
    (``folder:PATH`` with no train/ and test/ inside), whose every image is evaluated; else ``split``."""
    if split == "test" and spec.startswith("folder:") and is_plain_tree(Path(spec[len("folder:"):].strip()).expanduser()):
        return "all"
    return split


def load_pool(cfg: Config, *, progress: bool = True) -> ImageData:
    """The training split of ``cfg.data.dataset``: the pool validation is carved from."""
    return load_dataset(cfg.data.dataset, "train", data_dir=cfg.data.data_dir, progress=progress)


def effective_val_size(val_size: int | float, n: int) -> int | float:
    """``data.val_size`` for a pool of ``n`` images: a count over a quarter of the pool becomes a fraction."""
    return SMALL_SET_VAL_FRACTION if val_size >= 1 and n < 4 * val_size else val_size


def load_test(cfg: Config, classes: list[str], *, progress: bool = True) -> ImageData | None:
    """The test set the config names, checked against the training ``classes``.

    None, with a warning, when the dataset has no test split and none was named.
    """
    spec = cfg.data.test_dataset or cfg.data.dataset
    try:
        test = load_dataset(spec, "test", data_dir=cfg.data.data_dir, progress=progress)
    except MnistlabError as err:
        if cfg.data.test_dataset is not None:
            raise
        print(f"warning: no test set ({err}); set data.test_dataset to evaluate on one", file=sys.stderr)
        return None
    if test.classes != classes:
        raise DataError(f"test set '{spec}' has classes {test.classes[:5]}... but the training data has "
                        f"{classes[:5]}...", hint="use a test set with the same class folders")
    return test


def dry_run_slice(splits: Splits) -> Splits:
    """The first images of each split, for a --dry-run of the pipeline."""
    def head(data: ImageData | None, n: int) -> ImageData | None:
        return data.subset(torch.arange(min(n, len(data)))) if data is not None else None

    return Splits(head(splits.train, DRY_RUN_TRAIN), head(splits.val, DRY_RUN_EVAL), head(splits.test, DRY_RUN_EVAL))


def make_splits(cfg: Config, *, pool: ImageData | None = None, test: bool = True, dry_run: bool = False,
                progress: bool = True) -> Splits:
    """Train / validation / test as ``cfg.data`` says (validation carved from the pool, seeded).

    ``pool`` replaces the config's training split (fine-tuning's shots); ``test=False`` loads no
    test set; ``dry_run`` keeps a slice of each split.
    """
    dc = cfg.data
    train = load_pool(cfg, progress=progress) if pool is None else pool
    val_size = effective_val_size(dc.val_size, len(train))
    if val_size != dc.val_size and progress:
        print(f"note: data.val_size={dc.val_size:g} is over a quarter of the {len(train):,} training images; "
              f"validating on {val_size:.0%} of them instead (set data.val_size to choose)", file=sys.stderr)
    train, val = split_train_val(train, val_size, seed=cfg.seed) if val_size > 0 else (train, None)
    if dc.train_limit is not None:
        train = train.subset(torch.arange(min(dc.train_limit, len(train))))
    splits = Splits(train, val if val is not None and len(val) else None,
                    load_test(cfg, train.classes, progress=progress) if test else None)
    return dry_run_slice(splits) if dry_run else splits
