"""Data-parallel training: 2 gloo processes under torchrun match one process; a dead rank is named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.checkpoint import load_checkpoint
from mnistlab.cli.main import build_parser, worker_argv
from mnistlab.config import load_config, resolve_recipe
from mnistlab.distributed import describe_failure, init_distributed, on_main
from mnistlab.errors import MnistlabError
from mnistlab.runner import resume_config, run_training

# SGD: its update is linear in the gradient, so the only difference between 1 and 2 processes
# is float reassociation in the gradient all-reduce (Adam's normalisation would magnify it in
# coordinates whose gradient is near zero). No dropout, no augmentation, no batch norm.
RECIPE = ["model.name=cnn", "train.batch_size=64", "data.val_size=200", "optim.name=sgd", "optim.lr=0.05",
          "train.restore_best=false", "train.threads=1", "train.eval_batch_size=500",
          "train.bf16=false", "train.channels_last=false", "optim.weight_decay=0", "schedule.name=constant",
          # ranks draw their own augmentation by design, so equality with one process needs it off
          "data.augment.translate=0", "data.augment.speckle=0", "data.augment.shading=0"]
LAUNCH_TIMEOUT_S = 120
# Weights of 1 and 2 processes after a few SGD epochs differ by float reassociation alone: up to
# ~2e-5 here (1.6e-5 seen in about 1 run of 8); one SGD epoch at lr 0.05 moves them far more, and
# ranks that drew their own augmentation end > 1e-2 apart (test below).
SAME = 1e-4

# A worker that kills itself (SIGKILL, like the OOM killer) on rank 1 right after epoch 2.
KILLER = '''
import os, signal, sys
import mnistlab.runner as runner
from mnistlab.cli.main import main

_run_training = runner.run_training

def run_training(cfg, **kw):
    def die(row):
        if os.environ["RANK"] == "1" and row["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    return _run_training(cfg, epoch_callback=die, **kw)

runner.run_training = run_training
sys.exit(main())
'''
# `mnistlab train --nproc 2 ...` whose workers run the script in argv[1] instead of `-m mnistlab`.
DRIVER = '''
import sys
import mnistlab.distributed as d
from mnistlab.cli.main import main

_torchrun = d.torchrun
d.torchrun = lambda nproc, program, **kw: _torchrun(nproc, [sys.argv[1], *program[2:]], **kw)
sys.exit(main(sys.argv[2:]))
'''


def _launch(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=LAUNCH_TIMEOUT_S)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def test_worker_argv_repeats_the_command_without_nproc():
    argv = ["--debug", "train", "mnist-fast", "optim.lr=0.1", "--out", "runs/x", "--nproc", "2", "--quiet", "--seeds", "3"]
    args = build_parser().parse_args(argv)
    again = worker_argv(args)
    assert "--nproc" not in again and again[:2] == ["--debug", "train"]
    reparsed = build_parser().parse_args(again)
    assert {**vars(reparsed), "nproc": 2, "func": None} == {**vars(args), "func": None}


def test_outside_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed(torch.device("cpu")) == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    assert on_main(lambda: 42) == 42

    def fails() -> None:
        raise MnistlabError("boom")

    with pytest.raises(MnistlabError, match="boom"):
        on_main(fails)


def test_describe_failure_blames_the_rank_that_failed_not_its_peers(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    def failure(local_rank: int, exitcode: int, log: str | None = None) -> ProcessFailure:
        if log is not None:
            path = tmp_path / "run" / "attempt_0" / str(local_rank) / "stderr.log"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(log)
        return ProcessFailure(local_rank=local_rank, pid=100 + local_rank, exitcode=exitcode, error_file="")

    # rank 1 killed; rank 0 only lost its peer; rank 2 stopped by torchrun
    code, line = describe_failure({0: failure(0, 3), 1: failure(1, -signal.SIGKILL, "epoch 1\n"),
                                   2: failure(2, -signal.SIGTERM, "")}, tmp_path)
    assert line.startswith("rank 1 (local rank 1, pid 101) died: killed by SIGKILL") and "stderr.log" in line
    # rank 2 raised; rank 1 only saw the connection drop
    code, line = describe_failure({1: failure(1, 1, "error: RuntimeError: Connection closed by peer\n"),
                                   2: failure(2, 1, "error: ValueError: bad batch\n")}, tmp_path)
    assert code == 1 and line.startswith("rank 2 (local rank 2) failed with exit code 1: ValueError: bad batch")
    # a user error met by every rank: rank 0 already printed it
    assert describe_failure({0: failure(0, 2), 1: failure(1, 2, "error: unknown config key 'x'\n")}, tmp_path) == (2, None)


@pytest.mark.parametrize("extra", [[], ["train.freeze_out=[0.3,0.6]"]], ids=["plain", "freeze-out"])
def test_two_gloo_processes_train_the_same_weights_as_one(synthetic_data, tmp_path, extra):
    overrides = [*RECIPE, "train.epochs=2", *extra]  # freeze-out: DDP is rebuilt over what still trains
    two = _launch(tmp_path, "-m", "mnistlab", "train", *overrides, "--out", "two", "--nproc", "2", "--quiet")
    assert two.returncode == 0, two.stderr[-2000:]
    one = run_training(load_config(resolve_recipe(None), overrides), out="one", quiet=True)
    # the same recipe read as a per-process batch (32 each) would be a different run
    run_training(load_config(resolve_recipe(None), [*overrides, "train.batch_size=32"]), out="per-rank", quiet=True)

    w1, w2 = load_file("one/model.safetensors"), load_file("two/model.safetensors")
    assert _max_diff(w1, w2) < SAME
    assert _max_diff(w1, load_file("per-rank/model.safetensors")) > 1e-2
    rows1 = [json.loads(x) for x in Path("one/metrics.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in Path("two/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows2] == [1, 2]
    for r1, r2 in zip(rows1, rows2, strict=True):  # train metrics are reduced over both ranks' shards
        assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)
        assert r2["train_acc"] == pytest.approx(r1["train_acc"], abs=1e-9)
        assert r2["val_acc"] == pytest.approx(r1["val_acc"], abs=1e-9)
    summary = json.loads(Path("two/summary.json").read_text())
    assert summary["test_accuracy"] == pytest.approx(one.summary["test_accuracy"], abs=0.01)
    assert not list(Path(tmp_path).glob("mnistlab-torchrun-*")), "logs of a successful launch are removed"


def _kill_rank_1_after_epoch_2(tmp_path: Path) -> list[str]:
    """Start a 3-epoch, 2-process run into ./run whose rank 1 is SIGKILLed after epoch 2; its overrides."""
    (tmp_path / "killer.py").write_text(KILLER)
    (tmp_path / "driver.py").write_text(DRIVER)
    overrides = [*RECIPE, "train.epochs=3"]
    killed = _launch(tmp_path, "driver.py", "killer.py", "train", *overrides, "--out", "run", "--nproc", "2", "--quiet")
    assert killed.returncode != 0
    last = killed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 (local rank 1, pid ") and "killed by SIGKILL" in last, killed.stderr[-2000:]
    assert "mnistlab train --resume run --nproc 2" in last
    assert "Traceback" not in killed.stderr
    assert not Path("run/summary.json").exists()
    state = load_checkpoint(Path("run"))
    assert state["epoch"] in (1, 2)  # the last complete epoch; the killed one never finished
    return overrides


def test_a_dead_rank_ends_the_job_with_one_clear_error_and_an_intact_checkpoint(synthetic_data, tmp_path):
    overrides = _kill_rank_1_after_epoch_2(tmp_path)
    resumed = run_training(resume_config(Path("run")), resume_dir=Path("run"), quiet=True)  # one process here
    assert resumed.fit.history[-1]["epoch"] == 3 and Path("run/summary.json").is_file()
    run_training(load_config(resolve_recipe(None), overrides), out="one", quiet=True)
    assert _max_diff(load_file("one/model.safetensors"), load_file("run/model.safetensors")) < SAME


@pytest.mark.slow
def test_both_ranks_resume_after_a_dead_rank(synthetic_data, tmp_path):
    overrides = _kill_rank_1_after_epoch_2(tmp_path)
    resumed = _launch(tmp_path, "-m", "mnistlab", "train", "--resume", "run", "--nproc", "2", "--quiet")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    rows = [json.loads(x) for x in Path("run/metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["epoch"] == 3 and Path("run/summary.json").is_file()
    # both ranks read the checkpoint: the result is the uninterrupted one-process run's
    run_training(load_config(resolve_recipe(None), overrides), out="one", quiet=True)
    assert _max_diff(load_file("one/model.safetensors"), load_file("run/model.safetensors")) < SAME


@pytest.mark.slow
def test_finetune_with_gradual_unfreezing_runs_unchanged_under_torchrun(synthetic_data, tmp_path):
    from mnistlab.cli.main import main

    run_training(load_config(resolve_recipe(None), [*RECIPE, "train.epochs=1"]), out="parent", quiet=True)
    # blocks unfrozen after DDP wrapped the model must be averaged too, or the ranks drift apart
    argv = ["finetune", "parent", "--dataset", "mnist", "--strategy", "partial", "finetune.partial_blocks=2",
            "finetune.gradual_unfreeze=1", "finetune.small.below=0", "finetune.layer_lr_decay=1.0", "optim.name=sgd",
            "optim.lr=0.05", "optim.weight_decay=0", "train.batch_size=64", "train.epochs=3", "train.threads=1",
            "train.restore_best=false", "data.val_size=200", "--quiet"]
    two = _launch(tmp_path, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "mnistlab", *argv, "--out", "two")
    assert two.returncode == 0, two.stderr[-2000:]
    assert main([*argv, "--out", "one"]) == 0
    assert _max_diff(load_file("one/model.safetensors"), load_file("two/model.safetensors")) < SAME
