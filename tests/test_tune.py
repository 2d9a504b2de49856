"""Hyperparameter search: space checks, exact grid coverage, kill-and-resume without repeats."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from mnistlab.cli.main import main  # noqa: E402
from mnistlab.config import RECIPES_DIR, load_config  # noqa: E402
from mnistlab.errors import ConfigError  # noqa: E402
from mnistlab.search import study as studies  # noqa: E402
from mnistlab.search.space import (  # noqa: E402
    SPACES_DIR,
    check_space,
    default_space,
    load_space,
    parse_space,
    resolve_space,
    trial_config,
)
from mnistlab.search.tune import TuneOptions, run_tune  # noqa: E402

TINY = {"model.name": "linear", "train.epochs": 1, "data.val_size": 100, "data.train_limit": 300}
GRID_SPACE = """
fixed: {model.name: linear, train.epochs: 1, data.val_size: 100, data.train_limit: 300}
params:
  optim.lr: {type: log_uniform, low: 1.0e-3, high: 1.0e-1, grid: [3.0e-3, 3.0e-2]}
  train.batch_size: [32, 64]
"""
# the kill test's trials must take long enough to be cut off between the first and the last
KILL_SPACE = """
fixed: {model.name: linear, train.epochs: 2, data.val_size: 100, data.train_limit: 300}
params:
  optim.lr: {type: log_uniform, low: 1.0e-4, high: 1.0e-1}
  train.label_smoothing: {type: uniform, low: 0.0, high: 0.2}
