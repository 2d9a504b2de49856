"""Prediction: one predictor over torch and ONNX, the one preprocessing path, the CLI and Kaggle CSVs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from deploy_helpers import CLASSES, digit_image, tiny_artifact, tiny_exported  # noqa: E402
from PIL import Image

from mnistlab.artifact import load_artifact
from mnistlab.cli.main import main
from mnistlab.data.imagedata import normalize
from mnistlab.data.images import preprocess_image
from mnistlab.predict import find_images, load_predictor, predictions_from_probs


@pytest.fixture
def image_tree(tmp_path) -> Path:
    """digits/: good images in nested folders, a corrupt one, an empty one, a text file, a hidden one."""
    root = tmp_path / "digits"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    digit_image("7").save(root / "seven.png")
    digit_image("1", size=64, dark_on_light=True).save(root / "a" / "one.jpg")
    digit_image("0", mode="RGBA").save(root / "a" / "b" / "zero.png")
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50)
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("not an image")
    digit_image("7").save(root / ".hidden" / "skip.png")
    return root


def test_find_images_recursive_sorted_skips_hidden(image_tree):
    found = [p.relative_to(image_tree).as_posix() for p in find_images([image_tree])]
    assert found == ["a/b/zero.png", "a/corrupt.png", "a/empty.png", "a/one.jpg", "seven.png"]
    assert find_images([image_tree / "notes.txt", "missing.png"]) == [image_tree / "notes.txt", Path("missing.png")]


def test_torch_predictor_is_the_model_on_the_one_path():
    artifact = tiny_artifact()
    predictor = load_predictor(artifact)
    model, card = load_artifact(artifact)
    images = [digit_image(k, size=s, dark_on_light=d) for k, s, d in (("7", 280, False), ("1", 90, True), ("0", 50, False))]
    preds = predictor.predict_images(images, top_k=4)
    pixels = torch.from_numpy(np.stack([preprocess_image(i) for i in images]))[:, None]  # [3, 28, 28] -> [3, 1, 28, 28]
    with torch.no_grad():
        expected = model(normalize(pixels, card.preprocess.mean, card.preprocess.std)).softmax(1).numpy()
    for pred, row in zip(preds, expected, strict=True):
        assert pred.label == CLASSES[int(row.argmax())] and pred.probability == pytest.approx(float(row.max()), abs=1e-6)
        assert [t["label"] for t in pred.top_k] == [CLASSES[i] for i in np.argsort(-row)[:4]]
    assert predictor.backend == "torch" and predictor.name == "tiny-model"


def test_onnx_predictor_matches_torch():
    pytest.importorskip("onnxruntime")
    artifact, onnx_file = tiny_exported()
    images = [digit_image(k) for k in "0172"]
    a = load_predictor(artifact).predict_images(images)
    b = load_predictor(onnx_file).predict_images(images)
    assert load_predictor(onnx_file).backend == "onnxruntime"
    for x, y in zip(a, b, strict=True):
        assert x.label == y.label and x.probabilities == pytest.approx(y.probabilities, abs=1e-5)


def test_onnx_prediction_needs_no_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    _, onnx_file = tiny_exported()
    digit_image("7").save(tmp_path / "seven.png")
    code = ("import sys; sys.modules['torch'] = None\n"  # any `import torch` now fails
            "from mnistlab.predict import load_predictor\n"
            f"p = load_predictor({str(onnx_file)!r})\n"
            f"print(p.predict_images([__import__('PIL.Image').Image.open({str(tmp_path / 'seven.png')!r})])[0].label)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in CLASSES


def test_predictions_from_probs_top_k_bounds():
    probs = np.array([[0.1, 0.7, 0.2]], dtype=np.float32)
    [p] = predictions_from_probs(probs, ["a", "b", "c"], top_k=10)
    assert p.label == "b" and [t["label"] for t in p.top_k] == ["b", "c", "a"]
    assert len(predictions_from_probs(probs, ["a", "b", "c"], top_k=0)[0].top_k) == 1


def test_cli_predict_json_reports_and_skips_bad_files(image_tree, capsys):
    rc = main(["predict", str(tiny_artifact()), str(image_tree), "--json", "--top-k", "2"])
    captured = capsys.readouterr()
    assert rc == 1  # some files failed
    rows = [json.loads(line) for line in captured.out.splitlines()]
    good = {Path(r["path"]).name: r for r in rows if "error" not in r}
    bad = {Path(r["path"]).name: r["error"] for r in rows if "error" in r}
    assert set(good) == {"zero.png", "one.jpg", "seven.png"} and set(bad) == {"corrupt.png", "empty.png"}
    for r in good.values():
        assert r["label"] in CLASSES and 0 < r["probability"] <= 1 and len(r["top_k"]) == 2
    assert "empty file" in bad["empty.png"]
    assert "2 of 5 files could not be predicted" in captured.err and "skipped:" in captured.err


def test_cli_predict_table_and_exit_zero(tmp_path, capsys):
    digit_image("7").save(tmp_path / "seven.png")
    assert main(["predict", str(tiny_artifact()), str(tmp_path / "seven.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["path", "label", "prob"] and "seven.png" in lines[1] and len(lines) == 2


def test_cli_predict_onnx_and_errors(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    digit_image("7").save(tmp_path / "seven.png")
    assert main(["predict", str(tiny_exported()[1]), str(tmp_path / "seven.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] in CLASSES
    assert main(["predict", str(tiny_artifact())]) == 2
    assert "give image files" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "no-such-run"), str(tmp_path / "seven.png")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert main(["predict", str(tmp_path / "bad.onnx"), str(tmp_path / "seven.png")]) == 2
    assert "not a valid ONNX model" in capsys.readouterr().err
    assert main(["predict", str(tiny_artifact()), str(tmp_path / "missing.png")]) == 1


def write_kaggle_test(path: Path, pixels: np.ndarray) -> None:
    header = ",".join(f"pixel{i}" for i in range(784))
    rows = [",".join(map(str, p.reshape(-1).tolist())) for p in pixels]
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_kaggle_csv_in_submission_out(tmp_path, capsys, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    model = tiny_exported()[1] if backend == "onnx" else tiny_artifact()
    pixels = np.stack([preprocess_image(digit_image(k, size=s)) for k in "0179" for s in (60, 280)])  # [8, 28, 28]
    write_kaggle_test(tmp_path / "test.csv", pixels)
    out = tmp_path / "submission.csv"
    assert main(["predict", str(model), "--kaggle", str(tmp_path / "test.csv"), "--out", str(out)]) == 0
    assert "wrote 8 predictions" in capsys.readouterr().out
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 9
    ids, labels = zip(*(line.split(",") for line in lines[1:]), strict=True)
    assert list(ids) == [str(i) for i in range(1, 9)]
    expected = [p.label for p in load_predictor(model).predict_pixels(pixels)]
    assert list(labels) == expected


def test_kaggle_rejects_a_labelled_training_file(tmp_path, capsys):
    rows = ["label," + ",".join(f"pixel{i}" for i in range(784)), "3," + ",".join(["0"] * 784)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    assert main(["predict", str(tiny_artifact()), "--kaggle", str(tmp_path / "train.csv")]) == 2
    assert "label" in capsys.readouterr().err
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    assert main(["predict", str(tiny_artifact()), str(tmp_path / "x.png"), "--out", "s.csv"]) == 2


@pytest.mark.parametrize("name", ["fastcnn", "resnet", "cnn", "vit"])
def test_batchnorm_folding_keeps_the_function(name):
    from mnistlab.models import create_model
    from mnistlab.predict import fold_batchnorm

    torch.manual_seed(0)
    model = create_model(name)
    for m in model.modules():  # trained-looking statistics, so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    folded = fold_batchnorm(model, 28)
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert (folded is not model) == has_bn
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(16, 1, 28, 28)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
