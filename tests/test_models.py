"""The model registry: one parametrized suite over every registered model, plus a few specifics."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mnistlab.errors import ModelError
from mnistlab.models import Classifier, count_params, create_model, list_models, model_args

NAMES = [e.name for e in list_models()]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def batch(channels: int = 1, size: int = 28) -> torch.Tensor:
    return torch.randn(2, channels, size, size)


@pytest.mark.parametrize("name", NAMES)
def test_forward_shapes(name: str) -> None:
    model = create_model(name).eval()
    assert isinstance(model, Classifier)
    with torch.no_grad():
        assert model(batch()).shape == (2, 10)
        assert model.forward_features(batch()).shape == (2, model.num_features)
        other = create_model(name, in_channels=3, num_classes=7).eval()
        assert other(batch(3)).shape == (2, 7)
        assert other.num_classes == 7
        # channels_last input gives the same answer
        x = batch()
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), model(x))


@pytest.mark.parametrize("name", [n for n in NAMES if "image_size" in model_args(n)])
def test_image_size_knob(name: str) -> None:
    model = create_model(name, image_size=32).eval()
    with torch.no_grad():
        assert model(batch(size=32)).shape == (2, 10)


@pytest.mark.parametrize("name", NAMES)
def test_backward_gives_finite_gradients(name: str) -> None:
    model = create_model(name).train()
    loss = nn.functional.cross_entropy(model(batch()), torch.tensor([1, 2]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", NAMES)
def test_reset_head_and_rebuild(name: str) -> None:
    model = create_model(name).eval()
    body_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_head(5)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 5
    assert model.num_classes == 5 and model.arch_args["num_classes"] == 5
    with torch.no_grad():
        assert model(batch()).shape == (2, 5)
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, body_before[k]), k

    rebuilt = create_model(model.arch_name, **model.arch_args)
    want = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == want
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.arch_args == model.arch_args


@pytest.mark.parametrize("name", NAMES)
def test_blocks_and_head_cover_every_parameter_once(name: str) -> None:
    model = create_model(name)
    seen: dict[int, int] = {}
    for part in [*model.blocks(), model.head]:
        for p in part.parameters():
            seen[id(p)] = seen.get(id(p), 0) + 1
    assert {id(p) for p in model.parameters()} == set(seen)
    assert set(seen.values()) == {1}
    assert sum(count_params(b) for b in model.blocks()) + count_params(model.head) == count_params(model)


@pytest.mark.parametrize("name", NAMES)
def test_arch_args_round_trip_through_json(name: str) -> None:
    model = create_model(name, in_channels=3, num_classes=7)
    args = json.loads(json.dumps(model.arch_args))
    assert args == model.arch_args
    assert args["in_channels"] == 3 and args["num_classes"] == 7
    assert set(args) == set(model_args(name))
    assert create_model(model.arch_name, **args).arch_args == args


def test_every_model_has_a_description() -> None:
    for entry in list_models():
        assert entry.description and "\n" not in entry.description


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ModelError, match="cnn"):
        create_model("nope")


def test_unknown_argument_names_valid_ones() -> None:
    with pytest.raises(ModelError, match="widht") as err:
        create_model("cnn", widht=3)
    assert "dropout" in str(err.value) and "image_size" in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cnn", {"dropout": "0.5"}),
        ("mlp", {"hidden": 512}),
        ("mlp", {"hidden": [512, "x"]}),
        ("resnet", {"widths": [32, 64], "depths": [1]}),
        ("lenet5", {"activation": "swish"}),
        ("vit", {"image_size": 30}),
        ("vit", {"dim": 30, "heads": 4}),
        ("cnn", {"in_channels": 0}),
        ("linear", {"num_classes": True}),
        ("fastcnn", {"depth": 0}),
        ("fastcnn", {"widths": [8, 8, 8, 8, 8], "image_size": 28}),
    ],
)
def test_bad_arguments_raise_model_error(name: str, kwargs: dict) -> None:
    with pytest.raises(ModelError):
        create_model(name, **kwargs)


def test_json_lists_are_accepted_for_tuples() -> None:
    model = create_model("mlp", hidden=[64, 32], dropout=0)
    assert model.arch_args["hidden"] == [64, 32] and model.arch_args["dropout"] == 0.0
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [64, 32, 10]


def test_cnn_matches_the_keras_summary() -> None:
    model = create_model("cnn")
    assert count_params(model) == 93_322
    assert model.head.in_features == 64


def test_fastcnn_depth_adds_convs_per_stage() -> None:
    one, two = create_model("fastcnn"), create_model("fastcnn", depth=2, widths=[8, 16])
    convs = [m for m in two.modules() if isinstance(m, nn.Conv2d)]
    assert len([m for m in one.modules() if isinstance(m, nn.Conv2d)]) == 3 and len(convs) == 4
    assert [c.out_channels for c in convs] == [8, 8, 16, 16]
    assert two.head.in_features == 16 * 7 * 7 and two(batch()).shape == (2, 10)
    assert count_params(one) == 29_178


def test_fastcnn_speed_knobs_keep_shapes_and_reorder_layers() -> None:
    plain = create_model("fastcnn")
    fast = create_model("fastcnn", pool_first=True, strided_stem=True)
    assert count_params(fast) == count_params(plain) == 29_178
    assert fast.head.in_features == plain.head.in_features == 64 * 3 * 3
    kinds = [[type(m).__name__ for m in stage] for stage in fast.blocks()]
    assert kinds[0] == ["Conv2d", "BatchNorm2d", "ReLU"]  # the strided conv halves the side, no pool
    assert fast.body.stage1[0].stride == (2, 2)
    assert kinds[1] == kinds[2] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]
    assert [type(m).__name__ for m in plain.body.stage2] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    x = batch()
    with torch.no_grad():
        assert fast.eval().forward_features(x).shape == (2, 576)
        torch.testing.assert_close(fast(x.to(memory_format=torch.channels_last)), fast(x))
    rebuilt = create_model("fastcnn", **fast.arch_args)
    rebuilt.load_state_dict(fast.state_dict(), strict=True)
    assert rebuilt.arch_args["pool_first"] and rebuilt.arch_args["strided_stem"]
    odd = create_model("fastcnn", strided_stem=True, image_size=29)  # 29 -> 15 -> 7 -> 3
    assert odd(batch(size=29)).shape == (2, 10) and odd.head.in_features == 64 * 3 * 3
    deep = create_model("fastcnn", pool_first=True, depth=2, widths=[8, 16])
    assert [type(m).__name__ for m in deep.body.stage1] == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "MaxPool2d",
                                                            "BatchNorm2d", "ReLU"]


def test_fastcnn_dct_stem_is_a_fixed_filter_bank_that_never_trains() -> None:
    from mnistlab.models.fastcnn import dct_filters

    bank = dct_filters(8).flatten(1)
    torch.testing.assert_close(bank @ bank.T, torch.eye(8))  # orthonormal
    torch.testing.assert_close(bank[0], torch.full((9,), 1 / 3))  # the first is the mean
    model = create_model("fastcnn", strided_stem=True, pool_first=True, dct_stem=True)
    stem = model.body.stage1
    torch.testing.assert_close(stem[0].weight.flatten(1), torch.cat([bank, -bank]))
    assert not any(p.requires_grad for p in stem.parameters())
    assert count_params(model, trainable_only=True) == 29_178 - 16 * 9 - 2 * 16
    before = {k: v.clone() for k, v in stem.state_dict().items()}
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    model(batch()).sum().backward()
    optim.step()
    assert stem[0].weight.grad is None and torch.equal(stem[0].weight, before["0.weight"])
    assert not torch.equal(stem[1].running_mean, before["1.running_mean"])  # BatchNorm still normalises by batch
    rebuilt = create_model("fastcnn", **model.arch_args)
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert rebuilt.arch_args["dct_stem"] and not any(p.requires_grad for p in rebuilt.body.stage1.parameters())
    assert dct_filters(20, in_channels=3).shape == (20, 3, 3, 3)
    with pytest.raises(ModelError, match="dct_stem needs an even first width of at most 18"):
        create_model("fastcnn", widths=[32, 64], dct_stem=True)


def test_count_params_trainable_only() -> None:
    model = create_model("cnn")
    for block in model.blocks():
        block.requires_grad_(False)
    assert count_params(model, trainable_only=True) == 64 * 10 + 10


def test_vit_mean_pool_and_uses_batchnorm() -> None:
    model = create_model("vit", pool="mean", depth=1)
    assert model.body.embed.cls_token is None
    assert model(batch()).shape == (2, 10)
    assert not model.uses_batchnorm and create_model("resnet").uses_batchnorm


def test_reset_head_rejects_bad_count() -> None:
    with pytest.raises(ModelError):
        create_model("linear").reset_head(0)


def test_large_vit_trains_a_step() -> None:
    model = create_model("vit", dim=384, depth=6, heads=6)
    assert count_params(model) > 10_000_000
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = model.head.weight.detach().clone()
    loss = nn.functional.cross_entropy(model(batch()), torch.tensor([3, 4]))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, model.head.weight)
