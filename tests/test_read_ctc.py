"""The sequence reader: the string generator, CTC decoding, the crnn's shapes, training through
`mnistlab train read-ctc` (dry run, exact resume, no test digits), the artifact, `mnistlab read`
and `POST /read` with a crnn run."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import png_bytes, tiny_artifact
from PIL import Image

from mnistlab.artifact import ModelCard, Preprocess, save_artifact
from mnistlab.cli.main import main
from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.segment import StringImage
from mnistlab.data.strings import LEVELS, edit_distance, make_string, training_string
from mnistlab.models.crnn import CRNN, STRIDE
from mnistlab.models.ctc import align, beam, confidences, decode, exact_length, greedy, spans_of
from mnistlab.read_ctc import CtcReader, load_reader

DIGITS = [str(i) for i in range(10)]


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28x28 'digits' (a bright rectangle each) and labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for k in range(n):
        h, w = rng.integers(12, 21), rng.integers(4, 15)
        y, x = rng.integers(2, 28 - h), rng.integers(2, 28 - w)
        images[k, y:y + h, x:x + w] = 255
    return images, rng.integers(0, 10, size=n)


def image_hash(img: Image.Image) -> str:
    return hashlib.sha256(img.tobytes() + str(img.size).encode()).hexdigest()


def test_generators_are_deterministic_and_vary():
    images, labels = blobs(50, 0)
    a = [training_string(images, labels, np.random.default_rng([3, 1])) for _ in range(1)]
    b = [training_string(images, labels, np.random.default_rng([3, 1])) for _ in range(1)]
    assert image_hash(a[0][0]) == image_hash(b[0][0]) and a[0][1] == b[0][1]
    rng = np.random.default_rng(5)
    drawn = [training_string(images, labels, rng) for _ in range(60)]
    assert {len(t) for _, t in drawn} >= {1, 10} and len({img.size for img, _ in drawn}) > 30
    one, two = (make_string(images, labels, 5, "overlap", np.random.default_rng(9)) for _ in range(2))
    assert image_hash(one[0]) == image_hash(two[0]) and one[1] == two[1] and len(one[1]) == 5
    assert set(LEVELS) == {"wide", "normal", "touching", "overlap"}
    assert edit_distance("12345", "1245") == 1 and edit_distance("", "12") == 2


def test_training_strings_never_use_test_digits(synthetic_data, monkeypatch):
    """Every digit a training string is drawn from is a training digit, never a test one."""
    import mnistlab.read_train as rt
    from mnistlab.data.dataset import load_dataset

    test_rows = {r.tobytes() for r in load_dataset("mnist", "test", progress=False).images[:, 0].numpy()}
    train_rows = {r.tobytes() for r in load_dataset("mnist", "train", progress=False).images[:, 0].numpy()}
    seen: list[np.ndarray] = []
    real = rt.training_string

    def spy(images, labels, rng, **kw):
        seen.append(images)
        return real(images, labels, rng, **kw)

    monkeypatch.setattr(rt, "training_string", spy)
    cfg = load_config(resolve_recipe("read-ctc"), ["train.epochs=1"])
    rt.run_read_training(cfg, out="run", quiet=True, dry_run=True)
    assert seen
    used = {r.tobytes() for r in seen[0]}
    assert used <= train_rows and not used & (test_rows - train_rows)


def frames(path: list[int], k: int = 10, p: float = 0.9) -> np.ndarray:
    """Log-probabilities [T, k + 1] putting ``p`` on the class of each frame of ``path`` (0 = blank)."""
    lp = np.full((len(path), k + 1), (1 - p) / k)
    lp[np.arange(len(path)), path] = p
    return np.log(lp)


def test_greedy_merges_repeats_and_drops_blanks():
    logp = frames([0, 4, 4, 0, 4, 0, 8, 8, 0])  # '3', '3', '7'
    spans, _ = greedy(logp, list(range(10)))
    assert [c for c, _, _ in spans] == [3, 3, 7] and spans[0][1:] == (1, 2) and spans[2][1:] == (6, 7)
    assert confidences(logp, spans) == pytest.approx([0.9, 0.9, 0.9])


def test_charset_restricts_the_answer():
    logp = frames([0, 4, 0, 6, 0])  # '3', '5'
    lp = logp.copy()
    lp[3, 2] = np.log(0.08)  # the runner-up of the '5' frame is '1'
    spans, _ = greedy(lp, [1, 3])
    assert [c for c, _, _ in spans] == [3, 1]
    assert [c for c, _, _ in greedy(lp, [7])[0]] == []  # nothing allowed is likelier than the blank


def test_exact_length_adds_or_merges_characters():
    logp = frames([0, 4, 4, 0, 4, 0, 8, 8])  # greedy: 3 3 7
    for n in (1, 2, 3, 4, 5):
        spans, path = exact_length(logp, list(range(10)), n)
        assert len(spans) == n and len(path) == len(logp)
    assert [c for c, _, _ in exact_length(logp, list(range(10)), 3)[0]] == [3, 3, 7]
    assert [c for c, _, _ in exact_length(logp, list(range(10)), 2)[0]] in ([3, 7], [3, 3])
    assert exact_length(logp, list(range(10)), 9) is None  # 8 frames cannot hold 9 characters
    assert [c for c, _, _ in exact_length(logp, [3], 3)[0]] == [3, 3, 3]


def test_beam_finds_the_likeliest_string_where_the_best_path_does_not():
    """Two frames, each 0.6 blank and 0.4 '3': the best path is two blanks (0.36), but '3' has three
    alignments ('3-', '-3', '33': 0.64), so the likeliest string is '3'."""
    lp = np.full((2, 11), 1e-9)
    lp[:, 0], lp[:, 4] = 0.6, 0.4
    logp = np.log(lp)
    assert greedy(logp, list(range(10)))[0] == []
    spans, path = beam(logp, list(range(10)))
    assert [c for c, _, _ in spans] == [3] and len(path) == 2
    assert beam(logp, [5])[0] == []  # a charset without '3'


def test_beam_reads_clear_frames_as_the_best_path_does():
    rng = np.random.default_rng(0)
    for _ in range(20):
        path = rng.integers(0, 11, size=int(rng.integers(1, 30)))
        logp = frames(path.tolist(), p=0.98)
        assert beam(logp, list(range(10)))[0] == greedy(logp, list(range(10)))[0]
    assert decode(frames([0, 4, 0, 6, 0]), list(range(10))) == [(3, 1, 1), (5, 3, 3)]
    assert len(decode(frames([0, 4, 0, 6, 0]), list(range(10)), expect_length=3)) == 3  # the length given wins


def test_align_reads_exactly_the_labels():
    logp = frames([0, 4, 4, 0, 4, 0, 8, 8])
    for labels in ([3, 3, 7], [3, 7], [7], [3, 3, 3, 7], []):
        path = align(logp, labels)
        assert [c for c, _, _ in spans_of(path)] == labels and len(path) == len(logp)
    assert align(logp, [3, 3, 7])[1:3].tolist() == [4, 4]  # the frames that carry it
    assert not align(frames([4, 4]), [3, 3]).any()  # a repeat needs a blank between: 2 frames cannot


@pytest.mark.parametrize("width", [8, 37, 160])
def test_crnn_shape_contract_and_padding(width):
    torch.manual_seed(0)
    model = CRNN(widths=(4, 8, 8), hidden=8).eval()
    x = torch.rand(1, 1, 32, width)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (1, width // STRIDE, 11)
    padded = torch.cat([x, torch.zeros(1, 1, 32, 40)], dim=3)
    with torch.no_grad():
        got = model(padded, torch.tensor([width // STRIDE]))[0, :width // STRIDE]
        # the convs see a few padding columns at the right edge (the backward pass carries that a
        # little to the left); the recurrence itself never runs over the padding frames
        np.testing.assert_allclose(got[:-3].numpy(), model(x)[0, :-3].numpy(), atol=2e-3)
    with pytest.raises(ValueError, match="32 pixels high"):
        model(torch.rand(1, 1, 28, 64))


def make_ctc_artifact(folder: Path, seed: int = 0) -> Path:
    """An untrained crnn artifact, as a read-ctc run writes one."""
    torch.manual_seed(seed)
    model = CRNN(widths=(4, 8, 8), hidden=8)
    card = ModelCard(arch=model.arch_name, arch_args=model.arch_args, classes=DIGITS,
                     preprocess=Preprocess(size=32, mean=0.0, std=1.0, mnist_style=False), dataset="mnist")
    save_artifact(folder, model.eval(), card)
    return folder


def scan(text_len: int = 5, seed: int = 0) -> Image.Image:
    images, labels = blobs(40, seed)
    return make_string(images, labels, text_len, "normal", np.random.default_rng(seed))[0]


def test_reader_answers_with_boxes_inside_the_image(tmp_path):
    reader = load_reader(make_ctc_artifact(tmp_path / "ctc"))
    assert isinstance(reader, CtcReader)
    img = scan()
    for n in (1, 5, 7):
        got = reader.read(img, name="s", expect_length=n)
        assert len(got.text) == n == len(got.chars)
        assert got.confidence == pytest.approx(float(np.prod([c.confidence for c in got.chars])))
        for c in got.chars:
            x0, y0, x1, y1 = c.box
            assert 0 <= x0 < x1 <= img.width + 1 and 0 <= y0 < y1 <= img.height + 1 and 0 < c.confidence <= 1
    assert set(reader.with_charset("27").read(img, expect_length=4).text) <= {"2", "7"}


def test_artifact_round_trip_needs_no_pickle(tmp_path, monkeypatch):
    src = make_ctc_artifact(tmp_path / "ctc")
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.json", "model.safetensors"):
        shutil.copy(src / name, copy / name)
    line = StringImage.from_image(scan()).line(32).pixels
    want = CtcReader.load(src).frames(line)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load (pickle) used to load an artifact")

    monkeypatch.setattr(torch, "load", no_pickle)
    np.testing.assert_allclose(CtcReader.load(copy).frames(line), want, atol=1e-6)


@pytest.mark.slow  # three small trainings: about 25 s on an idle core, over a minute on a busy one
def test_the_recipe_trains_resumes_exactly_and_reads(synthetic_data, capsys, monkeypatch, interrupt_after_checkpoint):
    """A small run of read-ctc writes a run; interrupted after its first epoch and resumed it ends
    with the same weights; `mnistlab read` on it answers the JSON schema."""
    from safetensors.torch import load_file

    import mnistlab.read_train as rt

    args = ["train", "read-ctc", "train.epochs=2", "read.steps_per_epoch=3", "read.val_strings=4", "read.test_strings=4",
            "read.workers=0", "train.batch_size=4", "--quiet"]  # small by its config: --resume reads config.yaml
    assert main([*args, "--out", "whole"]) == 0
    summary = json.loads(Path("whole/summary.json").read_text())
    assert summary["task"] == "read" and summary["test_accuracy"] is not None and summary["epochs"] == 2
    assert {"config.yaml", "model.json", "model.safetensors", "checkpoint.pt", "metrics.jsonl"} <= {
        p.name for p in Path("whole").iterdir()}
    assert json.loads(Path("whole/model.json").read_text())["arch"] == "crnn"

    real = interrupt_after_checkpoint(rt, 1)
    assert main([*args, "--out", "cut"]) != 0  # interrupted after the first epoch's checkpoint
    monkeypatch.setattr(rt, "save_checkpoint", real)
    assert not Path("cut/summary.json").exists()
    assert main(["train", "--resume", "cut", "--quiet"]) == 0
    a, b = load_file("whole/model.safetensors"), load_file("cut/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()

    Path("s.png").write_bytes(png_bytes(scan(4)))
    assert main(["read", "whole", "s.png", "--json", "--expect-length", "4", "--out", "boxed"]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(obj) == {"path", "text", "confidence", "chars"} and len(obj["text"]) == 4
    assert all(set(c) == {"char", "confidence", "box"} and len(c["box"]) == 4 for c in obj["chars"])
    assert Image.open("boxed/s.read.png").size == Image.open("s.png").size


def test_the_reader_keeps_and_resumes_its_ema(synthetic_data, monkeypatch, interrupt_after_checkpoint):
    """With train.ema the reader validates and saves the averaged weights, not the live ones, and a
    run interrupted after its first epoch resumes to the same averaged weights."""
    from safetensors.torch import load_file

    import mnistlab.read_train as rt
    from mnistlab.checkpoint import load_checkpoint

    args = ["train", "read-ctc", "train.epochs=2", "train.ema=0.9", "train.restore_best=false", "model.args.widths=[4,8,8]",
            "model.args.hidden=8", "read.steps_per_epoch=3", "read.val_strings=2", "read.test_strings=2",
            "read.workers=0", "train.batch_size=4", "--quiet"]
    assert main([*args, "--out", "whole"]) == 0
    saved = load_file("whole/model.safetensors")
    ckpt = load_checkpoint(Path("whole"))
    assert all(torch.equal(saved[k], ckpt["ema"][k].contiguous()) for k in saved)
    assert any(not torch.equal(saved[k], ckpt["model"][k].contiguous()) for k in saved if saved[k].is_floating_point())

    real = interrupt_after_checkpoint(rt, 1)
    assert main([*args, "--out", "cut"]) != 0
    monkeypatch.setattr(rt, "save_checkpoint", real)
    assert main(["train", "--resume", "cut", "--quiet"]) == 0
    resumed = load_file("cut/model.safetensors")
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)


@pytest.mark.parametrize("setting", ["train.label_smoothing=0.1", "train.compile=true", "train.tta=true",
                                     "data.augment.rotate=10", "train.early_stop_patience=2"])
def test_a_read_run_refuses_settings_it_would_ignore(synthetic_data, capsys, setting):
    assert main(["train", "read-ctc", setting, "--dry-run", "--out", "run"]) == 2
    err = capsys.readouterr().err
    key = setting.split("=")[0]
    assert "task read does not use" in err and ("data.augment" if key.startswith("data.augment") else key) in err
    assert not Path("run").exists()


def test_read_json_schema_and_boxed_png_with_a_ctc_run(tmp_path, capsys):
    run = make_ctc_artifact(tmp_path / "ctc")
    img = tmp_path / "s.png"
    img.write_bytes(png_bytes(scan(4)))
    assert main(["read", str(run), str(img), "--json", "--expect-length", "4", "--out", str(tmp_path / "boxed")]) == 0
    obj = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(obj) == {"path", "text", "confidence", "chars"} and len(obj["text"]) == 4 == len(obj["chars"])
    assert all(set(c) == {"char", "confidence", "box"} and len(c["box"]) == 4 for c in obj["chars"])
    assert Image.open(tmp_path / "boxed" / "s.read.png").size == Image.open(img).size


def test_read_errors_with_a_ctc_run(tmp_path, capsys):
    run = make_ctc_artifact(tmp_path / "ctc")
    blank = tmp_path / "blank.png"
    Image.new("L", (120, 40), 250).save(blank)
    assert main(["read", str(run), str(blank)]) == 1
    assert "no ink" in capsys.readouterr().err
    assert main(["read", str(run), str(blank), "--charset", "xyz"]) == 2
    assert "charset" in capsys.readouterr().err


def test_post_read_with_a_sequence_reader(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.serve import Settings, create_app

    run = make_ctc_artifact(tmp_path / "reader")
    settings = Settings(model=str(tiny_artifact()), read_model=str(run), max_pixels=4_000_000)
    with TestClient(create_app(settings)) as client:
        body = png_bytes(scan())
        r = client.post("/read?expect_length=5", content=body, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        obj = r.json()
        assert obj["model"] == "reader" and len(obj["text"]) == 5 == len(obj["chars"])
        assert client.post("/read?charset=xyz", content=body, headers={"content-type": "image/png"}).status_code == 422
        blank = png_bytes(Image.new("L", (200, 60), 255))
        assert client.post("/read", content=blank, headers={"content-type": "image/png"}).status_code == 400


def test_the_fast_labelling_gives_the_numpy_labels():
    from mnistlab.data.segment import label_components, label_runs

    rng = np.random.default_rng(0)
    for density in (0.2, 0.45, 0.6):
        mask = rng.random((40, 90)) < density
        a, na = label_components(mask)
        b, nb = label_runs(mask)
        assert na == nb and np.array_equal(a, b)
