"""`mnistlab pretrain`: the contrastive loss, the headless artifact, finetune from it, exact resume, recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.artifact import load_artifact
from mnistlab.cli.main import main
from mnistlab.config import shipped_recipes
from mnistlab.ssl import nt_xent

PRETRAIN_RECIPES = [r for r in shipped_recipes() if r.startswith("pretrain-")]
QUICK = ["--quiet", "train.threads=1", "train.batch_size=32", "pretrain.probe_images=200", "pretrain.probe_steps=20"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_nt_xent_is_low_for_matching_views_and_high_for_mixed_ones():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    matched, mixed = nt_xent(torch.cat([z, z]), 0.1), nt_xent(torch.cat([z, z[torch.randperm(8)]]), 0.1)
    assert matched < 0.05 < mixed
    uniform = nt_xent(torch.ones(8, 4), 1.0)  # 2B = 8 rows all alike: log(2B - 1)
    assert torch.isclose(uniform, torch.log(torch.tensor(7.0)))


def test_artifact_has_no_head_loads_without_pickle_and_finetune_attaches_a_fresh_one(synthetic_data, capsys):
    code, out, err = _cli(capsys, "pretrain", "--dry-run", "--out", "pt", *QUICK)
    assert code == 0, err
    assert out.startswith("pretrain loss ") and "linear probe " in out and "-> pt" in out
    summary = json.loads(Path("pt/summary.json").read_text())
    assert 0 <= summary["probe_accuracy"] <= 1 and summary["objective"] == "simclr"
    model, card = load_artifact("pt")  # safetensors + JSON: no pickle anywhere
    assert card.classes == [] and not model.head.weight.any()
    weights = load_file("pt/model.safetensors")
    assert not any(k.startswith("proj") for k in weights)  # the projection head stays behind
    code, _, err = _cli(capsys, "finetune", "pt", "--dataset", "mnist", "--shots", "3", "--out", "ft", "--quiet",
                        "finetune.steps=4", "train.threads=1")
    assert code == 0, err
    ft = json.loads(Path("ft/model.json").read_text())
    assert ft["parent"]["head"] == "replaced" and len(ft["classes"]) == 10
    tuned = load_file("ft/model.safetensors")
    assert tuned["head.weight"].shape[0] == 10 and tuned["head.weight"].abs().sum() > 0


class _Stop(Exception):
    pass


def test_resume_gives_the_same_final_weights(synthetic_data, capsys, monkeypatch, interrupt_after_checkpoint):
    argv = ["pretrain", *QUICK, "train.epochs=3", "train.batch_size=200", "pretrain.probe_images=0"]
    assert _cli(capsys, *argv, "--out", "full")[0] == 0
    from mnistlab import ssl

    original = interrupt_after_checkpoint(ssl, 2, _Stop)
    assert _cli(capsys, *argv, "--out", "part")[0] == 1
    assert not Path("part/model.safetensors").exists()
    monkeypatch.setattr(ssl, "save_checkpoint", original)
    code, _, err = _cli(capsys, "pretrain", "--resume", "part", "--quiet")
    assert code == 0, err
    full, part = load_file("full/model.safetensors"), load_file("part/model.safetensors")
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    assert len(Path("part/metrics.jsonl").read_text().splitlines()) == 3
    assert "already complete" in _cli(capsys, "pretrain", "--resume", "part")[1]


@pytest.mark.parametrize("recipe", PRETRAIN_RECIPES)
def test_every_pretrain_recipe_dry_runs(synthetic_data, capsys, recipe):
    code, out, err = _cli(capsys, "pretrain", recipe, "--dry-run", "--out", "dry", *(a for a in QUICK if a != "--quiet"))
    assert code == 0, err
    assert Path("dry/model.json").is_file() and Path("dry/checkpoint.pt").is_file()
    assert "epoch 1/" in out + err and "train_acc" not in out + err  # no labels: the epoch line shows the loss only


def test_help_and_bad_settings(synthetic_data, capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "simclr" in capsys.readouterr().out
    code, _, err = _cli(capsys, "pretrain", "--dry-run", "pretrain.objective=mae", "--quiet")
    assert code == 2 and err.startswith("error: ") and "simclr" in err
    code, _, err = _cli(capsys, "pretrain", "--dry-run", "pretrain.temperature=0", "--quiet")
    assert code == 2 and "pretrain.temperature" in err
