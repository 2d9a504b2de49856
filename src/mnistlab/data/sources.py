"""Where a registered dataset's files come from: local folders first, then its mirrors.

Lookup order (docs/design.md, "Datasets"): the directory given by the caller (the dataset folder
itself or its parent), ``$MNISTLAB_DATA_DIR/<name>/``, the user cache
``${XDG_CACHE_HOME:-~/.cache}/mnistlab/datasets/<name>/``, ``SYSTEM_DATA_ROOT/<name>/`` and last
a download into the user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

from mnistlab.data.download import DownloadError, download_file, extract_members
from mnistlab.data.idx import scan_idx
from mnistlab.data.registry import DATASETS, SPLIT_KEYS, DatasetInfo, get_dataset_info
from mnistlab.errors import DataError

SYSTEM_DATA_ROOT = Path("/usr/share/datasets")
STATUS_OK = "ok"
STATUS_NO_CHECKSUM = "no checksum known"
VERIFY_PASSES = frozenset({STATUS_OK, STATUS_NO_CHECKSUM})

__all__ = [
    "SYSTEM_DATA_ROOT", "VERIFY_PASSES", "cache_dir", "download_file", "find_files", "locate",
    "search_dirs", "verify",
]


def cache_root() -> Path:
    """The user cache folder for datasets: ``${XDG_CACHE_HOME:-~/.cache}/mnistlab/datasets``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mnistlab" / "datasets"


def cache_dir(name: str) -> Path:
    """Where downloads of dataset ``name`` go."""
    return cache_root() / name


def search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for dataset ``name``, in lookup order (they need not exist)."""
    dirs: list[Path] = []
    if data_dir is not None:
        given = Path(data_dir).expanduser()
        dirs += [given, given / name]
    env_dir = os.environ.get("MNISTLAB_DATA_DIR")
    if env_dir:
        dirs.append(Path(env_dir).expanduser() / name)
    dirs.append(cache_dir(name))
    dirs.append(SYSTEM_DATA_ROOT / name)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def find_files(folder: Path, info: DatasetInfo) -> dict[str, Path]:
    """The dataset's files present in ``folder`` (each as ``filename`` or ``filename.gz``)."""
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    for key in SPLIT_KEYS:
        name = info.files[key].filename
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
    return found


def _check_download(path: Path, info: DatasetInfo, key: str) -> None:
    """Structural and checksum check of a freshly fetched or extracted file; deletes it if bad."""
    expected = info.files[key].md5
    try:
        got = scan_idx(path).md5
    except DataError as err:
        path.unlink(missing_ok=True)
        raise DownloadError(str(path), "not a valid IDX file") from err
    if expected is not None and got != expected:
        path.unlink(missing_ok=True)
        raise DownloadError(str(path), f"checksum mismatch (expected {expected}, got {got})")


def _fetch_from_mirrors(info: DatasetInfo, dest_dir: Path, missing: list[str], attempts: list[tuple[str, str]],
                        *, progress: bool) -> None:
    """Download each missing file from the first mirror that serves it; record every failure."""
    dead: set[str] = set()  # mirrors that failed at the connection level: not worth another try
    for key in missing:
        fi = info.files[key]
        for mirror in info.mirrors:
            url = f"{mirror}{fi.filename}.gz"
            if mirror in dead:
                continue
            try:
                dest = download_file(url, dest_dir / f"{fi.filename}.gz", md5=fi.md5, progress=progress)
                if fi.md5 is None:  # no checksum: at least make sure it is a whole IDX file
                    _check_download(dest, info, key)
                break
            except DownloadError as err:
                attempts.append((url, err.reason))
                if not err.reason.startswith(("HTTP", "checksum", "not a valid", "corrupt", "incomplete")):
                    dead.add(mirror)
        else:
            return  # this file is unavailable from every mirror; the rest cannot complete the set


def _fetch_from_archives(info: DatasetInfo, attempts: list[tuple[str, str]], *, progress: bool) -> None:
    """Download a zip archive holding the files and unpack, for every dataset that shares it."""
    for url in info.archives:
        archive = cache_root() / "_archives" / url.rsplit("/", 1)[-1]
        sharing = [d for d in DATASETS.values() if url in d.archives] or [info]
        if info not in sharing:
            sharing.append(info)
        wanted = {
            f"{d.files[key].filename}.gz": cache_dir(d.name) / f"{d.files[key].filename}.gz"
            for d in sharing for key in SPLIT_KEYS if key not in find_files(cache_dir(d.name), d)
        }
        try:
            download_file(url, archive, md5=None, progress=progress)
            extract_members(archive, wanted)
        except DownloadError as err:
            attempts.append((url, err.reason))
            continue
        except DataError as err:
            attempts.append((url, f"bad archive ({err})"))
            continue
        finally:
            archive.unlink(missing_ok=True)
        for key, path in find_files(cache_dir(info.name), info).items():
            try:
                _check_download(path, info, key)
            except DownloadError as err:
                attempts.append((f"{url} ({path.name})", err.reason))
        if len(find_files(cache_dir(info.name), info)) == len(SPLIT_KEYS):
            return


