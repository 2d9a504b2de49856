"""The training loop, run directories, artifacts, exact resume and the train/eval CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.artifact import load_artifact
from mnistlab.cli.main import main
from mnistlab.config import load_config, resolve_recipe, shipped_recipes, started_dry
from mnistlab.data.dataset import load_dataset
from mnistlab.errors import ConfigError
from mnistlab.evaluate import predict_logits
from mnistlab.models import create_model
from mnistlab.runner import run_training
from mnistlab.train import fit

FAST = ["model.name=cnn", "train.epochs=2", "train.batch_size=64", "data.val_size=200", "optim.lr=0.003",
        "train.eval_batch_size=500"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_the_run_directory_and_learns(synthetic_data, capsys):
    code, out, _ = _cli(capsys, "train", *FAST, "--out", "run", "--quiet")
    assert code == 0
    assert out.startswith("test accuracy 0.") and out.rstrip().endswith("-> run") and len(out.splitlines()) == 1
    run = Path("run")
    for name in ("config.yaml", "model.safetensors", "model.json", "metrics.jsonl", "summary.json",
                 "confusion_matrix.png", "top_losses.png", "curves.png", "checkpoint.pt"):
        assert (run / name).is_file(), name
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_seconds", "epochs", "params", "per_class"):
        assert key in summary
    assert summary["epochs"] == 2 and summary["params"] == 93_322
    assert summary["test_accuracy"] > 0.9  # synthetic digits are easy; chance is 0.1
    assert set(summary["per_class"]["0"]) >= {"precision", "recall", "f1"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_acc", "lr", "seconds"} <= set(rows[0])
    card = json.loads((run / "model.json").read_text())
    assert card["arch"] == "cnn" and card["classes"] == [str(i) for i in range(10)]
    assert card["preprocess"]["size"] == 28 and "torch" in card["versions"]


@pytest.mark.parametrize("extra", [[], ["train.tta=true", "data.augment.hflip=0.5"]], ids=["plain", "tta-mirror"])
def test_eval_json_reproduces_the_run_test_accuracy(synthetic_data, capsys, extra):
    assert _cli(capsys, "train", *FAST, "train.epochs=1", *extra, "--out", "run", "--quiet")[0] == 0
    summary = json.loads(Path("run/summary.json").read_text())
    code, out, _ = _cli(capsys, "eval", "run", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["accuracy"] == summary["test_accuracy"]
    assert report["loss"] == pytest.approx(summary["test_loss"], abs=1e-6)
    assert set(report["per_class"]) == {str(i) for i in range(10)}


def test_artifact_loads_without_training_code_and_predicts_the_same(synthetic_data):
    cfg = load_config(None, FAST + ["train.epochs=1"])
    result = run_training(cfg, out="run", quiet=True)
    model, card = load_artifact("run")
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.fit.model.eval()(x))
    state = load_file("run/model.safetensors")
    assert not any(k.startswith("_orig_mod") for k in state)


def test_tta_averages_shifts_and_with_mirror_the_mirror_images_too():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10))
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    plain = predict_logits(model, images, mean=0.0, std=255.0)
    shifts = predict_logits(model, images, mean=0.0, std=255.0, tta=True)
    mirrored = predict_logits(model, images.flip(3), mean=0.0, std=255.0, tta=True)
    both = predict_logits(model, images, mean=0.0, std=255.0, tta=True, mirror=True)
    assert not torch.allclose(plain, shifts, atol=1e-4)
    assert torch.allclose(both, (shifts + mirrored) / 2, atol=1e-5)
    assert torch.equal(predict_logits(model, images, mean=0.0, std=255.0, mirror=True), plain)  # mirror needs tta


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def callback(row):
        if row["epoch"] == epoch:
            raise _Stop

    return callback


def test_ema_is_warmed_up_so_a_short_run_is_not_its_initialisation(synthetic_data):
    # a few hundred steps at decay 0.999 would leave most of the weight on the random start without warm-up
    result = run_training(load_config(None, FAST + ["train.ema=0.999"]), out="run", quiet=True)
    assert result.summary["test_accuracy"] > 0.9
    assert all(row["val_acc"] > 0.5 for row in result.fit.history)


def test_freeze_out_stops_each_block_at_its_point_and_gives_it_back(synthetic_data):
    cfg = load_config(None, FAST + ["model.name=fastcnn", "train.freeze_out=[0,0.5]"])
    torch.manual_seed(0)
    model = create_model("fastcnn")
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = load_dataset("mnist", "train").subset(torch.arange(512))
    after_epoch: list[dict[str, torch.Tensor]] = []

    def look(row):
        after_epoch.append({k: v.clone() for k, v in model.state_dict().items()})
        after_epoch[-1]["stage2 trains"] = torch.tensor([p.requires_grad for p in model.body.stage2.parameters()])

    fit(cfg, model, data, None, device=torch.device("cpu"), quiet=True, epoch_callback=look)
    first, last = after_epoch
    assert torch.equal(last["body.stage1.0.weight"], start["body.stage1.0.weight"])  # frozen from step 0
    assert not torch.equal(last["body.stage1.1.running_mean"], start["body.stage1.1.running_mean"])  # still normalises by batch
    assert not torch.equal(first["body.stage2.0.weight"], start["body.stage2.0.weight"])  # trained in the first half
    assert torch.equal(last["body.stage2.0.weight"], first["body.stage2.0.weight"])  # and not after
    assert first["stage2 trains"].all() and not last["stage2 trains"].any()
    assert not torch.equal(last["body.stage3.0.weight"], first["body.stage3.0.weight"])
    assert all(p.requires_grad for p in model.parameters())  # given back after training
    for bad, match in (("[1.5]", "must be in"), ("[0.6,0.3]", "must rise"), ("[0.1,0.2,0.3,0.4]", "at most one fraction")):
        with pytest.raises(ConfigError, match=match):
            fit(load_config(None, FAST + ["model.name=fastcnn", f"train.freeze_out={bad}"]), model, data, None,
                device=torch.device("cpu"), quiet=True)


@pytest.mark.parametrize("extra", [[], ["data.augment.rotate=10", "data.augment.translate=0.1", "train.ema=0.9",
                                        "model.args.dropout=0.2", "schedule.name=plateau"],
                                   ["model.name=fastcnn", "train.freeze_out=[0.2,0.5]"]],
                         ids=["plain", "augment-ema-dropout-plateau", "freeze-out"])
def test_resume_gives_the_same_final_weights(synthetic_data, extra):
    cfg = load_config(None, FAST + ["train.epochs=3"] + extra)
    run_training(cfg, out="full", quiet=True)
    with pytest.raises(_Stop):
        run_training(cfg, out="part", quiet=True, epoch_callback=_stop_after(1))
    assert not Path("part/model.safetensors").exists()
    run_training(cfg, resume_dir=Path("part"), quiet=True)
    full, part = load_file("full/model.safetensors"), load_file("part/model.safetensors")
    assert full.keys() == part.keys()
    for k in full:
        assert torch.equal(full[k], part[k]), k
    rows = [json.loads(line)["epoch"] for line in Path("part/metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]


def test_resume_via_cli(synthetic_data, capsys):
    cfg = load_config(None, FAST)
    with pytest.raises(_Stop):
        run_training(cfg, out="part", quiet=True, epoch_callback=_stop_after(1))
    code, out, _ = _cli(capsys, "train", "--resume", "part", "--quiet", "--json")
    assert code == 0 and json.loads(out)["epochs"] == 2


def test_resume_of_a_dry_run_stays_a_dry_run(synthetic_data, capsys):
    """--dry-run leaves a marker in its run directory, so --resume continues on the same small
    slice (before, it trained the resumed run at full size) and ends with the same weights."""
    cfg = load_config(None, FAST)
    full = run_training(cfg, out="full", quiet=True, dry_run=True)
    with pytest.raises(_Stop):
        run_training(cfg, out="part", quiet=True, dry_run=True, epoch_callback=_stop_after(1))
    assert started_dry("part")
    code, out, _ = _cli(capsys, "train", "--resume", "part")
    assert code == 0 and "was started with --dry-run" in out
    summary = json.loads(Path("part/summary.json").read_text())
    assert summary["train_images"] == full.summary["train_images"] < 1000
    a, b = load_file("full/model.safetensors"), load_file("part/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run_training(load_config(None, FAST + ["train.epochs=1"]), out="big", quiet=True)
    assert not started_dry("big")


def test_same_seed_same_result_and_other_seed_differs(synthetic_data):
    cfg = load_config(None, FAST + ["train.epochs=1"])
    a = run_training(cfg, out="a", quiet=True).fit.model.state_dict()
    b = run_training(cfg, out="b", quiet=True).fit.model.state_dict()
    cfg.seed = 1
    c = run_training(cfg, out="c", quiet=True).fit.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_every_training_option_runs(synthetic_data, monkeypatch):
    monkeypatch.setattr("mnistlab.device.native_bf16", lambda device: True)  # bf16 autocast runs here, emulated or not
    cfg = load_config(None, FAST + [
        "optim.name=sgd", "optim.lr=0.05", "optim.nesterov=true", "optim.weight_decay=5e-4", "schedule.name=step", "schedule.warmup_epochs=0.5",
        "train.label_smoothing=0.1", "train.class_weights=[1,1,1,1,1,1,1,1,1,2]", "train.grad_clip=1.0",
        "train.bf16=true", "train.ema=0.9", "train.channels_last=true", "train.tta=true",
        "data.augment.elastic=2", "data.augment.erase=0.5", "data.augment.shear=10", "data.augment.scale=0.1",
    ])
    result = run_training(cfg, out="run", quiet=True)
    # heavy regularisation and a short, decayed schedule: it must still learn beyond chance (0.1)
    assert result.summary["test_accuracy"] > 0.2
    assert all(torch.isfinite(p).all() for p in result.fit.model.parameters())


def test_early_stopping_restores_the_best_weights(synthetic_data):
    # lr so high that validation gets worse after the first epoch
    cfg = load_config(None, FAST + ["train.epochs=6", "train.early_stop_patience=1", "train.early_stop_metric=val_loss",
                                    "optim.name=sgd", "optim.lr=0.5", "schedule.name=constant", "optim.momentum=0.0"])
    result = run_training(cfg, out="run", quiet=True)
    history = result.fit.history
    losses = [h["val_loss"] for h in history]
    best = min(range(len(losses)), key=losses.__getitem__) + 1
    assert result.fit.best_epoch == best
    if result.fit.stopped_early:
        assert len(history) < 6 and result.summary["stopped_early"] is True


@pytest.mark.parametrize("recipe", [r for r in shipped_recipes() if not r.startswith("finetune")])
def test_every_shipped_recipe_dry_runs(synthetic_data, capsys, recipe):
    cfg = load_config(resolve_recipe(recipe))
    if cfg.data.dataset not in ("mnist", "fashion-mnist"):
        pytest.skip(f"{recipe} trains on {cfg.data.dataset}, not in the synthetic data root")
    code, out, err = _cli(capsys, "train", recipe, "--dry-run", "--out", "run", "--quiet")
    assert code == 0, err
    assert json.loads(Path("run/summary.json").read_text())["test_accuracy"] is not None


def test_seeds_report_mean_and_std(synthetic_data, capsys):
    code, out, _ = _cli(capsys, "train", *FAST, "train.epochs=1", "--seeds", "2", "--out", "multi", "--quiet")
    assert code == 0
    assert "2 seeds: test accuracy" in out and "±" in out
    assert Path("multi/seed-0/summary.json").is_file() and Path("multi/seed-1/summary.json").is_file()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["train", "optim.lrr=1"], ["optim.lrr", "valid keys"]),
        (["train", "train.epochs=x"], ["train.epochs"]),
        (["train", "model.name=resnot"], ["resnot", "cnn"]),
        (["train", "data.dataset=nope"], ["nope", "mnist"]),
        (["train", "no-such-recipe.yaml"], ["no-such-recipe", "mnist-fast"]),
        (["eval", "does-not-exist"], ["does-not-exist"]),
        (["train", "--resume", "nowhere"], ["nowhere"]),
    ],
)
def test_errors_are_one_clear_line(synthetic_data, capsys, argv, words):
    code, out, err = _cli(capsys, *argv)
    assert code != 0
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:")
    for w in words:
        assert w in line


def test_existing_out_directory_is_never_overwritten(synthetic_data, capsys):
    Path("taken").mkdir()
    (Path("taken") / "keep.txt").write_text("precious")
    code, _, err = _cli(capsys, "train", *FAST, "--out", "taken", "--quiet")
    assert code != 0 and "already exists" in err
    assert (Path("taken") / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in Path("taken").iterdir()) == ["keep.txt"]


def test_missing_data_without_network_lists_where_it_looked(synthetic_data, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(tmp_path / "empty"))
    code, _, err = _cli(capsys, "data", "info", "kmnist")  # info must not download
    code, _, err = _cli(capsys, "train", "data.dataset=kmnist", "--dry-run", "--quiet")
    assert code != 0 and "Traceback" not in err
    assert "kmnist" in err and "MNISTLAB_DATA_DIR" in err


def test_models_and_help(capsys):
    code, out, _ = _cli(capsys, "models")
    assert code == 0 and "cnn" in out and "93,322" in out and "vit" in out
    for verb in ("train", "eval", "models", "runs", "data"):
        with pytest.raises(SystemExit) as e:
            main([verb, "--help"])
        assert e.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_the_checkpoint_is_the_train_state_and_loads_back_into_a_fresh_one(synthetic_data):
    from mnistlab.checkpoint import load_checkpoint
    from mnistlab.optim import Schedule, build_optimizer
    from mnistlab.train_state import EMA, Tracker, TrainState

    cfg = load_config(None, FAST + ["train.epochs=1", "train.ema=0.9"])
    run_training(cfg, out="run", quiet=True)
    saved = load_checkpoint(Path("run"))
    assert set(saved) == {"model", "optimizer", "schedule", "ema", "epoch", "step", "train_seconds", "history",
                          "best", "best_epoch", "bad_epochs", "best_state"}
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))  # any module: the state, not the architecture, is tested
    model.load_state_dict({"0.weight": torch.zeros(2, 2), "0.bias": torch.zeros(2)})
    optimizer = build_optimizer([{"params": list(model.parameters())}], cfg.optim)
    state = TrainState(model, optimizer, Schedule(optimizer, cfg.schedule, 10, 1), EMA(model, 0.9), Tracker("val_acc"))
    state.step, state.epoch, state.history = 7, 1, [{"epoch": 1}]
    fresh_model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    fresh_opt = build_optimizer([{"params": list(fresh_model.parameters())}], cfg.optim)
    fresh = TrainState(fresh_model, fresh_opt, Schedule(fresh_opt, cfg.schedule, 10, 1), EMA(fresh_model, 0.9),
                       Tracker("val_acc"))
    fresh.load_state_dict(state.state_dict())
    assert (fresh.step, fresh.epoch, fresh.history) == (7, 1, [{"epoch": 1}])
    assert all(torch.equal(p, torch.zeros_like(p)) for p in (*fresh_model.parameters(), *fresh.ema.model.parameters()))


def test_resolve_device_auto_and_by_name():
    from mnistlab.device import resolve_device, world

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cuda", "mps", "cpu"}
    assert world() == (0, 1)


@pytest.mark.parametrize("native", [True, False], ids=["native-bf16", "emulated-bf16"])
def test_bf16_turns_to_float32_where_the_device_would_emulate_it(synthetic_data, capsys, monkeypatch, native):
    monkeypatch.setattr("mnistlab.device.native_bf16", lambda device: native)
    code, out, _ = _cli(capsys, "train", *FAST, "train.epochs=1", "train.bf16=true", "--out", "run")
    assert code == 0
    said = [line for line in out.splitlines() if line.startswith("bf16:")]
    assert len(said) == (0 if native else 1)
    assert all("float32" in line for line in said)
    saved = load_config("run/config.yaml", [])
    assert saved.train.bf16 is native  # the run records what it trained with
    assert saved.finetune.semi.self_training.bf16 is native
    code, out, _ = _cli(capsys, "train", *FAST, "train.epochs=1", "train.bf16=true", "--out", "quiet", "--quiet")
    assert code == 0 and len(out.splitlines()) == 1  # --quiet: the result line only


def test_native_bf16_follows_the_cpu_flags(monkeypatch):
    from mnistlab.device import native_bf16

    for avx512_bf16, amx in ((False, False), (True, False), (False, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        assert native_bf16(torch.device("cpu")) is (avx512_bf16 or amx)
    assert native_bf16(torch.device("meta")) is True  # other devices: as the recipe asks
