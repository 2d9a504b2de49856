"""Calibration: ECE and NLL, temperature scaling fitted at the end of training, and the
temperature in every path that serves probabilities (predict, the ONNX graph)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deploy_helpers import make_artifact

from mnistlab.artifact import META, load_artifact, read_card
from mnistlab.calibration import ece, fit_temperature, nll, reliability
from mnistlab.cli.main import main
from mnistlab.evaluate import calibration_of, report_from_logits
from mnistlab.predict import TorchPredictor


def _overconfident(n: int = 4000, true_t: float = 3.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / true_t): the right temperature is true_t."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 10, generator=g) * 2.0
    labels = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z * true_t, labels


def test_ece_is_zero_when_confidence_matches_accuracy_and_grows_when_it_does_not():
    logits = torch.tensor([[np.log(4.0), 0.0]]).repeat(100, 1)  # confidence 0.8 for class 0
    labels = torch.zeros(100, dtype=torch.long)
    labels[80:] = 1  # 80% right: calibrated
    assert ece(logits.softmax(1), labels) == pytest.approx(0.0, abs=1e-6)
    labels[50:] = 1  # 50% right at confidence 0.8
    assert ece(logits.softmax(1), labels) == pytest.approx(0.3, abs=1e-6)
    r = reliability(logits.softmax(1), labels)
    assert sum(r.count) == 100 and len(r.count) == 15 and r.count[11] == 100  # 0.8 falls in (11/15, 12/15]


def test_temperature_fitting_lowers_the_nll_and_finds_the_temperature_the_data_was_made_with():
    logits, labels = _overconfident(true_t=3.0)
    t = fit_temperature(logits, labels)
    assert 2.5 < t < 3.6
    assert nll(logits, labels, t) < nll(logits, labels) - 0.1
    assert ece((logits / t).softmax(1), labels) < ece(logits.softmax(1), labels)
    under, labels2 = _overconfident(true_t=0.5, seed=1)  # underconfident: T below 1
    assert fit_temperature(under, labels2) < 0.7
    assert fit_temperature(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long)) == 1.0


def test_report_keeps_the_argmax_and_reports_calibration_before_and_after():
    logits, labels = _overconfident()
    t = fit_temperature(logits, labels)
    plain, scaled = report_from_logits(logits, labels, [str(i) for i in range(10)]), \
        report_from_logits(logits, labels, [str(i) for i in range(10)], temperature=t)
    assert plain.accuracy == scaled.accuracy and torch.equal(plain.confusion, scaled.confusion)
    c = scaled.calibration
    assert c.temperature == t and c.nll_scaled < c.nll and c.ece_scaled < c.ece
    d = scaled.to_dict()
    assert {"ece", "nll", "ece_scaled", "nll_scaled", "temperature", "reliability"} <= set(d)
    assert calibration_of(logits, labels).ece == pytest.approx(c.ece)


def test_training_fits_a_temperature_and_every_report_carries_calibration(synthetic_data, capsys):
    assert main(["train", "--dry-run", "--out", "run", "--quiet"]) == 0
    card = read_card("run")
    summary = json.loads(open("run/summary.json").read())
    assert card.temperature == summary["temperature"] and card.temperature > 0
    assert 0 <= summary["test_ece"] <= 1 and 0 <= summary["test_ece_scaled"] <= 1 and summary["test_nll"] > 0
    assert open("run/reliability.png", "rb").read(4) == b"\x89PNG"
    capsys.readouterr()
    assert main(["eval", "run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["temperature"] == card.temperature and 0 <= report["ece_scaled"] <= 1  # (a dry run tests on a slice)


def test_an_old_model_json_without_temperature_or_autocontrast_loads_with_the_old_behaviour(tmp_path):
    artifact = make_artifact(tmp_path / "old")
    card = json.loads((artifact / META).read_text())
    card.pop("temperature")
    card["preprocess"].pop("autocontrast")
    (artifact / META).write_text(json.dumps(card))
    model, loaded = load_artifact(artifact)
    assert loaded.temperature == 1.0 and loaded.preprocess.autocontrast is False
    pixels = torch.randint(0, 256, (6, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    logits, probs = TorchPredictor(artifact).run(pixels.numpy())
    assert np.allclose(probs, torch.from_numpy(logits).softmax(1).numpy(), atol=1e-6)


def _with(artifact, **fields):
    card = json.loads((artifact / META).read_text())
    card["temperature"] = fields.get("temperature", 1.0)
    card["preprocess"]["autocontrast"] = fields.get("autocontrast", False)
    (artifact / META).write_text(json.dumps(card))
    return artifact


def test_predict_and_onnx_export_use_the_temperature_and_agree_with_pytorch(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mnistlab.predict import OnnxPredictor

    artifact = _with(make_artifact(tmp_path / "m"), temperature=2.5, autocontrast=True)
    model, card = load_artifact(artifact)
    pixels = torch.randint(0, 256, (40, 1, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    pixels[:20] = pixels[:20] // 3 + 120  # grey, low-contrast images: the stretch has work to do
    from mnistlab.data.imagedata import normalize

    with torch.inference_mode():
        want_logits = model(normalize(pixels, card.preprocess.mean, card.preprocess.std, autocontrast=True))
    want = (want_logits / 2.5).softmax(1).numpy()
    t_logits, t_probs = TorchPredictor(artifact).run(pixels.numpy())
    assert np.allclose(t_probs, want, atol=1e-5) and np.allclose(t_logits, want_logits.numpy(), atol=1e-4)
    assert main(["export", str(artifact), "--out", str(tmp_path / "m.onnx")]) == 0
    capsys.readouterr()
    o_logits, o_probs = OnnxPredictor(tmp_path / "m.onnx").run(pixels.numpy())
    assert np.abs(o_probs - want).max() < 1e-5 and np.abs(o_logits - want_logits.numpy()).max() < 1e-4
    assert (o_probs.argmax(1) == want_logits.numpy().argmax(1)).all()  # the temperature never moves the argmax
    assert not np.allclose(o_probs, want_logits.softmax(1).numpy(), atol=1e-3)  # and it is really applied
