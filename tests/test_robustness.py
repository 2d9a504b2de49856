"""Robustness: every corruption of the battery, the per-image contrast stretch, scan-like
augmentation, and `mnistlab eval --robustness` on a folder dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import synthetic_digits
from deploy_helpers import CLASSES, make_artifact
from PIL import Image

from mnistlab.assess import Robustness, RobustnessPlan, format_robustness, robustness_plan, robustness_table
from mnistlab.cli.main import main
from mnistlab.config import AugmentConfig
from mnistlab.data.augment import augment_batch, scan_effects
from mnistlab.data.corruptions import CORRUPTIONS, MNIST_C, SEVERITIES, corrupt
from mnistlab.data.imagedata import normalize
from mnistlab.errors import ConfigError

# Corruptions whose result does not depend on the seed (no random draw).
SEEDLESS = {"scale", "brightness", "stripe", "contrast", "inversion", "pixelation", "canny_edges"}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    x, _ = synthetic_digits(8, seed=3)
    return torch.from_numpy(x).unsqueeze(1)  # uint8 [16, 1, 28, 28]


def test_the_battery_holds_the_fifteen_mnist_c_families_and_five_more():
    assert MNIST_C == ("shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
                       "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")
    assert {"gaussian_noise", "contrast", "inversion", "occlusion", "pixelation"} == set(CORRUPTIONS) - set(MNIST_C)
    assert all(len(c.levels) == len(SEVERITIES) for c in CORRUPTIONS.values())


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_corruption_is_seeded_keeps_shape_and_dtype_and_changes_the_image(name, digits):
    for severity in SEVERITIES:
        out = corrupt(digits, name, severity, seed=7)
        assert out.shape == digits.shape and out.dtype == torch.uint8
        assert (out != digits).any(), f"{name} s{severity} left every image as it was"
    assert torch.equal(out, corrupt(digits, name, severity, seed=7)), "same seed, same pixels"
    as_float = corrupt(digits.float() / 255, name, 3, seed=7)
    assert as_float.dtype == torch.float32 and as_float.shape == digits.shape
    assert float(as_float.min()) >= 0 and float(as_float.max()) <= 1
    if name not in SEEDLESS:
        assert not torch.equal(corrupt(digits, name, 3, seed=7), corrupt(digits, name, 3, seed=8))


def test_a_batch_is_corrupted_the_same_way_whatever_else_was_corrupted_before(digits):
    first = corrupt(digits, "fog", 5, seed=0)
    corrupt(digits, "glass_blur", 2, seed=0)  # other draws in between do not shift this one's
    assert torch.equal(first, corrupt(digits, "fog", 5, seed=0))


def test_unknown_corruption_or_severity_is_a_config_error(digits):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(digits, "snow", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(digits, "fog", 6)
    with pytest.raises(ConfigError, match="unknown corruption 'frost'"):
        robustness_plan("fog,frost")


def test_autocontrast_undoes_grey_paper_faint_ink_and_inversion(digits):
    x = digits.float() / 255
    x = torch.where(x > 0.25, x, 0.0) / x.amax((1, 2, 3), keepdim=True)  # black paper, brightest ink 1: passes unchanged
    clean = normalize(x, 0.13, 0.31, autocontrast=True)
    assert torch.allclose(clean, (x - 0.13) / 0.31, atol=1e-5)
    for variant in (0.4 + 0.3 * x, 0.2 * x, 1 - x, 0.9 - 0.5 * x):
        assert torch.allclose(normalize(variant, 0.13, 0.31, autocontrast=True), clean, atol=1e-4)
    assert torch.allclose(normalize(digits, 0.13, 0.31), (digits.float() / 255 - 0.13) / 0.31)  # off: unchanged
    flat = torch.full((1, 1, 28, 28), 0.2)
    assert torch.isfinite(normalize(flat, 0.13, 0.31, autocontrast=True)).all()


def test_scan_effects_are_seeded_bounded_and_switch_on_augmentation(digits):
    p = AugmentConfig(noise=0.2, speckle=0.05, blur=1.5, paper=0.5, fade=0.5, shading=0.4, lines=0.5, scan_prob=1.0)
    assert p.enabled and p.scan and not AugmentConfig(noise=0.2, scan_prob=0.0).scan
    x = digits.float() / 255
    a = scan_effects(x, p, torch.Generator().manual_seed(1))
    b = scan_effects(x, p, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert (a - x).abs().mean() > 0.05
    out = augment_batch(x, AugmentConfig(rotate=10, noise=0.1), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.equal(out, x)


def test_scan_images_leaves_the_other_images_untouched(digits):
    x = digits.float().repeat(8, 1, 1, 1) / 255
    strong = dict(noise=0.2, speckle=0.05, blur=1.5, paper=0.5, fade=0.5, shading=0.4, lines=1.0, outline=1.0, scan_prob=1.0)
    changed = [float(((scan_effects(x, AugmentConfig(**strong, scan_images=share), torch.Generator().manual_seed(2)) - x)
                      .abs().flatten(1).amax(1) > 0).float().mean()) for share in (1.0, 0.5, 0.0)]
    assert changed[0] == 1.0 and 0.25 < changed[1] < 0.75 and changed[2] == 0.0
    assert not AugmentConfig(**strong, scan_images=0.0).scan


def test_outline_turns_strokes_into_their_rings_only_on_its_own_draw():
    x = torch.zeros(2, 1, 12, 12)
    x[:, :, 4:8, 3:9] = 1.0  # a solid stroke
    out = scan_effects(x, AugmentConfig(outline=1.0), torch.Generator().manual_seed(0))
    ring = torch.zeros(12, 12, dtype=torch.bool)
    ring[3:9, 2:10] = True
    ring[4:8, 3:9] = False  # one pixel around the ink, the ink itself dark
    assert torch.equal(out[0, 0] > 0.5, ring) and torch.equal(out[0], out[1])
    assert AugmentConfig(outline=0.5, scan_prob=0.0).scan  # its own probability, not scan_prob
    assert torch.equal(scan_effects(x, AugmentConfig(outline=1e-9), torch.Generator().manual_seed(0)), x)


class _Oracle:
    """A classifier that reads the class off the image's brightest row (a stand-in for a model)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rows = images.float().mean(dim=(1, 3))  # [N, H]
        return torch.nn.functional.one_hot(rows.argmax(1) % 10, 10).float()


