"""Fetching files over HTTP: progress bar, checksum on the decompressed bytes, atomic rename.

A download is written to ``<dest>.part`` and renamed onto ``dest`` only once it is complete and
verified, so ``dest`` either does not exist or holds a good file.
"""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from mnistlab import __version__
from mnistlab.data.idx import decompressed_md5
from mnistlab.errors import DataError
from mnistlab.fileio import durable_replace

_CHUNK = 1 << 16


class DownloadError(DataError):
    """A download that failed; ``reason`` is a short phrase such as "connection refused"."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot download {url}: {reason}")


def describe_url_error(err: BaseException) -> str:
    """A short human phrase for why a URL could not be fetched."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return "host not found, no network?"
    if isinstance(reason, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(reason, ConnectionResetError):
        return "connection reset"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__


def part_path(dest: Path) -> Path:
    """Where a download to ``dest`` is written before it is verified."""
    return dest.with_suffix(dest.suffix + ".part")


def download_file(url: str, dest: Path, *, md5: str | None, progress: bool = True, timeout: float = 30) -> Path:
    """Download ``url`` to ``dest`` and check the md5 of its decompressed bytes.

    Raises DownloadError (a DataError) with a short ``reason`` on a network error, an
    incomplete transfer or a checksum mismatch; ``dest`` is then left untouched.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    request = urllib.request.Request(url, headers={"User-Agent": f"mnistlab/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = response.headers.get("Content-Length")
            expected = int(total) if total and total.isdigit() else None
            received = 0
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name, disable=not progress or not os.isatty(2), leave=False) as bar:  # no refresh lines in logs
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        if expected is not None and received != expected:
            raise DownloadError(url, f"incomplete transfer ({received} of {expected} bytes)")
        if md5 is not None:
            got = decompressed_md5(part)
            if got != md5:
                raise DownloadError(url, f"checksum mismatch (expected {md5}, got {got})")
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    except DataError as err:  # a corrupt gzip stream found while hashing
        part.unlink(missing_ok=True)
        raise DownloadError(url, "corrupt gzip data") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        part.unlink(missing_ok=True)
        raise DownloadError(url, describe_url_error(err)) from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    durable_replace(part, dest)
    return dest


def extract_members(archive: Path, wanted: dict[str, Path]) -> dict[str, Path]:
    """Copy the zip members whose base names are keys of ``wanted`` to the mapped paths.

    Each member is written through a ``.part`` file and renamed, so targets are never half
    written. Returns the members found and where they went; missing members are left out.
    """
    done: dict[str, Path] = {}
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                base = info.filename.rsplit("/", 1)[-1]
                target = wanted.get(base)
                if target is None or info.is_dir():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                part = part_path(target)
                try:
                    with zf.open(info) as src, open(part, "wb") as dst:
                        shutil.copyfileobj(src, dst, _CHUNK)
                    durable_replace(part, target)
                finally:
                    part.unlink(missing_ok=True)
                done[base] = target
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(f"{archive} is not a valid zip archive ({err}); delete it and download it again") from err
    return done
