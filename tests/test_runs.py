"""Reading run directories, multi-seed statistics and evaluating an artifact, as library calls."""

from __future__ import annotations

import json

import pytest
from deploy_helpers import make_artifact

from mnistlab.assess import evaluate_run
from mnistlab.cli.main import main
from mnistlab.errors import MnistlabError
from mnistlab.runs import list_runs, show_run
from mnistlab.seeds import describe, seed_stats, summarize_runs


def _run(root, name, summary=None, checkpoint=False):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("seed: 0\n")
    if summary is not None:
        (d / "summary.json").write_text(json.dumps(summary))
    if checkpoint:
        (d / "checkpoint.pt").write_bytes(b"")
    return d


def test_list_and_show_runs(tmp_path):
    done = _run(tmp_path, "a", {"model": "cnn", "dataset": "mnist", "test_accuracy": 0.99, "epochs": 2,
                                "train_seconds": 3.0})
    _run(tmp_path, "b", checkpoint=True)
    rows = {r["run"]: r for r in list_runs(tmp_path)}
    assert rows[str(done)]["status"] == "done" and rows[str(done)]["test_accuracy"] == 0.99
    assert rows[str(tmp_path / "b")]["status"] == "interrupted" and rows[str(tmp_path / "b")]["model"] is None
    assert show_run(done)["summary"]["epochs"] == 2 and show_run(tmp_path / "b")["summary"] is None
    assert list_runs(tmp_path / "missing") == []
    with pytest.raises(MnistlabError, match="not a run directory"):
        show_run(tmp_path)


def test_runs_cli_prints_what_the_library_reads(tmp_path, capsys):
    _run(tmp_path, "a", {"model": "cnn", "test_accuracy": 0.5, "epochs": 1, "train_seconds": 1.0})
    assert main(["runs", "--root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == list_runs(tmp_path)
    assert main(["runs", "show"]) == 2


def test_seed_statistics():
    assert seed_stats([1.0]) == (1.0, 0.0)
    s = describe([1.0, 2.0, 3.0])
    assert (s.mean, s.std, s.min, s.max, s.n) == (2.0, 1.0, 1.0, 3.0, 3)
    assert describe([]) is None
    summary = summarize_runs([{"test_accuracy": None, "train_seconds": 2.0},
                              {"test_accuracy": 0.9, "train_seconds": 4.0}])
    assert summary.test_accuracy.n == 1 and summary.train_seconds.mean == 3.0


def test_evaluate_run_matches_the_cli(synthetic_data, tmp_path, capsys):
    artifact = make_artifact(tmp_path / "art", arch="linear")
    result = evaluate_run(artifact, progress=False)
    assert result.split == "test" and result.dataset == "mnist" and 0.0 <= result.report.accuracy <= 1.0
    assert main(["eval", str(artifact), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(result.to_dict()))
    with pytest.raises(MnistlabError, match="validation split is unknown"):
        evaluate_run(artifact, split="val", progress=False)
