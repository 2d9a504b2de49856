"""`mnistlab finetune`: lineage, heads, strategies, shots, small-set defaults, resume, recipes, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import make_parent
from safetensors.torch import load_file

from mnistlab.artifact import load_artifact, read_card
from mnistlab.cli.main import main
from mnistlab.config import load_config, resolve_recipe, shipped_recipes
from mnistlab.finetune.run import adapt_head, finetune, prepare_splits
from mnistlab.finetune.strategies import (
    apply_depth,
    layer_groups,
    param_groups,
    trained_depth,
    unfrozen_depth,
)
from mnistlab.models import create_model

QUICK = ["finetune.small.steps=8", "train.threads=1", "train.eval_batch_size=512"]
FINETUNE_RECIPES = [r for r in shipped_recipes() if r.startswith("finetune-")]


@pytest.fixture
def parent(synthetic_data, tmp_path) -> Path:
    return make_parent(tmp_path / "parent")


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _summary(run: str) -> dict:
    return json.loads(Path(run, "summary.json").read_text())


def test_new_classes_replace_the_head_record_the_parent_and_eval_agrees(parent, capsys):
    code, _, _ = _cli(capsys, "finetune", str(parent), "--dataset", "fashion-mnist", "--shots", "5", "--out", "ft",
                      "--quiet", *QUICK)
    assert code == 0
    model, card = load_artifact("ft")
    assert card.classes[0] == "T-shirt/top" and card.dataset == "fashion-mnist"
    assert card.parent["path"] == str(parent.resolve()) and card.parent["dataset"] == "mnist"
    assert card.parent["head"] == "replaced" and card.parent["shots"] == 5
    s = _summary("ft")
    assert s["parent_test_accuracy"] is None  # other classes: no before/after
    assert s["train_images"] == 50 and s["small_data"] is True  # 5 per class, none held out
    assert (card.preprocess.mean, card.preprocess.std) == (0.1307, 0.3081)  # the parent's normalisation
    code, out, _ = _cli(capsys, "eval", "ft", "--json")
    assert code == 0 and json.loads(out)["accuracy"] == pytest.approx(s["test_accuracy"], abs=1e-9)


def test_the_child_keeps_the_parents_contrast_stretch(parent, capsys):
    card = json.loads(Path(parent, "model.json").read_text())
    card["preprocess"]["autocontrast"] = True
    Path(parent, "model.json").write_text(json.dumps(card))
    code, _, _ = _cli(capsys, "finetune", str(parent), "--dataset", "mnist", "--shots", "3", "--out", "ft",
                      "--quiet", *QUICK)
    assert code == 0
    _, child = load_artifact("ft")
    assert child.preprocess.autocontrast is True  # the backbone's input, even though the recipe left it off
    assert load_config("ft/config.yaml").data.autocontrast is True


def test_same_classes_keep_the_head_and_report_before_and_after(parent, capsys):
    code, out, _ = _cli(capsys, "finetune", str(parent), "--dataset", "mnist", "--strategy", "head", "--out", "ft",
                        "--quiet", "--json", *QUICK, "finetune.small.steps=30", "optim.lr=0.01")
    assert code == 0
    s = json.loads(out)
    parent_model, _ = load_artifact(parent)
    model, card = load_artifact("ft")
    assert card.parent["head"] == "kept" and 0 <= s["parent_test_accuracy"] <= 1
    assert card.parent["test_accuracy_on_new_data"] == s["parent_test_accuracy"]
    assert s["test_accuracy"] > s["parent_test_accuracy"]  # an untrained parent is at chance
    # the head strategy leaves the backbone exactly as it was
    a, b = parent_model.state_dict(), model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("head."))
    assert not torch.equal(a["head.weight"], b["head.weight"])


def test_head_kept_reset_or_partly_copied():
    model = create_model("mlp", hidden=[8])
    w = model.head.weight.detach().clone()
    assert adapt_head(model, list("abc") + [str(i) for i in range(7)], list("abc") + [str(i) for i in range(7)],
                      reset=False) == "kept"
    classes = [str(i) for i in range(10)]
    assert adapt_head(model, classes, ["3", "x", "1"], reset=False).startswith("replaced (2 of 3")
    assert model.head.out_features == 3 and model.arch_args["num_classes"] == 3
    assert torch.equal(model.head.weight[0], w[3]) and torch.equal(model.head.weight[2], w[1])
    assert adapt_head(model, ["3", "x", "1"], ["3", "x", "1"], reset=True) == "reset"


def test_strategies_choose_what_trains():
    model = create_model("mlp", hidden=[8, 8, 8])  # blocks fc1, fc2, fc3
    names = [n for n, _ in layer_groups(model)]
    assert names == ["head", "body.fc3", "body.fc2", "body.fc1"]
    assert [trained_depth(s, 3, 2) for s in ("full", "head", "partial", "lora")] == [4, 1, 3, 1]
    assert trained_depth("partial", 3, 9) == 4
    apply_depth(model, trained_depth("partial", 3, 1))
    trainable = {n.split(".")[1] if n.startswith("body") else "head" for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head", "fc3"}
    groups = param_groups(model, 1.0, 4, layer_lr_decay=0.5)
    assert [(g["name"], g["lr"]) for g in groups] == [("head", 1.0), ("body.fc3", 0.5), ("body.fc2", 0.25),
                                                      ("body.fc1", 0.125)]
    # gradual unfreezing: head first, one more group every 2 epochs, up to the target
    assert [unfrozen_depth(3, 2, e) for e in range(7)] == [1, 1, 2, 2, 3, 3, 3]
    assert unfrozen_depth(3, 0, 0) == 3


def test_partial_with_gradual_unfreezing_trains_the_last_blocks_only(parent, capsys):
    cfg = load_config(resolve_recipe("finetune-default"), QUICK + [
        f"finetune.parent={parent}", "data.dataset=fashion-mnist", "finetune.strategy=partial",
        "finetune.partial_blocks=1", "finetune.gradual_unfreeze=1", "finetune.shots=4", "finetune.small.steps=6"])
    result = finetune(cfg, out="ft", quiet=True)
    before, after = load_file(str(parent / "model.safetensors")), load_file("ft/model.safetensors")
    changed = {k.split(".")[1] for k in before if k.startswith("body.") and not torch.equal(before[k], after[k])}
    assert changed == {"dense"}  # the cnn's last block
    cfg = load_config(Path("ft/config.yaml"))  # finetune leaves its argument alone; the run saved the resolved one
    assert result.summary["epochs"] == cfg.train.epochs >= 2


def _prepare(parent: Path, *overrides: str):
    cfg = load_config(resolve_recipe("finetune-default"), ["data.dataset=fashion-mnist", *overrides])
    cfg, splits, small = prepare_splits(cfg, read_card(parent))
    return cfg, splits, small


def test_shots_and_small_set_settings(parent):
    cfg, splits, small = _prepare(parent, "finetune.shots=100", "finetune.small.steps=120", "finetune.small.batch_size=16")
    assert small and len(splits.train) == 800 and len(splits.val) == 200  # 100 per class, 20% held out
    assert splits.train.class_counts().tolist() == [80] * 10 and splits.val.class_counts().tolist() == [20] * 10
    assert cfg.data.val_size == 0.2 and cfg.train.batch_size == 16
    assert cfg.train.epochs == 3  # 120 steps at 800 // 16 = 50 steps per epoch
    assert cfg.data.augment.rotate > 0 and cfg.train.early_stop_metric == "val_loss"
    assert cfg.train.early_stop_patience == 1  # 30% of 3 epochs, at least 1
    assert splits.train.mean == 0.1307 and splits.test.std == 0.3081  # the parent's normalisation
    again, splits2, _ = _prepare(parent, "finetune.shots=100", "finetune.small.steps=120", "finetune.small.batch_size=16")
    assert torch.equal(splits.train.images, splits2.train.images)  # seeded: the same shots again
    other, splits3, _ = _prepare(parent, "finetune.shots=10", "seed=1")
    assert not torch.equal(splits.train.images, splits3.train.images)


def test_small_set_rules(parent):
    cfg, splits, small = _prepare(parent, "finetune.shots=95")
    assert small and len(splits.train) == 950 and splits.val is None  # 19 per class would be held out: too few
    assert cfg.data.val_size == 0 and cfg.train.early_stop_patience == 0
    cfg, splits, small = _prepare(parent, "finetune.shots=2")
    assert small and len(splits.train) == 20 and cfg.train.epochs == 300  # 300 steps, one batch of 20 per epoch
    cfg, splits, small = _prepare(parent, "finetune.small.below=0", "train.epochs=2")
    assert not small and cfg.train.epochs == 2 and cfg.data.augment.rotate == 0  # the recipe as written
    cfg, splits, small = _prepare(parent, "finetune.steps=50", "finetune.small.min_val_per_class=2")
    assert small and cfg.train.epochs == 2  # 1200 synthetic images, 960 train: 30 steps of 32 per epoch
    cfg, _, _ = _prepare(parent, "finetune.shots=10", "data.augment.rotate=3")
    assert cfg.data.augment.rotate == 3 and cfg.data.augment.translate == 0  # the recipe's augmentation wins


class _Stop(Exception):
    pass


@pytest.mark.parametrize("strategy, extra", [("lora", []), ("partial", ["finetune.gradual_unfreeze=1",
                                                                         "finetune.partial_blocks=2"])])
def test_resume_gives_the_same_final_weights(parent, capsys, monkeypatch, strategy, extra):
    argv = ["finetune", str(parent), "--dataset", "fashion-mnist", "--strategy", strategy, "--shots", "5",
            "--quiet", "finetune.small.steps=12", "finetune.small.batch_size=20", "finetune.small.min_val_per_class=1",
            "train.threads=1", *extra]  # 1 per class held out: early-stopping state resumes too
    assert _cli(capsys, *argv, "--out", "full")[0] == 0
    from mnistlab.finetune import run as module

    original = module._Plan.epoch_done

    def stop_after_first(self, row):
        original(self, row)
        if row["epoch"] == 1:
            raise _Stop

    monkeypatch.setattr(module._Plan, "epoch_done", stop_after_first)
    assert _cli(capsys, *argv, "--out", "part")[0] == 1  # interrupted after epoch 1
    assert not Path("part/model.safetensors").exists()
    monkeypatch.setattr(module._Plan, "epoch_done", original)
    assert _cli(capsys, "finetune", "--resume", "part", "--quiet")[0] == 0
    full, part = load_file("full/model.safetensors"), load_file("part/model.safetensors")
    assert full.keys() == part.keys()
    assert all(torch.equal(full[k], part[k]) for k in full)
    assert json.loads(Path("part/model.json").read_text())["parent"]["path"] == str(parent.resolve())


@pytest.mark.parametrize("recipe", FINETUNE_RECIPES)
def test_every_finetune_recipe_dry_runs(parent, capsys, recipe):
    # the synthetic fashion-mnist stands in for each recipe's own data
    code, _, err = _cli(capsys, "finetune", str(parent), recipe, "--dataset", "fashion-mnist", "--dry-run",
                        "--out", "ft", "--quiet", "train.threads=1", "finetune.small.steps=2")
    assert code == 0, err
    assert load_config(resolve_recipe(recipe)).finetune.strategy in ("full", "head", "partial", "lora")


def test_flags_override_the_recipe_and_overrides_may_follow_flags(parent, capsys):
    code, _, err = _cli(capsys, "finetune", str(parent), "--dataset", "fashion-mnist", "finetune-fashion-lora",
                        "--strategy", "head", "--shots", "3", "--steps", "4", "--out", "ft", "--quiet",
                        "train.threads=1", "optim.lr=0.02")
    assert code == 0, err
    cfg = load_config(Path("ft/config.yaml"))
    assert (cfg.finetune.strategy, cfg.finetune.shots, cfg.finetune.steps, cfg.optim.lr) == ("head", 3, 4, 0.02)
    assert cfg.finetune.parent == str(parent)


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "fashion-mnist", "--shots", "0"], ["finetune.shots", "at least 1"]),  # --shots sets finetune.shots
    (["--dataset", "fashion-mnist", "--merge"], ["--merge", "lora"]),
    (["finetune.strategy=best", "--dataset", "mnist"], ["strategy 'best'", "full, head, partial, lora"]),
    ([], ["no dataset", "--dataset"]),
    (["--dataset", "fashion-mnist", "--shots", "100000"], ["fewer than 100000"]),
    (["--dataset", "folder:no/such/folder"], ["no/such/folder"]),
    (["--dataset", "mnist", "finetune.lora_rankk=2"], ["finetune.lora_rankk", "finetune.lora_rank"]),
    (["--dataset", "mnist", "--strategy", "partial", "finetune.gradual_unfreeze=1", "train.freeze_out=[0.5]"],
     ["train.freeze_out", "finetune.gradual_unfreeze", "undo each other"]),
])
def test_errors_are_one_clear_line(parent, capsys, argv, words):
    code, _, err = _cli(capsys, "finetune", str(parent), *argv, "--out", "ft", "--quiet")
    assert code != 0 and err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err
    assert not Path("ft").exists()


def test_missing_parent_and_resume_misuse(synthetic_data, capsys):
    code, _, err = _cli(capsys, "finetune", "no-such-run", "--dataset", "mnist")
    assert code != 0 and "cannot fine-tune from 'no-such-run'" in err
    code, _, err = _cli(capsys, "finetune", "--dataset", "mnist")
    assert code != 0 and "no model to fine-tune from" in err
    code, _, err = _cli(capsys, "finetune", "--resume", "x", "--shots", "3")
    assert code != 0 and "--resume takes no" in err


def test_help_documents_strategies_and_small_set_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    for words in ("lora", "partial", "gradual_unfreeze", "300 optimizer steps", "early stopping", "--shots", "examples:"):
        assert words in out
