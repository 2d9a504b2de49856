"""Reading strings: segmentation on drawn strings, the reader's cuts, `mnistlab read`, `POST /read`,
bad inputs, and `eval` on a plain tree of class folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from deploy_helpers import bomb_png, digit_image, png_bytes, tiny_artifact
from PIL import Image, ImageDraw

from mnistlab.cli.main import main
from mnistlab.data.images import ImageError
from mnistlab.data.segment import StringImage
from mnistlab.predict import Predictor
from mnistlab.read import StringReader

H = 60  # glyph height in the drawings, pixels


def draw_string(text: str, *, gap: int = 20, broken: bool = False, noise: float = 0.0, line: bool = False,
                dark_ink: bool = True, scale: float = 1.0, seed: int = 0) -> Image.Image:
    """``text`` of 0s (rings) and 1s (bars) drawn left to right, ``gap`` pixels apart (negative: overlapping)."""
    widths = {"0": int(0.65 * H), "1": int(0.18 * H)}
    width = sum(widths[c] for c in text) + gap * (len(text) - 1) + 80
    img = Image.new("L", (width, H + 60), 0)
    draw = ImageDraw.Draw(img)
    x, stroke = 40, max(3, H // 9)
    for c in text:
        w = widths[c]
        if c == "0":
            draw.ellipse([x, 30, x + w, 30 + H], outline=255, width=stroke)
        else:
            draw.rectangle([x, 30, x + w - 1, 30 + H], fill=255)
            if broken:  # a gap across the middle of the bar: two stacked pieces
                draw.rectangle([x, 30 + H // 2 - 2, x + w - 1, 30 + H // 2 + 2], fill=0)
        x += w + gap
    a = np.asarray(img, dtype=np.float32)
    rng = np.random.default_rng(seed)
    if line:
        a[30 + int(0.8 * H):30 + int(0.8 * H) + 3, :] = 200
    if noise:
        a = a + rng.normal(0, noise, a.shape)
        specks = rng.random(a.shape) < 0.002
        a[specks] = 255
    if dark_ink:
        a = 235 - a * (200 / 255)  # grey paper, dark ink
    out = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if scale != 1.0:
        out = out.resize((round(out.width * scale), round(out.height * scale)), Image.BILINEAR)
    return out


class RuleReader(Predictor):
    """A stand-in classifier over the prepared 28x28 pixels, knowing rings (0) and bars (1) only:
    a tall narrow shape is a 1, a ring with a hole about as wide as tall is a 0, anything else
    (two glyphs merged, a half ring) is unsure. The reader's cuts are what is tested."""

    backend = "rules"

    def __init__(self) -> None:
        super().__init__({"classes": [str(i) for i in range(10)], "preprocess": {"size": 28}}, Path("rules"))

    def _run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs = np.full((len(pixels), 10), 0.1, dtype=np.float32)
        for k, px in enumerate(pixels[:, 0] > 80):
            rows, cols = np.flatnonzero(px.any(1)), np.flatnonzero(px.any(0))
            h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
            cy, cx = (rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2
            hole = not px[cy - 1:cy + 2, cx - 1:cx + 2].any()
            if w <= 0.4 * h:
                probs[k] = np.eye(10)[1] * 0.98 + 0.002
            elif 0.5 * h <= w <= 1.0 * h and hole and px[cy, cols[0]:cx].any() and px[cy, cx:cols[-1] + 1].any():
                probs[k] = np.eye(10)[0] * 0.98 + 0.002
        return np.log(probs), probs


@pytest.fixture(scope="module")
def reader():
    return StringReader(RuleReader())


@pytest.mark.parametrize("kwargs", [{}, {"broken": True}, {"noise": 12.0}, {"line": True}, {"dark_ink": False},
                                    {"noise": 8.0, "line": True, "broken": True}])
def test_separate_broken_and_noisy_strings_give_one_blob_per_glyph(kwargs):
    work = StringImage.from_image(draw_string("10110", **kwargs))
    blobs = work.blobs()
    assert len(blobs) == 5
    assert [b.x0 for b in blobs] == sorted(b.x0 for b in blobs)


@pytest.mark.parametrize("gap", [0, -6, -12])  # touching, overlapping
def test_touching_and_overlapping_glyphs_are_one_blob_with_a_cut_between_them(gap):
    img = draw_string("00", gap=gap)
    work = StringImage.from_image(img)
    [blob] = work.blobs()
    boundary = 40 + int(0.65 * H) + gap / 2  # where one ring ends and the next begins, input pixels
    cut_xs = []
    for cut in work.cuts(blob)[1:-1]:
        ys = np.arange(blob.y0, blob.y1, dtype=np.float64)
        _, xs = work.to_original(ys, cut.astype(np.float64))
        cut_xs.append(float(np.median(xs)))
    assert min(abs(x - boundary) for x in cut_xs) <= 0.1 * H  # within one candidate step (a tenth of a character)


@pytest.mark.parametrize("gap", [20, 8])  # wide and close; touching strings are measured in benchmarks/read.py
@pytest.mark.parametrize("text", ["1001", "0110", "10101"])
def test_the_reader_reads_separate_glyphs_left_to_right(reader, text, gap):
    got = reader.read(draw_string(text, gap=gap), name="s")
    assert got.text == text
    assert len(got.chars) == len(text)
    xs = [c.box[0] for c in got.chars]
    assert xs == sorted(xs)


@pytest.mark.parametrize("kwargs", [{"scale": 0.35}, {"scale": 6.0}, {"dark_ink": False, "noise": 6.0},
                                    {"line": True}])
def test_any_size_polarity_and_ruling_line(reader, kwargs):
    img = draw_string("1010", **{"gap": 10, **kwargs})
    got = reader.read(img.convert("RGB"), name="s")
    assert got.text == "1010"
    for c in got.chars:  # boxes are in the input's pixels
        x0, y0, x1, y1 = c.box
        assert 0 <= x0 < x1 <= img.width + 1 and 0 <= y0 < y1 <= img.height + 1


def test_boxes_cover_their_glyphs(reader):
    img = draw_string("101", gap=20)
    got = reader.read(img, name="s")
    x = 40
    for c, w in zip(got.chars, [int(0.18 * H), int(0.65 * H), int(0.18 * H)], strict=True):
        assert abs(c.box[0] - x) <= 4 and abs(c.box[2] - (x + w)) <= 5
        assert abs(c.box[1] - 30) <= 4 and abs(c.box[3] - (31 + H)) <= 5
        x += w + 20


def test_expect_length_and_charset(reader):
    img = draw_string("1010", gap=8)
    assert len(reader.read(img, expect_length=4).chars) == 4
    assert len(reader.read(img, expect_length=3).chars) == 3
    only_zero = StringReader(RuleReader(), charset="0")
    assert set(only_zero.read(img).text) <= {"0"}
    from mnistlab.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot read"):
        StringReader(RuleReader(), charset="0a")


def test_confidence_is_the_product_over_characters(reader):
    got = reader.read(draw_string("0110", gap=6))
    assert got.confidence == pytest.approx(np.prod([c.confidence for c in got.chars]))
    assert all(0 <= c.confidence <= 1 for c in got.chars)


@pytest.mark.parametrize("img", [Image.new("L", (300, 80), 255), Image.new("RGB", (300, 80), (20, 20, 20))])
def test_a_blank_image_is_a_clear_error(reader, img):
    with pytest.raises(ImageError, match="no ink"):
        reader.read(img, name="blank.png")


def write_inputs(tmp_path: Path) -> dict[str, Path]:
    paths = {"good": tmp_path / "in" / "string.png", "empty": tmp_path / "bad" / "empty.png",
             "blank": tmp_path / "bad" / "blank.png", "huge": tmp_path / "bad" / "huge.png",
             "text": tmp_path / "bad" / "notes.png"}
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
    draw_string("10110", gap=4).save(paths["good"])
    paths["empty"].write_bytes(b"")
    Image.new("L", (200, 60), 255).save(paths["blank"])
    paths["huge"].write_bytes(bomb_png(20_000, 20_000))
    paths["text"].write_text("not an image")
    return paths


def test_read_json_schema_and_boxed_png(tmp_path, capsys):
    paths = write_inputs(tmp_path)
    out = tmp_path / "boxed"
    assert main(["read", str(tiny_artifact()), str(paths["good"]), "--json", "--out", str(out)]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    obj = json.loads(line)
    assert set(obj) >= {"path", "text", "confidence", "chars"} and obj["path"] == str(paths["good"])
    assert isinstance(obj["text"], str) and len(obj["text"]) == len(obj["chars"]) >= 1
    assert 0.0 <= obj["confidence"] <= 1.0
    w, h = Image.open(paths["good"]).size
    for c in obj["chars"]:
        assert set(c) == {"char", "confidence", "box"} and len(c["char"]) == 1 and c["char"] in "0123456789"
        x0, y0, x1, y1 = c["box"]
        assert 0 <= x0 < x1 <= w + 1 and 0 <= y0 < y1 <= h + 1
    assert "".join(c["char"] for c in obj["chars"]) == obj["text"]
    boxed = Image.open(out / "string.read.png")
    assert boxed.size == (w, h) and boxed.mode == "RGB"


def test_read_expect_length_on_the_command_line(tmp_path, capsys):
    paths = write_inputs(tmp_path)
    assert main(["read", str(tiny_artifact()), str(paths["good"]), "--json", "--expect-length", "5"]) == 0
    assert len(json.loads(capsys.readouterr().out)["text"]) == 5


@pytest.mark.parametrize("kind,message", [("empty", "empty file"), ("blank", "no ink"), ("huge", "too large"),
                                          ("text", "not an image")])
def test_bad_inputs_are_one_clear_line_and_exit_1(tmp_path, capsys, kind, message):
    paths = write_inputs(tmp_path)
    assert main(["read", str(tiny_artifact()), str(paths[kind])]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.startswith("error: ")


def test_bad_options_exit_2(tmp_path, capsys):
    paths = write_inputs(tmp_path)
    assert main(["read", str(tiny_artifact()), str(paths["good"]), "--charset", "xyz"]) == 2
    assert main(["read", str(tiny_artifact()), str(paths["good"]), "--expect-length", "0"]) == 2
    assert main(["read", str(tiny_artifact()), str(tmp_path / "nothing-here")]) != 0


def test_read_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["read", "--help"])
    assert "examples:" in capsys.readouterr().out


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.serve import Settings, create_app

    with TestClient(create_app(Settings(model=str(tiny_artifact()), max_pixels=4_000_000))) as c:
        yield c


def test_post_read(client):
    body = png_bytes(draw_string("10110", gap=4))
    r = client.post("/read", files={"file": ("s.png", body, "image/png")})
    assert r.status_code == 200
    obj = r.json()
    assert set(obj) >= {"path", "text", "confidence", "chars", "model"} and len(obj["text"]) == len(obj["chars"])
    r = client.post("/read?expect_length=5", content=body, headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["text"]) == 5


@pytest.mark.parametrize("query,body,status", [
    ("", b"", 400), ("", b"not an image", 400), ("", "blank", 400), ("", "huge", 400),
    ("?expect_length=0", "good", 422), ("?expect_length=abc", "good", 422), ("?charset=xyz", "good", 422),
])
def test_post_read_bad_input_is_4xx(client, query, body, status):
    data = {"blank": png_bytes(Image.new("L", (200, 60), 255)), "huge": bomb_png(20_000, 20_000),
            "good": png_bytes(draw_string("101"))}.get(body, body) if isinstance(body, str) else body
    r = client.post("/read" + query, content=data, headers={"content-type": "image/png"})
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_eval_on_a_plain_tree_of_class_folders(tmp_path, capsys):
    root = tmp_path / "digits"
    n = 0
    for k in range(10):
        (root / str(k)).mkdir(parents=True)
        for j in range(2):
            digit_image(str(k) if str(k) in "017" else "7", size=60 + 20 * j).save(root / str(k) / f"{j}.png")
            n += 1
    assert main(["eval", str(tiny_artifact()), "--dataset", f"folder:{root}", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["split"] == "all" and out["n"] == n


def test_a_folder_with_train_and_test_still_uses_its_test_split(tmp_path, capsys):
    for split, count in (("train", 3), ("test", 1)):
        for k in range(10):
            (tmp_path / split / str(k)).mkdir(parents=True)
            for j in range(count):
                digit_image("7", size=60 + j).save(tmp_path / split / str(k) / f"{j}.png")
    assert main(["eval", str(tiny_artifact()), "--dataset", f"folder:{tmp_path}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "test"


def test_training_into_a_pipe_writes_one_line_per_epoch(synthetic_data):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mnistlab", "train", "train.epochs=2", "train.threads=1",
                           "--dry-run", "--out", "piped"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    logged = proc.stdout + proc.stderr
    assert "step/s" not in logged and "\r" not in logged  # no refresh lines from the bar
    assert sum(line.startswith("epoch ") for line in logged.splitlines()) == 2
