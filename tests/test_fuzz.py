"""Property-based fuzzing of every parser of untrusted input: IDX files, images, CSV files,
``key=value`` overrides and request bodies. Each either returns a well-formed result or raises
the project's own one-line error, never anything else (no crash, no hang, no stray exception).

The fast suite runs FAST examples per property; ``-m slow`` runs SLOW. A coverage-guided
atheris run over the same parsers (tests/fuzz_target.py) runs where atheris is installed.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mnistlab.config import apply_overrides, config_from_dict, load_config  # noqa: E402
from mnistlab.data.csvdata import load_csv  # noqa: E402
from mnistlab.data.idx import encode_idx, read_idx  # noqa: E402
from mnistlab.data.images import load_image, preprocess_image  # noqa: E402
from mnistlab.errors import ConfigError, MnistlabError  # noqa: E402

FAST = int(os.environ.get("MNISTLAB_FUZZ_EXAMPLES", "60"))
SLOW = 2000
QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]


def both(*strategies, **kw_strategies):
    """Two tests from one property: FAST examples in the fast suite, SLOW under ``-m slow``."""
    def wrap(prop):
        def make(n):
            return settings(max_examples=n, deadline=None, database=None, suppress_health_check=QUIET,
                            derandomize=n == FAST)(given(*strategies, **kw_strategies)(prop))
        slow = pytest.mark.slow(make(SLOW))
        return make(FAST), slow
    return wrap


def _scratch(name: str) -> Path:
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"mnistlab-fuzz-{os.getpid()}"
    d.mkdir(exist_ok=True)
    return d / name


# --- IDX ---------------------------------------------------------------------------------------

IDX_DTYPES = st.sampled_from(["u1", "i1", ">i2", ">i4", ">f4", ">f8"])


@st.composite
def idx_files(draw) -> bytes:
    """Bytes that start like an IDX file (or a gzip of one) and then go wrong in any way."""
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, draw(st.integers(0, 255))]))
    dims = draw(st.lists(st.integers(0, 70_000) | st.integers(0, 2**32 - 1), min_size=0, max_size=8))
    head = bytes([0, 0, code, draw(st.sampled_from([len(dims), draw(st.integers(0, 255))]))])
    head += np.asarray(dims, dtype=">u4").tobytes()
    body = draw(st.binary(max_size=3000))
    data = draw(st.sampled_from([head + body, body, head[: draw(st.integers(0, len(head)))]]))
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        if draw(st.booleans()):  # a damaged gzip stream
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=20))
    return data


def _idx_never_crashes(data: bytes) -> None:
    path = _scratch("f.idx")
    path.write_bytes(data)
    try:
        array = read_idx(path)
    except MnistlabError:
        return
    assert array.ndim >= 1 and array.dtype.isnative


test_idx_reader_never_crashes, test_idx_reader_never_crashes_long = both(idx_files())(_idx_never_crashes)


def test_idx_header_with_a_zero_and_huge_dimensions_is_a_data_error():
    # found by atheris: numpy refuses the shape (ValueError) even though it holds no element
    _idx_never_crashes(bytes([0, 0, 8, 4]) + np.asarray([2**32 - 1, 2**32 - 1, 2**31, 0], dtype=">u4").tobytes())


@st.composite
def arrays(draw) -> np.ndarray:
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    dtype = np.dtype(draw(IDX_DTYPES)).newbyteorder("=")
    raw = draw(st.binary(min_size=dtype.itemsize * int(np.prod(shape)), max_size=dtype.itemsize * int(np.prod(shape))))
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _idx_round_trip(array: np.ndarray, compress: bool) -> None:
    path = _scratch("r.idx")
    raw = encode_idx(array)
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    back = read_idx(path)
    assert back.shape == array.shape and back.tobytes() == array.tobytes()  # bitwise, NaNs included


test_idx_round_trip, test_idx_round_trip_long = both(arrays(), st.booleans())(_idx_round_trip)


# --- images ------------------------------------------------------------------------------------

def _seed_images() -> list[bytes]:
    from PIL import Image

    out = []
    for fmt, mode in [("PNG", "L"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("BMP", "1"), ("GIF", "P"), ("TIFF", "I;16"),
                      ("WEBP", "RGB")]:
        buf = io.BytesIO()
        img = Image.new("L", (40, 30), 0)
        img.paste(255, (10, 5, 20, 25))
        img.convert(mode).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


SEEDS = _seed_images()


@st.composite
def image_bytes(draw) -> bytes:
    """A valid image of some format with random bytes overwritten, cut or appended; or plain noise."""
    seed = draw(st.sampled_from(SEEDS))
    kind = draw(st.sampled_from(["flip", "cut", "noise", "append"]))
    if kind == "noise":
        return draw(st.binary(max_size=2000))
    if kind == "cut":
        return seed[: draw(st.integers(0, len(seed)))]
    if kind == "append":
        return seed + draw(st.binary(max_size=200))
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _image_never_crashes(data: bytes) -> None:
    try:
        img = load_image(data, name="fuzz", max_pixels=4_000_000)
        pixels = preprocess_image(img)
    except MnistlabError:
        return
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8


test_image_loader_never_crashes, test_image_loader_never_crashes_long = both(image_bytes())(_image_never_crashes)


# --- CSV ---------------------------------------------------------------------------------------

CELL = st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["", "x", "1.5", "nan", " 7", "1e3", "255", "0"]))


@st.composite
def csv_texts(draw) -> str:
    """A Kaggle-layout CSV, sometimes with a header, wrong widths, odd cells or stray bytes."""
    labelled = draw(st.booleans())
    width = 784 + labelled + draw(st.sampled_from([0, 0, 0, -1, 1]))
    lines = []
    if draw(st.booleans()):
        lines.append(",".join((["label"] if labelled else []) + [f"pixel{i}" for i in range(width - labelled)]))
    for _ in range(draw(st.integers(0, 4))):
        base = draw(st.integers(0, 255))
        row = [str(base)] * width
        if labelled:
            row[0] = str(draw(st.sampled_from([draw(st.integers(-2, 40)), draw(st.integers(0, 10**12))])))
        for _ in range(draw(st.integers(0, 3))):
            row[draw(st.integers(0, width - 1))] = draw(CELL)
        lines.append(",".join(row))
    text = ("\n".join(lines) + draw(st.sampled_from(["", "\n", "\n\n", "\r\n"]))).encode()
    if draw(st.integers(0, 4)) == 0:  # stray bytes, not always UTF-8, somewhere
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.binary(min_size=1, max_size=4)) + text[at:]
    return text


def _csv_never_crashes(text: bytes) -> None:
    path = _scratch("train.csv")
    path.write_bytes(text)
    try:
        data = load_csv(path, "train", spec=f"csv:{path}")
    except MnistlabError:
        return
    assert data.images.shape[1:] == (1, 28, 28) and len(data.labels) == len(data.images) > 0


test_csv_loader_never_crashes, test_csv_loader_never_crashes_long = both(csv_texts())(_csv_never_crashes)


# --- overrides ---------------------------------------------------------------------------------

KEYS = st.sampled_from(["train.epochs", "train.batch_size", "optim.lr", "optim.betas", "data.val_size", "seed",
                        "data.augment.rotate", "model.args.width", "train", "train.epochs.x", "nope", "", ".", "a..b",
                        "train.class_weights", "train.grad_clip", "finetune.small.steps", "schedule.name"])
VALUES = st.one_of(st.text(max_size=12), st.integers().map(str), st.floats().map(str),
                   st.sampled_from(["[1,2]", "{a: 1}", "null", "~", "[", "'", "1e-3", ".inf", "-.nan", "true", "0x10",
                                    "!!python/object:os.system", "*x", "&a 1", "- 1", "1:2"]))


def _override_never_crashes(items: list[tuple[str, str]]) -> None:
    overrides = [f"{k}={v}" for k, v in items]
    try:
        cfg = config_from_dict(apply_overrides({}, overrides))
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    assert cfg.train.epochs >= 1 and cfg.train.batch_size >= 1 and cfg.optim.lr > 0


test_override_parser_never_crashes, test_override_parser_never_crashes_long = both(
    st.lists(st.tuples(KEYS, VALUES), max_size=4))(_override_never_crashes)


def _int_override_round_trips(n: int) -> None:
    assert load_config(None, [f"train.epochs={n}"]).train.epochs == n


test_int_override_round_trips, test_int_override_round_trips_long = both(
    st.integers(1, 10**6))(_int_override_round_trips)


# --- request bodies ----------------------------------------------------------------------------

pytest.importorskip("fastapi")
from starlette.requests import Request  # noqa: E402

from mnistlab.serve.payload import PayloadError, extract_images, int_param  # noqa: E402

CTYPES = st.sampled_from(["multipart/form-data; boundary=b", "multipart/form-data", "application/json", "image/png",
                          "application/octet-stream", "text/plain", "", "multipart/form-data; boundary=\"a b\"",
                          "application/vnd.x+json", "multipart/form-data; boundary=" + "x" * 80])


@st.composite
def bodies(draw) -> tuple[str, bytes]:
    ctype = draw(CTYPES)
    kind = draw(st.sampled_from(["raw", "multipart", "json"]))
    if kind == "multipart":
        parts = []
        for _ in range(draw(st.integers(0, 3))):
            name = draw(st.sampled_from(["file", "files", "x", "", "fi\"le"]))
            filename = draw(st.sampled_from(['; filename="a.png"', "", "; filename*=utf-8''a", '; filename=""']))
            head = draw(st.sampled_from([f'Content-Disposition: form-data; name="{name}"{filename}',
                                         "Content-Type: image/png", "Content-Transfer-Encoding: base64", "garbage"]))
            parts.append(b"--b\r\n" + head.encode() + b"\r\n\r\n" + draw(st.binary(max_size=200)) + b"\r\n")
        body = b"".join(parts) + draw(st.sampled_from([b"--b--\r\n", b"--b--", b"", b"--b"]))
    elif kind == "json":
        value = draw(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                                  | st.sampled_from([base64.b64encode(SEEDS[0]).decode(), "data:image/png;base64,AAAA"]),
                                  lambda c: st.lists(c, max_size=3) | st.dictionaries(
                                      st.sampled_from(["image", "images", "x"]), c, max_size=2), max_leaves=6))
        import json

        body = json.dumps(value).encode() if draw(st.booleans()) else draw(st.binary(max_size=100))
    else:
        body = draw(st.binary(max_size=500))
    return ctype, body


def _request(ctype: str, body: bytes) -> Request:
    headers = [(b"content-type", ctype.encode())] if ctype else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""})


def _payload_never_crashes(case: tuple[str, bytes], many: bool) -> None:
    ctype, body = case
    try:
        items = asyncio.run(extract_images(_request(ctype, body), body, many=many, max_images=4))
    except PayloadError as err:
        assert 400 <= err.status < 500 and err.message
        return
    assert items and all(isinstance(n, str) and isinstance(b, bytes) for n, b in items)
    assert len(items) <= 4 and (many or len(items) == 1)


test_payload_parser_never_crashes, test_payload_parser_never_crashes_long = both(
    bodies(), st.booleans())(_payload_never_crashes)


def _int_param_is_422_or_in_range(raw: str) -> None:
    try:
        value = int_param({"top_k": raw}, "top_k", 1, 1000)
    except PayloadError as err:
        assert err.status == 422 and len(err.message) < 120
        return
    assert 1 <= value <= 1000


test_query_int_param, test_query_int_param_long = both(
    st.one_of(st.text(max_size=30), st.integers().map(str), st.text("0123456789²³¹١٢", max_size=6000)))(
    _int_param_is_422_or_in_range)


# --- coverage-guided: atheris ------------------------------------------------------------------

TARGET = Path(__file__).with_name("fuzz_target.py")


@pytest.mark.parametrize("runs, seconds", [pytest.param(3000, 20, id="short"),
                                           pytest.param(200_000, 300, id="long", marks=pytest.mark.slow)])
def test_atheris_finds_no_crash(runs, seconds, tmp_path):
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"image-{i}").write_bytes(b"\x01" + seed)
    (corpus / "idx").write_bytes(b"\x00" + encode_idx(np.zeros((2, 3), np.uint8)))
    argv = [sys.executable, str(TARGET), f"-runs={runs}", f"-max_total_time={seconds}", "-max_len=4096", "-seed=19",
            f"-artifact_prefix={tmp_path}/", str(corpus)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    done = [line for line in tail.splitlines() if line.startswith("Done ")]
    assert done, tail
    print(done[-1])  # "Done N runs in S second(s)": the number of inputs tried
