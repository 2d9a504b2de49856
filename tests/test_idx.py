"""IDX reading and writing: round trips, format details, and every kind of damaged file."""

from __future__ import annotations

import gzip
import hashlib

import numpy as np
import pytest

from mnistlab.data.idx import decompressed_md5, encode_idx, read_idx, scan_idx, write_idx
from mnistlab.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]


def _sample(dtype, shape) -> np.ndarray:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
    return (rng.standard_normal(shape) * 1e3).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gz", [False, True])
def test_round_trip_every_dtype(tmp_path, dtype, gz):
    array = _sample(dtype, (5, 3, 4))
    path = tmp_path / ("a.idx" + (".gz" if gz else ""))
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == (5, 3, 4)
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


@pytest.mark.parametrize("shape", [(7,), (2, 8), (1, 2, 3, 4)])
def test_round_trip_shapes(tmp_path, shape):
    array = _sample(np.int32, shape)
    write_idx(tmp_path / "a", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "a"), array)


def test_header_layout_is_big_endian_idx():
    data = encode_idx(np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int16))
    assert data[:4] == bytes([0, 0, 0x0B, 2])
    assert data[4:12] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big")
    assert data[12:14] == (1).to_bytes(2, "big")
    assert len(data) == 12 + 6 * 2


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = _sample(np.uint8, (4, 28, 28))
    disguised = tmp_path / "images.idx"  # gzip content without a .gz name
    write_idx(disguised, array, compress=True)
    assert disguised.read_bytes()[:2] == b"\x1f\x8b"
    plain = tmp_path / "images.gz"  # raw content with a .gz name
    write_idx(plain, array, compress=False)
    assert plain.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(disguised), array)
    np.testing.assert_array_equal(read_idx(plain), array)


def test_write_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "a.gz"
    write_idx(path, np.zeros(3, np.uint8))
    write_idx(path, np.ones(4, np.uint8))
    np.testing.assert_array_equal(read_idx(path), np.ones(4, np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz"]  # no temp files left
    with pytest.raises(ValueError, match="cannot store dtype"):
        write_idx(path, np.ones(4, np.uint64))
    np.testing.assert_array_equal(read_idx(path), np.ones(4, np.uint8))  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz"]


def test_gzip_output_is_deterministic(tmp_path):
    array = _sample(np.uint8, (3, 28, 28))
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def test_md5_is_of_decompressed_bytes(tmp_path):
    array = _sample(np.uint8, (3, 28, 28))
    expected = hashlib.md5(encode_idx(array)).hexdigest()
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "a", array)
    assert decompressed_md5(tmp_path / "a.gz") == expected == decompressed_md5(tmp_path / "a")
    info = scan_idx(tmp_path / "a.gz")
    assert (info.shape, info.dtype, info.md5) == ((3, 28, 28), np.dtype(">u1"), expected)


@pytest.mark.parametrize("reader", [read_idx, scan_idx])
def test_bad_magic(tmp_path, reader):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="bad-magic.*not an IDX file"):
        reader(path)


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "weird"
    path.write_bytes(b"\x00\x00\x07\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(DataError, match="weird.*dtype code 0x07"):
        read_idx(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("reader", [read_idx, scan_idx])
def test_truncated_payload(tmp_path, gz, reader):
    raw = encode_idx(_sample(np.uint8, (10, 28, 28)))[:-100]
    path = tmp_path / ("cut.gz" if gz else "cut")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=r"cut.* is truncated.*download it again"):
        reader(path)


def test_truncated_header(tmp_path):
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00\x08\x03" + (10).to_bytes(4, "big"))
    with pytest.raises(DataError, match="short.*truncated"):
        read_idx(path)
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="tiny.*truncated"):
        read_idx(tmp_path / "tiny")


def test_extra_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(encode_idx(np.zeros((2, 2), np.uint8)) + b"xyz")
    with pytest.raises(DataError, match="long is corrupt: 3 bytes follow"):
        read_idx(path)


def test_bad_gzip_stream(tmp_path):
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"this is not deflate data" * 10)
    with pytest.raises(DataError, match="garbage.gz is not a valid gzip file"):
        read_idx(garbage)
    good = gzip.compress(encode_idx(_sample(np.uint8, (50, 28, 28))))
    half = tmp_path / "half.gz"
    half.write_bytes(good[: len(good) // 2])  # an interrupted download
    for reader in (read_idx, scan_idx, decompressed_md5):
        with pytest.raises(DataError, match="half.gz is not a valid gzip file"):
            reader(half)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "nope")


@pytest.mark.parametrize("gz", [False, True])
def test_absurd_header_is_refused_without_allocating(tmp_path, gz):
    raw = b"\x00\x00\x0e\x03" + (2**31).to_bytes(4, "big") * 3 + b"\x00" * 64  # claims 2^93 doubles
    path = tmp_path / "huge"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match="huge is truncated"):
        read_idx(path)
