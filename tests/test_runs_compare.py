"""`mnistlab runs compare`, `--sort` and the filters, on tiny runs the test trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mnistlab.cli.main import main
from mnistlab.errors import ConfigError
from mnistlab.runs import ABSENT, compare_runs, config_diff, filter_runs, flatten, list_runs

TINY = ["train.batch_size=64", "data.val_size=100", "data.train_limit=300", "train.eval_batch_size=500",
        "train.threads=1"]


@pytest.fixture(scope="module")
def runs_dir(synthetic_root, tmp_path_factory) -> Path:
    """A 2-epoch linear run and a 3-epoch mlp run at another learning rate, under <tmp>/runs (trained once)."""
    home = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNISTLAB_DATA_DIR", str(synthetic_root))
        mp.setenv("MNISTLAB_NO_TENSORBOARD", "1")
        mp.chdir(home)
        assert main(["train", "model.name=linear", "train.epochs=2", "optim.lr=0.01", *TINY,
                     "--out", "runs/linear", "--quiet"]) == 0
        assert main(["train", "model.name=mlp", "train.epochs=3", "optim.lr=0.003", *TINY,
                     "--out", "runs/mlp", "--quiet"]) == 0
    return home


@pytest.fixture
def two_runs(runs_dir, monkeypatch, capsys) -> tuple[Path, Path]:
    """The two runs, with the working directory at their parent."""
    monkeypatch.chdir(runs_dir)
    capsys.readouterr()
    return Path("runs/linear"), Path("runs/mlp")


def test_compare_prints_figures_only_the_differing_settings_and_writes_the_plot(two_runs, capsys):
    a, b = two_runs
    assert main(["runs", "compare", str(a), str(b), "--plot", "curves.png"]) == 0
    out = capsys.readouterr().out
    assert str(a) in out and str(b) in out
    diff_block = out.split("config differences")[1].split("learning curves")[0]
    lines = [line.split() for line in diff_block.strip().splitlines()[1:]]
    settings = {line[0]: line[1:] for line in lines}
    assert settings["model.name"] == ['"linear"', '"mlp"']
    assert settings["optim.lr"] == ["0.01", "0.003"]
    assert settings["train.epochs"] == ["2", "3"]
    assert "train.batch_size" not in settings and "seed" not in settings  # equal settings are left out
    with Image.open("curves.png") as img:
        assert img.format == "PNG" and img.width > 400


def test_compare_json_holds_rows_diff_and_histories(two_runs, capsys):
    a, b = two_runs
    assert main(["runs", "compare", str(a), str(b), "--json", "--plot", "c.png"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in report["runs"]] == ["linear", "mlp"]
    assert report["config_diff"]["optim.lr"] == [0.01, 0.003]
    assert [len(h) for h in report["histories"]] == [2, 3]
    assert report == {**compare_runs([a, b]).to_dict(), "plot": "c.png"}


def test_sort_and_filters_read_through_the_library(two_runs, capsys):
    rows = list_runs(Path("runs"))
    by_params = filter_runs(rows, sort="params")
    assert [r["model"] for r in by_params] == ["linear", "mlp"]  # 7,850 < 535,818 parameters
    assert [r["model"] for r in filter_runs(rows, sort="params", reverse=True)] == ["mlp", "linear"]
    assert [r["model"] for r in filter_runs(rows, model="mlp")] == ["mlp"]
    assert filter_runs(rows, dataset="fashion-mnist") == []
    assert main(["runs", "--sort", "epochs", "--reverse", "--model", "mlp", "--dataset", "mnist", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == filter_runs(rows, sort="epochs", reverse=True, model="mlp",
                                                              dataset="mnist")
    assert main(["runs", "--sort", "colour"]) == 2
    assert "cannot sort runs by 'colour'" in capsys.readouterr().err


def test_runs_without_a_figure_sort_last():
    rows = [{"run": "a", "test_accuracy": None, "dataset": None, "model": None},
            {"run": "b", "test_accuracy": 0.5, "dataset": None, "model": None},
            {"run": "c", "test_accuracy": 0.9, "dataset": None, "model": None}]
    assert [r["run"] for r in filter_runs(rows, sort="test_accuracy")] == ["b", "c", "a"]
    assert [r["run"] for r in filter_runs(rows, sort="test_accuracy", reverse=True)] == ["c", "b", "a"]


def test_config_diff_and_flatten():
    one = {"seed": 0, "optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "model": {"args": {}}}
    two = {"seed": 0, "optim": {"lr": 0.2, "betas": [0.9, 0.99]}, "extra": 1, "model": {"args": {}}}
    assert flatten(one) == {"seed": 0, "optim.lr": 0.1, "optim.betas": [0.9, 0.99], "model.args": {}}
    assert config_diff([one, two]) == {"optim.lr": [0.1, 0.2], "extra": [ABSENT, 1]}
    assert config_diff([one, one]) == {}


def test_compare_refuses_one_run_and_a_folder_that_is_no_run(tmp_path, capsys):
    with pytest.raises(ConfigError, match="at least two runs"):
        compare_runs([tmp_path])
    assert main(["runs", "compare", str(tmp_path), str(tmp_path)]) != 0
    assert "not a run directory" in capsys.readouterr().err
