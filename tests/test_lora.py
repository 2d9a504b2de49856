"""LoRA adapters: identity at start, only adapters and head train, merge is exact, artifacts reload."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import make_parent
from safetensors.torch import load_file

from mnistlab.artifact import ModelCard, Preprocess, load_artifact, save_artifact
from mnistlab.errors import ConfigError, ModelError
from mnistlab.finetune.strategies import apply_depth, freeze_norm_statistics, param_groups
from mnistlab.models import create_model
from mnistlab.models.lora import (
    LoRAConv2d,
    LoRALinear,
    apply_lora,
    apply_lora_from_card,
    is_adapter_param,
    lora_layers,
    merge_lora,
    select_targets,
)

TINY = {
    "cnn": {},
    "mlp": {"hidden": [32, 16]},
    "resnet": {"widths": [8, 16], "depths": [1, 1]},
    "vit": {"dim": 16, "depth": 2, "heads": 2},
    "lenet5": {},
}


def _model(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(arch, **TINY[arch]).eval()


def _randomise_adapters(model: torch.nn.Module) -> None:
    """B starts at zero, so give it values to make the adapters do something."""
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_adapted_model_starts_equal_to_the_base(arch):
    model = _model(arch)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
        adapters = apply_lora(model, rank=4, alpha=8, targets=["linear", "conv"])
        after = model(x)
    assert adapters["modules"] and all(not n.startswith("head") for n in adapters["modules"])
    assert torch.equal(before, after)
    assert all(torch.count_nonzero(layer.lora_B) == 0 for layer in lora_layers(model).values())
    assert all(torch.count_nonzero(layer.lora_A) > 0 for layer in lora_layers(model).values())


@pytest.mark.parametrize("arch", ["cnn", "resnet", "vit"])
def test_only_adapters_and_head_change_in_training(arch):
    model = _model(arch)
    apply_lora(model, rank=2, alpha=4, targets=["linear", "conv"])
    groups = param_groups(model, 1e-2, 1, adapters=True)
    apply_depth(model, 1, adapters=True)
    freeze_norm_statistics(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1)
    model.train()
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    allowed = {k for k in before if is_adapter_param(k) or k.startswith("head.")}
    assert changed <= allowed, sorted(changed - allowed)  # BatchNorm statistics included
    assert any(k.endswith("lora_B") for k in changed) and any(k.endswith("lora_A") for k in changed)
    assert {"head.weight", "head.bias"} <= changed
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in dict(model.named_parameters()) if is_adapter_param(n) or n.startswith("head.")}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_merged_and_unmerged_outputs_agree(arch):
    model = _model(arch)
    apply_lora(model, rank=3, alpha=6, targets=["linear", "conv"])
    _randomise_adapters(model)
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        unmerged = model(x)
        base_keys = set(_model(arch).state_dict())
        merge_lora(model)
        merged = model(x)
    assert not lora_layers(model)
    assert set(model.state_dict()) == base_keys  # plain weights under the base architecture's names
    assert (unmerged - _model(arch)(x)).abs().max() > 1e-3  # the adapters did change the output
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_conv_adapter_is_the_low_rank_weight_update():
    conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
    layer = LoRAConv2d(conv, rank=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
        x = torch.randn(2, 3, 9, 9)
        expected = torch.nn.functional.conv2d(x, conv.weight + layer.delta_weight(), conv.bias, stride=2, padding=1)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert layer.scale == 2.0 and layer.lora_A.shape == (2, 27) and layer.lora_B.shape == (5, 2)


def test_lora_artifact_reloads_with_identical_predictions(tmp_path):
    model = _model("cnn")
    adapters = apply_lora(model, rank=4, alpha=8, targets=["conv", "body.dense.*"])
    _randomise_adapters(model)
    card = ModelCard(arch="cnn", arch_args=dict(model.arch_args), classes=[str(i) for i in range(10)],
                     preprocess=Preprocess(), adapters=adapters)
    save_artifact(tmp_path / "a", model, card)
    state = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert any(k.endswith("lora_A") for k in state) and "head.weight" in state
    loaded, loaded_card = load_artifact(tmp_path / "a")
    assert loaded_card.adapters == adapters
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert {type(m) for m in lora_layers(loaded).values()} == {LoRAConv2d, LoRALinear}


def test_rebuilding_from_the_card_matches_the_original_structure():
    model = _model("vit")
    adapters = apply_lora(model, rank=2, alpha=2, targets=["body.block*.attn.qkv"])
    assert adapters["modules"] == ["body.block1.attn.qkv", "body.block2.attn.qkv"]
    fresh = apply_lora_from_card(_model("vit"), adapters)
    assert set(fresh.state_dict()) == set(model.state_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)


def test_target_and_card_errors_are_clear():
    with pytest.raises(ConfigError, match="matches no linear or conv layer"):
        select_targets(_model("cnn"), ["body.nothing*"])
    with pytest.raises(ConfigError, match="lora_rank"):
        apply_lora(_model("cnn"), rank=0, alpha=1, targets=["linear"])
    with pytest.raises(ModelError, match="no layer 'body.missing'"):
        apply_lora_from_card(_model("cnn"), {"type": "lora", "rank": 2, "alpha": 2, "modules": ["body.missing"]})
    with pytest.raises(ModelError, match="unknown adapter type"):
        apply_lora_from_card(_model("cnn"), {"type": "ia3"})


def test_the_head_is_never_adapted():
    assert all(not n.startswith("head") for n in select_targets(_model("mlp"), ["linear", "*"]))
    with pytest.raises(ConfigError, match="matches no"):  # softmax regression: nothing but the head
        select_targets(create_model("linear"), ["linear", "conv"])


def test_finetune_lora_run_reloads_and_merges(tmp_path, synthetic_data, capsys):
    from mnistlab.cli.main import main

    parent = make_parent(tmp_path / "parent")
    common = ["finetune", str(parent), "--dataset", "fashion-mnist", "--strategy", "lora", "--shots", "6",
              "--quiet", "finetune.small.steps=6", "train.threads=1"]
    assert main(common + ["--out", "adapters", "--json"]) == 0
    summary = __import__("json").loads(capsys.readouterr().out)
    model, card = load_artifact("adapters")
    assert card.adapters["rank"] == 4 and card.parent["strategy"] == "lora"
    assert summary["trainable_params"] < summary["params"] / 5
    assert main(common + ["--merge", "--out", "merged"]) == 0
    merged, merged_card = load_artifact("merged")
    assert merged_card.adapters is None and merged_card.parent["merged"] is True
    assert not lora_layers(merged)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():  # the same seed and data: the merged run is the adapter run, folded
        torch.testing.assert_close(merged(x), model(x), atol=1e-5, rtol=1e-5)
    assert merged_card.metrics["test_accuracy"] == pytest.approx(card.metrics["test_accuracy"], abs=0.01)
