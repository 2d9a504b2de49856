"""Attribution maps: every registered model and method, a model whose answer rests on one pixel, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from deploy_helpers import digit_image, make_artifact
from torch import nn

from mnistlab.cli.main import main
from mnistlab.errors import ConfigError
from mnistlab.explain import METHODS, explain, heat_maps
from mnistlab.models import create_model, list_models

NAMES = [e.name for e in list_models()]
PIXEL = (10, 17)  # the one pixel the hand-built model reads


def pixels(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)


def has_spatial_stage(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", NAMES)
def test_maps_have_the_input_shape_and_are_finite(name, method):
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = pixels(1)  # one image: occlusion on vit-small is 169 forward passes of a 10.7M-parameter model
    if method == "gradcam" and not has_spatial_stage(model):
        with pytest.raises(ConfigError, match="gradcam needs convolutions"):
            explain(model, x, mean=0.13, std=0.31, method=method)
        return
    result = explain(model, x, mean=0.13, std=0.31, method=method)
    assert result.attributions.shape == tuple(x.shape)
    assert np.isfinite(result.attributions).all()
    assert result.probabilities.shape == (1, 10)
    np.testing.assert_allclose(result.probabilities.sum(1), 1.0, rtol=1e-5)
    heat = result.heat()
    assert heat.shape == (1, 28, 28) and heat.min() >= 0 and heat.max() <= 1
    assert not model.training


class OnePixel(nn.Module):
    """Logit 3 is a nonlinear function of one pixel; every other logit is a constant."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.tanh(2 * x[:, 0, PIXEL[0], PIXEL[1]])  # [N]
        logits = torch.zeros(len(x), 10, dtype=x.dtype, device=x.device)
        return logits.index_put((torch.arange(len(x)), torch.full((len(x),), 3)), v)


@pytest.mark.parametrize("method", ["saliency", "integrated-gradients", "occlusion"])
def test_the_map_peaks_at_the_one_pixel_that_matters(method):
    x = pixels(3, seed=1)
    x[:, 0, PIXEL[0], PIXEL[1]] = 200  # the pixel holds ink, so blanking it changes the logit
    result = explain(OnePixel(), x, mean=0.0, std=1.0, method=method, target=3)
    for a in result.attributions[:, 0]:
        peak = np.unravel_index(np.abs(a).argmax(), a.shape)
        if method == "occlusion":  # a blanked square spreads its effect over the square (4 px)
            assert abs(peak[0] - PIXEL[0]) < 4 and abs(peak[1] - PIXEL[1]) < 4
            far = np.abs(a).copy()
            far[PIXEL[0] - 3:PIXEL[0] + 4, PIXEL[1] - 3:PIXEL[1] + 4] = 0
            assert far.max() == 0
        else:
            assert tuple(peak) == PIXEL
            assert np.count_nonzero(a) == 1


def test_integrated_gradients_add_up_to_the_change_from_a_blank_image():
    torch.manual_seed(0)
    model = create_model("fastcnn").eval()
    x = pixels(2)
    result = explain(model, x, mean=0.13, std=0.31, method="integrated-gradients")
    with torch.no_grad():
        t = torch.from_numpy(result.targets)
        full = model((x.float() / 255 - 0.13) / 0.31).gather(1, t[:, None])[:, 0]
        blank = model(torch.full_like(x, 0, dtype=torch.float32).sub(0.13).div(0.31)).gather(1, t[:, None])[:, 0]
    np.testing.assert_allclose(result.attributions.sum(axis=(1, 2, 3)), (full - blank).numpy(), rtol=0.1, atol=0.05)


def test_an_explicit_target_and_a_bad_one():
    model = create_model("linear").eval()
    result = explain(model, pixels(), mean=0.13, std=0.31, target=4)
    assert (result.targets == 4).all()
    with pytest.raises(ConfigError, match="not a class"):
        explain(model, pixels(), mean=0.13, std=0.31, target=10)
    with pytest.raises(ConfigError, match="unknown explanation method"):
        explain(model, pixels(), mean=0.13, std=0.31, method="shap")


def test_the_cli_offers_every_method():
    from mnistlab.cli.explain_cmd import METHODS as CLI_METHODS

    assert CLI_METHODS == METHODS


def test_heat_maps_keep_positive_evidence_scaled_to_one():
    a = np.zeros((2, 1, 4, 4), dtype=np.float32)
    a[0, 0, 1, 2], a[0, 0, 3, 3] = 2.0, -5.0
    h = heat_maps(a)
    assert h[0, 1, 2] == 1.0 and h[0, 3, 3] == 0.0 and (h[1] == 0).all()


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_cli_writes_one_png_per_image_and_a_grid(tmp_path, capsys, method):
    model = make_artifact(tmp_path / "model", arch="fastcnn")
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    digit_image("7", size=280).save(images / "seven.png")
    digit_image("1", size=37, dark_on_light=True).resize((37, 90)).save(images / "sub" / "one.jpg")  # not square
    digit_image("0", size=12, mode="RGB").save(images / "zero.bmp")
    out = tmp_path / "why"
    assert main(["explain", str(model), str(images), "--method", method, "--out", str(out), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 3
    for r in records:
        probs = [t["probability"] for t in r["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert r["target"] == r["top"][0]["class"]
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"seven.{method}.png", f"one.{method}.png", f"zero.{method}.png", f"grid.{method}.png"])
    for p in out.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors_are_one_line(tmp_path, capsys):
    linear = make_artifact(tmp_path / "linear", arch="linear")
    digit_image("7").save(tmp_path / "seven.png")
    assert main(["explain", str(linear), str(tmp_path / "seven.png"), "--method", "gradcam", "--out", str(tmp_path / "o")]) == 2
    assert "gradcam needs convolutions" in capsys.readouterr().err
    assert main(["explain", str(linear), str(tmp_path / "seven.png"), "--target", "x", "--out", str(tmp_path / "o")]) == 2
    assert "--target 'x' is not a class" in capsys.readouterr().err
    assert main(["explain", str(linear), str(tmp_path / "seven.png"), "--target", "7", "--out", str(tmp_path / "o")]) == 0
    assert main(["explain", "model.onnx", str(tmp_path / "seven.png"), "--out", str(tmp_path / "o")]) == 2


def test_eval_plots_write_the_top_losses_with_their_explanations(synthetic_data, tmp_path):
    from mnistlab.assess import evaluate_run

    artifact = make_artifact(tmp_path / "art", arch="lenet5")  # untrained: plenty of mistakes to explain
    evaluate_run(artifact, plots=tmp_path / "plots", progress=False)
    sheet = tmp_path / "plots" / "top_losses_explained.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(sheet) as img:
        assert img.height > 500  # 16 mistakes: four rows of image and map pairs


def test_the_card_preprocessing_and_temperature_are_those_of_predict():
    from mnistlab.evaluate import predict_logits

    torch.manual_seed(0)
    model = create_model("fastcnn").eval()
    x = 255 - pixels(3)  # a contrast stretch makes a difference here
    for autocontrast in (False, True):
        result = explain(model, x, mean=0.13, std=0.31, autocontrast=autocontrast, temperature=2.0)
        logits = predict_logits(model, x, mean=0.13, std=0.31, autocontrast=autocontrast)
        np.testing.assert_allclose(result.probabilities, (logits / 2.0).softmax(1).numpy(), rtol=1e-4, atol=1e-6)
