"""`mnistlab data`: list, inspect, verify and download the registered datasets."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnistlab.cli.main import add_common

DESCRIPTION = """List, inspect, verify and download the registered datasets.

A registered dataset is looked for in --data-dir (the dataset folder or its parent), then
$MNISTLAB_DATA_DIR/<name>/, then ${XDG_CACHE_HOME:-~/.cache}/mnistlab/datasets/<name>/, then
/usr/share/datasets/<name>/, and last downloaded from its mirrors into that cache.
Besides registered names, training accepts folder:PATH (one sub-folder of images per class)
and csv:PATH (the Kaggle digit-recognizer layout)."""

EXAMPLES = """examples:
  mnistlab data list                              # every dataset, its sizes and where it is
  mnistlab data info fashion-mnist                # classes, statistics, files, mirrors
  mnistlab data verify mnist --data-dir ~/data    # checksums of the local files
  mnistlab data download kmnist                   # fetch into the user cache
  MNISTLAB_DATA_DIR=~/datasets mnistlab data list
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the `data` verb and its sub-commands."""
    p = sub.add_parser("data", help="list, inspect, verify and download datasets", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    specs = (
        ("list", "list the registered datasets and where they are found", False),
        ("info", "describe one dataset: classes, statistics, files, mirrors", True),
        ("verify", "check the local files of one dataset (structure and checksums)", True),
        ("download", "download one dataset into the user cache (if not found locally)", True),
    )
    for name, help_text, takes_name in specs:
        c = commands.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
        if takes_name:
            c.add_argument("name", metavar="NAME", help="a registered dataset, e.g. mnist (see `mnistlab data list`)")
        c.add_argument("--data-dir", metavar="DIR", help="look here first (the dataset folder or its parent)")
        if name == "download":
            c.add_argument("--quiet", action="store_true", help="no progress bar")
        add_common(c)
    p.set_defaults(func=run)


def _where(name: str, data_dir: str | None) -> Path | None:
    """The folder holding the dataset locally, or None."""
    from mnistlab.data.sources import locate
    from mnistlab.errors import DataError

    try:
        return locate(name, data_dir, download=False)["train_images"].parent
    except DataError:
        return None


def _list(data_dir: str | None) -> int:
    from mnistlab.data.registry import DATASETS

    print(f"{'name':16s} {'classes':>7s} {'train':>8s} {'test':>8s}  local files")
    for name, info in DATASETS.items():
        where = _where(name, data_dir)
        print(f"{name:16s} {len(info.classes):7d} {info.train_size:8d} {info.test_size:8d}  "
              f"{where if where else 'not found (mnistlab data download ' + name + ')'}")
    return 0


def _info(name: str, data_dir: str | None) -> int:
    from mnistlab.data.registry import SPLIT_KEYS, get_dataset_info
    from mnistlab.data.sources import locate, search_dirs
    from mnistlab.errors import DataError

    info = get_dataset_info(name)
    try:
        paths: dict[str, Path] = locate(name, data_dir, download=False)
    except DataError:
        paths = {}
    print(f"{info.name}: {info.description}")
    print(f"homepage:  {info.homepage}")
    print(f"examples:  {info.train_size:,} train, {info.test_size:,} test")
    print(f"classes:   {len(info.classes)}: {', '.join(info.classes)}")
    note = f" ({info.stats_note})" if info.stats_note else ""
    print(f"mean/std:  {info.mean:.4f} / {info.std:.4f} of pixel/255 on the train set{note}")
    extras = [text for flag, text in ((info.transpose, "images transposed to MNIST orientation"),
                                      (info.label_offset, f"labels shifted down by {info.label_offset}"),
                                      (info.label_column is not None, f"class from label column {info.label_column}"))
              if flag]
    if extras:
        print(f"decoding:  {'; '.join(extras)}")
    print("files:")
    for key in SPLIT_KEYS:
        fi = info.files[key]
        found = paths.get(key)
        print(f"  {key:13s} {fi.filename:36s} md5 {fi.md5 or 'unknown':32s}  {found or 'not found'}")
    print("mirrors:   " + (", ".join(info.mirrors) or "none"))
    if info.archives:
        print("archives:  " + ", ".join(info.archives))
    print("looks in:  " + ", ".join(str(d) for d in search_dirs(name, data_dir)))
    return 0


def _verify(name: str, data_dir: str | None) -> int:
    from mnistlab.data.sources import VERIFY_PASSES, verify

    results = verify(name, data_dir)
    for path, status in results:
        print(f"{status:20s} {path}")
    failed = [status for _, status in results if status not in VERIFY_PASSES]
    if failed:
        print(f"{name}: {len(failed)} of {len(results)} files failed; delete them and run "
              f"`mnistlab data download {name}`")
        return 1
    print(f"{name}: all {len(results)} files ok")
    return 0


def _download(name: str, data_dir: str | None, progress: bool) -> int:
    from mnistlab.data.registry import get_dataset_info
    from mnistlab.data.sources import locate

    get_dataset_info(name)
    already = _where(name, data_dir)
    if already is not None:
        print(f"{name}: already present in {already} (nothing downloaded)")
        return 0
    paths = locate(name, data_dir, download=True, progress=progress)
    print(f"{name}: downloaded and verified into {paths['train_images'].parent}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Run one `mnistlab data` sub-command; returns the exit status."""
    data_dir = getattr(args, "data_dir", None)
    if args.data_command == "list":
        return _list(data_dir)
    if args.data_command == "info":
        return _info(args.name, data_dir)
    if args.data_command == "verify":
        return _verify(args.name, data_dir)
    return _download(args.name, data_dir, progress=not args.quiet)
