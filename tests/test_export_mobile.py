"""Phone export: ONNX Runtime's ORT format (float, int8) and ExecuTorch, each checked against eager PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from deploy_helpers import make_artifact  # noqa: E402

from mnistlab.artifact import load_artifact  # noqa: E402
from mnistlab.cli.main import main  # noqa: E402
from mnistlab.evaluate import predict_logits  # noqa: E402
from mnistlab.export_mobile import executorch_available  # noqa: E402
from mnistlab.predict import OnnxPredictor  # noqa: E402


def is_ort_format(path: Path) -> bool:
    """An ORT-format file is a flatbuffer with file identifier 'ORTM' (bytes 4 to 8)."""
    return path.read_bytes()[4:8] == b"ORTM"


def test_ort_float_and_int8_with_parity_reports(synthetic_data, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "art", arch="lenet5")
    out = tmp_path / "m.ort"
    assert main(["export", str(artifact), "--format", "ort", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "ort" and report["bytes"] == out.stat().st_size
    p = report["parity"]
    assert p["images"] == 300 and p["source"] == "mnist test"
    assert p["same_predictions"] == 1.0 and p["max_logit_diff"] <= 1e-4
    assert is_ort_format(out) and not is_ort_format(artifact / "model.json")
    # the graph takes uint8 pixels and normalises inside; the card rides along in the metadata
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape[0] == "batch"
    model, card = load_artifact(artifact)
    pixels = np.random.default_rng(0).integers(0, 256, (5, 1, 28, 28), dtype=np.uint8)
    logits = OnnxPredictor(out).run(pixels)[0]
    eager = predict_logits(model, torch.from_numpy(pixels), mean=card.preprocess.mean,
                           std=card.preprocess.std).numpy()
    np.testing.assert_allclose(logits, eager, atol=1e-4)

    q = tmp_path / "q.ort"
    assert main(["export", str(artifact), "--format", "ort", "--int8", "--calibration-images", "200",
                 "--out", str(q)]) == 0
    text = capsys.readouterr().out
    assert "int8: identical predictions" in text and "points" in text
    assert is_ort_format(q) and q.stat().st_size < out.stat().st_size  # int8 weights


def test_predict_and_serve_take_the_ort_file(synthetic_data, tmp_path, capsys):
    """An .ort file is run by ONNX Runtime like an .onnx one: same probabilities as the artifact;
    explain names what it needs instead."""
    from fastapi.testclient import TestClient
    from PIL import Image

    from mnistlab.predict import load_predictor
    from mnistlab.serve import Settings, create_app

    artifact = make_artifact(tmp_path / "art", arch="lenet5")
    out = tmp_path / "m.ort"
    assert main(["export", str(artifact), "--format", "ort", "--out", str(out), "--check-images", "50"]) == 0
    image = tmp_path / "digit.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 30), dtype=np.uint8)).save(image)
    capsys.readouterr()
    rows = []
    for model in (artifact, out):
        assert main(["predict", str(model), str(image), "--json"]) == 0
        rows.append(json.loads(capsys.readouterr().out))
    assert rows[0]["label"] == rows[1]["label"]
    assert abs(rows[0]["probability"] - rows[1]["probability"]) < 1e-4
    predictor = load_predictor(out)
    assert predictor.backend == "onnxruntime" and predictor.name == "m"
    with TestClient(create_app(Settings(model=str(out), threads=1))) as client:
        r = client.post("/predict", files={"file": ("digit.png", image.read_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == rows[0]["label"] and abs(r.json()["probability"] - rows[0]["probability"]) < 1e-4
    assert main(["explain", str(out), str(image), "--out", str(tmp_path / "ex")]) == 2
    assert "explanations need the PyTorch model" in capsys.readouterr().err


def test_phone_export_refusals(synthetic_data, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "art", arch="linear")
    (tmp_path / "taken.ort").write_bytes(b"x")
    assert main(["export", str(artifact), "--format", "ort", "--out", str(tmp_path / "taken.ort")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(artifact), "--format", "executorch", "--int8", "--out", str(tmp_path / "m.pte")]) == 2
    assert "--int8 is for" in capsys.readouterr().err
    assert main(["export", str(artifact), "--format", "ort", "--out", str(tmp_path)]) == 2


@pytest.mark.slow  # importing ExecuTorch and lowering to XNNPACK take ~20 s on 2 busy cores
def test_executorch_pte_matches_eager(synthetic_data, tmp_path, capsys):
    if (why := executorch_available()) is not None:
        pytest.skip(f"ExecuTorch unavailable: {why}")
    artifact = make_artifact(tmp_path / "art", arch="fastcnn")
    out = tmp_path / "m.pte"
    assert main(["export", str(artifact), "--format", "executorch", "--out", str(out), "--check-images", "40",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    p = report["parity"]
    assert report["format"] == "executorch" and p["images"] == 40
    assert p["same_predictions"] == 1.0 and p["max_logit_diff"] <= 1e-3
    assert out.stat().st_size == report["bytes"] > 1000


@pytest.mark.real_data
def test_ort_parity_on_the_mnist_test_set(real_data_dir, tmp_path, monkeypatch, capsys):
    """The done criterion, on a model trained briefly on real MNIST: float ORT agrees with eager on
    >= 99.9% of the 10,000 test images; int8 ORT loses at most 0.2 points of accuracy."""
    monkeypatch.setenv("MNISTLAB_NO_TENSORBOARD", "1")
    run = tmp_path / "run"
    assert main(["train", "data.train_limit=20000", "train.threads=1", "--out", str(run), "--quiet"]) == 0
    assert main(["export", str(run), "--format", "ort", "--int8", "--out", str(tmp_path / "q.ort"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    float_, int8 = report["parity"], report["int8_parity"]
    assert float_["images"] == 10_000 and float_["source"] == "mnist test"
    assert float_["same_predictions"] >= 0.999
    assert float_["accuracy_eager"] > 0.97
    assert int8["accuracy_eager"] - int8["accuracy_export"] <= 0.002


def test_executorch_missing_is_one_line_naming_the_fix(synthetic_data, tmp_path, capsys, monkeypatch):
    import mnistlab.export_mobile as mobile

    monkeypatch.setattr(mobile, "executorch_available", lambda: "ModuleNotFoundError: No module named 'executorch'")
    artifact = make_artifact(tmp_path / "art", arch="linear")
    assert main(["export", str(artifact), "--format", "executorch", "--out", str(tmp_path / "m.pte")]) == 2
    err = capsys.readouterr().err
    assert "needs ExecuTorch" in err and "pip install" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.pte").exists()
