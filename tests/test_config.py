import pytest

from mnistlab.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_recipe,
    save_config,
    shipped_recipes,
)
from mnistlab.errors import ConfigError


def test_defaults_round_trip(tmp_path):
    cfg = Config()
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_overrides_are_typed():
    cfg = load_config(None, ["optim.lr=0.01", "train.epochs=3", "train.bf16=true", "model.args.widths=[8,16]",
                             "train.grad_clip=1", "optim.lr=1e-3"])
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.train.epochs == 3 and cfg.train.bf16 is True
    assert cfg.model.args == {"widths": [8, 16]}
    assert cfg.train.grad_clip == 1.0


@pytest.mark.parametrize(
    "override, words",
    [
        ("optim.lrr=0.1", ["optim.lrr", "optim.lr"]),
        ("train.epochs=three", ["train.epochs", "int"]),
        ("train.bf16=maybe", ["train.bf16", "bool"]),
        ("nosection.x=1", ["nosection", "valid keys"]),
        ("epochs", ["key=value"]),
    ],
)
def test_bad_overrides_name_the_problem(override, words):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for w in words:
        assert w in str(err.value)


def test_unknown_key_in_recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  epoch: 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_config(p)


def test_recipe_must_be_a_mapping(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_resolve_shipped_recipe_by_name():
    assert "mnist-fast" in shipped_recipes()
    assert resolve_recipe(None).name == "mnist-fast.yaml"
    assert resolve_recipe("mnist-fast").name == "mnist-fast.yaml"
    with pytest.raises(ConfigError, match="mnist-fast"):
        resolve_recipe("no-such-recipe")


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_parses(name):
    cfg = load_config(resolve_recipe(name))
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_apply_overrides_builds_nested_sections():
    data = apply_overrides({}, ["data.augment.rotate=10"])
    assert config_from_dict(data).data.augment.rotate == 10.0


def test_naming_another_model_drops_the_recipes_model_args():
    recipe = resolve_recipe("mnist-fast")
    assert load_config(recipe).model.args  # the default recipe sets fastcnn's knobs
    assert load_config(recipe, ["model.name=resnet"]).model.args == {}
    kept = load_config(recipe, ["model.name=fastcnn"]).model.args  # the same model keeps them
    assert kept == load_config(recipe).model.args
    both = load_config(recipe, ["model.args.widths=[8,16]", "model.name=lenet5", "model.args.dropout=0.1"])
    assert both.model.name == "lenet5" and both.model.args == {"widths": [8, 16], "dropout": 0.1}
    whole = load_config(recipe, ["model.args={depth: 2}", "model.name=resnet"])
    assert whole.model.args == {"depth": 2}
