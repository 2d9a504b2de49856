"""The IDX file format of MNIST and its family: read, write and check, gzip-compressed or not.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of dimensions), one
big-endian uint32 per dimension, then the array in C order, big-endian. Whether a file is
gzip-compressed is decided by its first two bytes (1f 8b), never by its name.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mnistlab.errors import DataError
from mnistlab.fileio import atomic_write_bytes

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES_BY_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_DTYPES.items()}
_CHUNK = 1 << 20
_REFETCH = "delete it and download it again (mnistlab data download NAME)"


@dataclass(frozen=True)
class IdxInfo:
    """What a full pass over an IDX file found: element type, shape and md5 of the decompressed bytes."""

    dtype: np.dtype
    shape: tuple[int, ...]
    md5: str


def is_gzip(path: str | os.PathLike) -> bool:
    """True when the file starts with the gzip magic bytes."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def _open(path: Path):
    """A binary file object over the decompressed bytes of ``path``."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def iter_decompressed(path: str | os.PathLike, chunk_size: int = _CHUNK) -> Iterator[bytes]:
    """The decompressed bytes of a (possibly gzip-compressed) file, in chunks.

    Raises DataError when the gzip stream is corrupt or truncated.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            while chunk := f.read(chunk_size):
                yield chunk
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({err}); it is corrupt or truncated: {_REFETCH}") from err


def decompressed_md5(path: str | os.PathLike) -> str:
    """The md5 hex digest of the file's decompressed bytes."""
    digest = hashlib.md5()
    for chunk in iter_decompressed(path):
        digest.update(chunk)
    return digest.hexdigest()


def _parse_header(head: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the magic and dims at the start of ``head``; return (dtype, shape, header length)."""
    if len(head) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(head)} bytes); it is truncated: {_REFETCH}")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{path} is not an IDX file (magic {head[:4].hex()} should start with 0000); "
            f"it is corrupt or not a dataset file: {_REFETCH}"
        )
    code, ndim = head[2], head[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path} has unknown IDX dtype code 0x{code:02x}; it is corrupt: {_REFETCH}")
    if ndim == 0:
        raise DataError(f"{path} declares 0 dimensions; it is corrupt: {_REFETCH}")
    header_len = 4 + 4 * ndim
    if len(head) < header_len:
        raise DataError(f"{path} ends inside its IDX header; it is truncated: {_REFETCH}")
    shape = tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))
    return IDX_DTYPES[code], shape, header_len


def _check_payload(path: Path, dtype: np.dtype, shape: tuple[int, ...], payload_len: int) -> None:
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if payload_len < expected:
        raise DataError(
            f"{path} is truncated: shape {shape} needs {expected} data bytes but it holds {payload_len}: {_REFETCH}"
        )
    if payload_len > expected:
        raise DataError(
            f"{path} is corrupt: {payload_len - expected} bytes follow the {shape} array it declares: {_REFETCH}"
        )


def _check_declared_size(path: Path, dtype: np.dtype, shape: tuple[int, ...], header_len: int) -> None:
    """Refuse a header whose array could not fit in the file, before allocating memory for it."""
    expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    stored = path.stat().st_size
    # deflate expands at most about 1032:1, so a gzip file cannot hold more than this
    capacity = stored * 1100 + (1 << 20) if is_gzip(path) else stored - header_len
    if expected > capacity:
        raise DataError(f"{path} is truncated: shape {shape} needs {expected} data bytes, more than the file "
                        f"can hold: {_REFETCH}")
    if np.prod([d for d in shape if d], dtype=np.float64) * dtype.itemsize >= 2**62:  # e.g. a 0 among huge sizes: numpy refuses it
        raise DataError(f"{path} is corrupt: its header declares an impossible shape {shape}: {_REFETCH}")


def _read_exact(f, buffer: memoryview) -> int:
    """Fill ``buffer`` from ``f`` as far as the stream allows; returns the bytes read."""
    done = 0
    while done < len(buffer):
        n = f.readinto(buffer[done:])
        if not n:
            break
        done += n
    return done


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) into a writable native-endian array.

    Raises DataError naming the file when it is not IDX, truncated, has trailing bytes or is
    a broken gzip stream.
    """
    path = Path(path)
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) == 4 and head[:2] == b"\0\0":
                head += f.read(4 * head[3])
            dtype, shape, header_len = _parse_header(head, path)
            _check_declared_size(path, dtype, shape, header_len)
            array = np.empty(shape, dtype=dtype)  # filled straight from the stream, no extra copy
            expected = array.nbytes
            got = _read_exact(f, memoryview(array.reshape(-1).view(np.uint8)))
            extra = len(f.read(_CHUNK)) if got == expected else 0
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid gzip file ({err}); it is corrupt or truncated: {_REFETCH}") from err
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from err
    _check_payload(path, dtype, shape, got + extra)
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def scan_idx(path: str | os.PathLike) -> IdxInfo:
    """Stream through an IDX file, checking its structure and hashing its decompressed bytes.

    Uses constant memory, so it suits verifying large files without loading them.
    """
    path = Path(path)
    digest = hashlib.md5()
    head = b""
    total = 0
    for chunk in iter_decompressed(path):
        if len(head) < 4 + 4 * 255:
            head += chunk[: 4 + 4 * 255 - len(head)]
        digest.update(chunk)
        total += len(chunk)
    dtype, shape, header_len = _parse_header(head, path)
    _check_payload(path, dtype, shape, total - header_len)
    return IdxInfo(dtype=dtype, shape=shape, md5=digest.hexdigest())


def encode_idx(array: np.ndarray) -> bytes:
    """The raw (uncompressed) IDX bytes of ``array``."""
    array = np.asarray(array)
    code = _CODES_BY_KIND.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        supported = ", ".join(str(dt.newbyteorder("=")) for dt in IDX_DTYPES.values())
        raise ValueError(f"IDX cannot store dtype {array.dtype}; use one of {supported}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"IDX dimensions must fit in uint32, got {array.shape}")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file, atomically.

    ``compress`` defaults to whether ``path`` ends in ``.gz``. Compressed output is
    deterministic (no timestamp in the gzip header).
    """
    path = Path(path)
    if compress is None:
        compress = path.name.endswith(".gz")
    data = encode_idx(array)
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    atomic_write_bytes(path, data)