def _not_found(info: DatasetInfo, dirs: list[Path], attempts: list[tuple[str, str]], download: bool) -> DataError:
    """One line naming every place looked in, every URL tried and the fixes."""
    places = []
    for d in dirs:
        have = find_files(d, info)
        if have:
            lacking = [info.files[k].filename for k in SPLIT_KEYS if k not in have]
            places.append(f"{d} (lacks {', '.join(lacking)})")
        else:
            places.append(str(d) if d.is_dir() else f"{d} (no such folder)")
    if not os.environ.get("MNISTLAB_DATA_DIR"):
        places.append("$MNISTLAB_DATA_DIR (not set)")
    if attempts:
        tried = "; tried " + ", ".join(f"{url} ({reason})" for url, reason in attempts)
    elif download:
        tried = "; no download source is known"
    else:
        tried = "; download not attempted"
    fixes = [f"set MNISTLAB_DATA_DIR to a folder holding {info.name}/", "pass --data-dir DIR"]
    if info.name == "fashion-mnist":
        fixes.append("apt-get install dataset-fashion-mnist")
    fixes.append(f"run `mnistlab data download {info.name}` with network access")
    return DataError(
        f"dataset {info.name!r} not found: looked in {', '.join(places)}{tried}; to fix: {', or '.join(fixes)}"
    )


def locate(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = True,
           progress: bool = True) -> dict[str, Path]:
    """Paths of the four IDX files of dataset ``name``, downloading them into the cache if needed.

    The first searched folder holding all four files wins. Raises DataError listing every
    folder and URL tried when the files cannot be found or fetched.
    """
    info = get_dataset_info(name)
    dirs = search_dirs(name, data_dir)
    for folder in dirs:
        found = find_files(folder, info)
        if len(found) == len(SPLIT_KEYS):
            return found
    attempts: list[tuple[str, str]] = []
    if download:
        target = cache_dir(name)
        missing = [k for k in SPLIT_KEYS if k not in find_files(target, info)]
        _fetch_from_mirrors(info, target, missing, attempts, progress=progress)
        if len(find_files(target, info)) < len(SPLIT_KEYS) and info.archives:
            _fetch_from_archives(info, attempts, progress=progress)
        found = find_files(target, info)
        if len(found) == len(SPLIT_KEYS):
            return found
    raise _not_found(info, dirs, attempts, download)


def _shape_problem(info: DatasetInfo, key: str, shape: tuple[int, ...], dtype_name: str) -> str | None:
    """What is wrong with a file's shape or dtype, or None when it is as the registry expects."""
    n = info.train_size if key.startswith("train") else info.test_size
    if key.endswith("images"):
        want: tuple[int, ...] = (n, 28, 28)
    elif info.label_column is None:
        want = (n,)
    else:  # [N, K] label table
        if len(shape) != 2 or shape[0] != n or shape[1] <= info.label_column:
            return f"unexpected shape {shape}, expected ({n}, K) with K > {info.label_column}"
        return None if dtype_name.startswith(("int", "uint")) else f"unexpected dtype {dtype_name}"
    if shape != want:
        return f"unexpected shape {shape}, expected {want}"
    return None if dtype_name == "uint8" else f"unexpected dtype {dtype_name}, expected uint8"


def verify(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """Check each local file of dataset ``name``: structure, shape and decompressed md5.

    Returns (path, status) per file; a status in VERIFY_PASSES ("ok", "no checksum known") is a
    pass, anything else describes the fault. Raises DataError when the files cannot be found.
    """
    info = get_dataset_info(name)
    paths = locate(name, data_dir, download=False)
    results: list[tuple[Path, str]] = []
    for key in SPLIT_KEYS:
        path = paths[key]
        try:
            scan = scan_idx(path)
        except DataError as err:
            results.append((path, f"corrupt: {err}"))
            continue
        except OSError as err:
            results.append((path, f"unreadable: {err.strerror or err}"))
            continue
        problem = _shape_problem(info, key, scan.shape, str(scan.dtype.newbyteorder("=")))
        expected = info.files[key].md5
        if problem is not None:
            results.append((path, problem))
        elif expected is None:
            results.append((path, STATUS_NO_CHECKSUM))
        elif scan.md5 == expected:
            results.append((path, STATUS_OK))
        else:
            results.append((path, f"checksum mismatch (expected {expected}, got {scan.md5})"))
    return results