def test_robustness_table_is_seeded_and_summarises_mnist_c_at_its_published_severity(digits):
    labels = _Oracle()(digits).argmax(1)
    plan = RobustnessPlan(corruptions=("fog", "stripe", "contrast"), severities=(1, 3, 5), seed=3)
    [first] = robustness_table({"m": _Oracle()}, digits, labels, plan).values()
    [again] = robustness_table({"m": _Oracle()}, digits, labels, plan).values()
    assert first.clean == 1.0 and first.to_dict() == again.to_dict()
    assert isinstance(first, Robustness) and set(first.published()) == {"fog", "stripe"}  # contrast: not MNIST-C
    s = first.summary()
    assert s["mnist_c_mean"] == pytest.approx((first.accuracy["fog"][5] + first.accuracy["stripe"][3]) / 2)
    assert s["worst"] == min(a for sev in first.accuracy.values() for a in sev.values())
    table = format_robustness(first)
    assert "MNIST-C families at their published severity (2)" in table and table.count("\n") >= 5


def _folder_dataset(root) -> str:
    x, y = synthetic_digits(40, seed=5)
    for i, (img, label) in enumerate(zip(x, y, strict=True)):
        folder = root / CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((56, 56)).save(folder / f"{i}.png")
    for c in CLASSES:  # every class needs its folder
        (root / c).mkdir(exist_ok=True)
        if not any((root / c).iterdir()):
            Image.fromarray(x[0]).save(root / c / "extra.png")
    return f"folder:{root}"


def test_eval_robustness_on_a_folder_dataset_is_seeded_and_writes_its_plots(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MNISTLAB_NO_TENSORBOARD", "1")
    artifact = make_artifact(tmp_path / "model")
    spec = _folder_dataset(tmp_path / "scans")
    argv = ["eval", str(artifact), "--dataset", spec, "--robustness", "--corruptions", "fog,zigzag,inversion",
            "--robustness-images", "24"]
    assert main(argv + ["--plots", str(tmp_path / "plots")]) == 0
    first = capsys.readouterr().out
    assert "fog" in first and "zigzag" in first and "inversion" in first and "ECE" in first
    for png in ("robustness.png", "reliability.png", "confusion_matrix.png"):
        assert (tmp_path / "plots" / png).stat().st_size > 1000
    assert main(argv + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    r = report["robustness"]
    for name in ("fog", "zigzag", "inversion"):  # a second run, the same figures as the first one printed
        row = next(line for line in first.splitlines() if line.startswith(name + " "))
        assert row.split()[1:6] == [f"{100 * r['corruptions'][name][str(s)]:.2f}" for s in SEVERITIES]
    assert r["images"] == 24 and set(r["corruptions"]) == {"fog", "zigzag", "inversion"}
    assert set(r["mnist_c"]) == {"fog", "zigzag"} and 0 <= r["mnist_c_mean"] <= 1
    assert {"ece", "nll", "ece_scaled", "temperature"} <= set(report)


def test_eval_robustness_bad_corruption_is_one_line_and_exit_2(tmp_path, capsys):
    artifact = make_artifact(tmp_path / "model")
    code = main(["eval", str(artifact), "--robustness", "--corruptions", "frost"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown corruption 'frost'" in err and len(err.strip().splitlines()) == 1


def test_stretch_is_inside_every_path_for_a_card_that_asks_for_it():
    from mnistlab.artifact import ModelCard

    old = ModelCard.from_dict({"arch": "cnn", "arch_args": {}, "classes": CLASSES, "preprocess": {"mean": 0.1, "std": 0.3}})
    assert old.preprocess.autocontrast is False and old.temperature == 1.0  # older model.json: old behaviour
    assert np.isclose(old.preprocess.mean, 0.1)