"""
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def _space(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _finished(study) -> list:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


@pytest.mark.parametrize("name", sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
def test_every_shipped_space_fits_its_recipe(name):
    from mnistlab.config import resolve_recipe

    recipe = resolve_recipe(name) if (RECIPES_DIR / f"{name}.yaml").is_file() else resolve_recipe(None)
    space = load_space(resolve_space(name))
    check_space(load_config(recipe), space)
    assert space.params and "data.val_size" not in space.fixed  # trials are scored on the recipe's validation split


def test_the_default_space_searches_the_usual_knobs():
    space = load_space(default_space(Path("mnist-fast.yaml")))
    assert {"optim.lr", "optim.weight_decay", "train.batch_size", "model.args.dropout"} <= set(space.keys)


@pytest.mark.parametrize("text, message", [
    ("params: {optim.lrr: {type: uniform, low: 0.1, high: 0.2}}", "unknown config key 'optim.lrr'"),
    ("params: {model.args.width: [16, 32]}", "model 'cnn' has no argument 'width'"),
    ("params: {train.batch_size: {type: uniform, low: 16.5, high: 64}}", "train.batch_size"),
    ("params: {optim.lr: {type: log_uniform, low: 0.0, high: 0.1}}", "needs low > 0"),
    ("params: {optim.lr: {type: gaussian, low: 0.1, high: 0.2}}", "has type 'gaussian'"),
    ("params: {optim.lr: {type: uniform, low: 0.3, high: 0.2}}", "must be below high"),
    ("fixed: {train.epochs: 1}\nparams: {train.epochs: [1, 2]}", "both fixed and searched"),
    ("params: {model.args.dropout: [0.2, 1.5]}", "dropout must be in [0, 1)"),
])
def test_bad_spaces_fail_up_front_with_one_clear_line(text, message):
    import yaml

    with pytest.raises(ConfigError) as err:
        check_space(load_config(None), parse_space(yaml.safe_load(text), "s.yaml"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_trial_config_applies_fixed_then_sampled_values_with_their_types():
    space = parse_space({"fixed": {"train.epochs": 2}, "params": {"optim.lr": {"type": "log_uniform", "low": 1e-5, "high": 1e-2}}})
    cfg = trial_config(load_config(None), space, {"optim.lr": 1e-5})
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float) and cfg.train.epochs == 2


def test_grid_values_of_each_kind_and_none_for_a_continuous_range():
    space = parse_space({"params": {
        "optim.lr": {"type": "log_uniform", "low": 1e-4, "high": 1e-2, "grid": [1e-3]},
        "train.epochs": {"type": "int", "low": 1, "high": 5, "step": 2},
        "train.label_smoothing": {"type": "uniform", "low": 0.0, "high": 0.2, "step": 0.1},
        "schedule.name": ["cosine", "onecycle"],
    }}, "s.yaml")
    assert space.grid() == {"optim.lr": [1e-3], "train.epochs": [1, 3, 5], "train.label_smoothing": [0.0, 0.1, 0.2],
                            "schedule.name": ["cosine", "onecycle"]}
    assert space.grid_size() == 18
    space = parse_space({"params": {"optim.lr": {"type": "log_uniform", "low": 1e-4, "high": 1e-2}}}, "s.yaml")
    with pytest.raises(ConfigError, match="no grid values"):
        space.grid()


def test_worker_liveness():
    assert studies.worker_alive(studies.worker_token()) is True
    host, boot, _, _ = studies.worker_token().split("|")
    assert studies.worker_alive(f"{host}|{boot}|{2**22 + 12345}|") is False  # above pid_max: never alive
    assert studies.worker_alive(f"not-{socket.gethostname()}|x|1|") is None  # another machine: cannot tell


def test_grid_sampler_visits_exactly_the_grid_even_across_a_crash(synthetic_data, tmp_path):
    space = load_space(_space(tmp_path, GRID_SPACE))
    grid = space.grid()
    points = {(lr, bs) for lr in grid["optim.lr"] for bs in grid["train.batch_size"]}
    assert len(points) == space.grid_size() == 4
    base = load_config(None)
    opts = TuneOptions(out=tmp_path / "t", trials=2, sampler="grid", pruner="none", final=False, quiet=True)
    first = run_tune(base, space, opts)
    assert len(_finished(first.study)) == 2
    # a crashed worker: a trial left RUNNING, on a grid point, by a process that no longer exists
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}",
                              sampler=optuna.samplers.GridSampler(grid, seed=base.seed))
    orphan = study.ask()
    for p in space.params:
        p.suggest(orphan)
    host, boot, _, _ = studies.worker_token().split("|")
    orphan.set_user_attr("worker", f"{host}|{boot}|{2**22 + 12345}|")
    orphan_params = dict(orphan.params)

    result = run_tune(base, space, TuneOptions(out=tmp_path / "t", trials=None, sampler="grid", pruner="none",
                                               final=False, quiet=True))
    finished = _finished(result.study)
    visited = [(t.params["optim.lr"], t.params["train.batch_size"]) for t in finished]
    assert sorted(visited) == sorted(points)  # every grid point once, none twice
    crashed = result.study.trials[orphan.number]
    assert crashed.state == optuna.trial.TrialState.FAIL and crashed.user_attrs["interrupted"] is True
    retry = [t for t in finished if t.user_attrs.get("retry_of") == orphan.number]
    assert len(retry) == 1 and retry[0].params == orphan_params
    assert (tmp_path / "t" / "trials.csv").is_file() and (tmp_path / "t" / "best.yaml").is_file()
    best = load_config(tmp_path / "t" / "best.yaml")
    assert best.model.name == "linear" and best.optim.lr == result.summary["best_params"]["optim.lr"]


def test_resume_refuses_another_space_and_final_run_tests_the_best_once(synthetic_data, tmp_path, capsys):
    space = _space(tmp_path, GRID_SPACE)
    args = ["tune", "--space", str(space), "--sampler", "grid", "--trials", "2", "--out", "t", "--quiet", "--pruner", "none"]
    assert main(args) == 0
    summary = json.loads(Path("t/summary.json").read_text())
    final = Path(summary["final_run"])
    assert final.name == f"best-{summary['best_trial']}" and (final / "model.safetensors").is_file()
    assert json.loads((final / "summary.json").read_text())["test_accuracy"] == summary["test_accuracy"] > 0.5
    assert summary["final_val_accuracy"] == pytest.approx(summary["best_val_accuracy"])  # same config, same seed
    assert (Path("t") / "history.png").is_file()
    capsys.readouterr()
    other = _space(tmp_path, GRID_SPACE.replace("3.0e-2]", "1.0e-2]"), "other.yaml")
    assert main(["tune", "--space", str(other), "--sampler", "grid", "--out", "t"]) == 2
    assert "holds a study of another recipe or search space" in capsys.readouterr().err


def _mid_study(db: Path) -> bool:
    """Whether a trial has finished and the next one is training (worker and both parameters recorded)."""
    if not db.is_file():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as con:
            finished = con.execute("SELECT COUNT(*) FROM trials WHERE state IN ('COMPLETE', 'PRUNED')").fetchone()[0]
            running = con.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key = 'worker' "
                "AND (SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id) = 2").fetchone()[0]
    except sqlite3.OperationalError:  # tables not created yet
        return False
    return finished >= 1 and running == 1


def test_killed_study_resumes_without_repeating_finished_trials(synthetic_data, tmp_path):
    n = 5
    space = _space(tmp_path, KILL_SPACE)
    cmd = [sys.executable, "-m", "mnistlab", "tune", "--space", str(space), "--trials", str(n), "--sampler", "random",
           "--pruner", "none", "--out", "t", "--no-final", "--quiet"]
    db = Path("t/study.db")
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not _mid_study(db) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode()
    storage = optuna.storages.RDBStorage(f"sqlite:///{db.resolve()}")
    before = {t.number: (t.params, t.value) for t in _finished(optuna.load_study(study_name="t", storage=storage))}
    storage.engine.dispose()  # hold no connection while the second session writes
    assert 1 <= len(before) < n, f"the kill should land mid-study; finished {len(before)} of {n}\n{log}"

    done = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="t", storage=storage)
    finished = _finished(study)
    assert len(finished) == n
    after = {t.number: (t.params, t.value) for t in finished}
    assert all(after[k] == v for k, v in before.items())  # the first session's trials are kept as they were
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == n  # nothing ran twice (a reseeded sampler would replay the first draws)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    (cut,) = study.get_trials(states=(optuna.trial.TrialState.FAIL,))  # the trial the kill cut off ...
    assert cut.user_attrs.get("interrupted") is True and cut.number not in before
    retries = [r for r in finished if r.user_attrs.get("retry_of") == cut.number]
    assert len(retries) == 1 and retries[0].params == cut.params  # ... ran again once, same parameters
    dirs = {p.name for p in Path("t/trials").iterdir()}
    assert {str(t.number) for t in finished} <= dirs <= {str(t.number) for t in study.trials}
