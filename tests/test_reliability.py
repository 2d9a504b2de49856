"""Reliability: malformed parameters are a 4xx, nonsense settings exit 2 before any work,
a run killed before its first checkpoint resumes, and the messages of the edge cases."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnistlab.cli.main import main
from mnistlab.config import load_config
from mnistlab.errors import ConfigError


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- HTTP parameters ---------------------------------------------------------------------------

BAD_TOP_K = ["%C2%B2", "%D9%A3", "1%C2%B2", "8" * 8000, "0", "1001", "-1", "1.5", "1e3", "", "%00", "%2B5", "0x10",
             "%F0%9F%98%80", "%FF"]


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("fastapi")
    from deploy_helpers import tiny_artifact
    from fastapi.testclient import TestClient

    from mnistlab.serve import Settings, create_app

    with TestClient(create_app(Settings(model=str(tiny_artifact()), threads=1)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def seven() -> bytes:
    from deploy_helpers import digit_image, png_bytes

    return png_bytes(digit_image("7"))


@pytest.mark.parametrize("path", ["/predict", "/predict/batch"])
@pytest.mark.parametrize("value", BAD_TOP_K, ids=[v[:12] for v in BAD_TOP_K])
def test_a_malformed_top_k_is_a_422_never_a_500(client, seven, path, value):
    field = "file" if path == "/predict" else "files"
    r = client.post(f"{path}?top_k={value}", files={field: ("a.png", seven)})
    assert r.status_code == 422, r.text
    message = r.json()["error"]
    assert message.startswith("top_k must be an integer from 1 to 1000") and len(message) < 120


@pytest.mark.parametrize("value", ["maybe", "%C2%B2", "t" * 5000, "%FF"])
def test_a_malformed_preview_is_a_422(client, seven, value):
    r = client.post(f"/predict?preview={value}", files={"file": ("a.png", seven)})
    assert r.status_code == 422 and r.json()["error"].startswith("preview must be true or false")


@pytest.mark.parametrize("query, k", [("top_k=5", 5), ("top_k=%205", 5), ("top_k=0005", 5), ("top_k=1000", 10)])
def test_well_formed_top_k_still_works(client, seven, query, k):
    r = client.post(f"/predict?{query}&preview=ON", files={"file": ("a.png", seven)})
    assert r.status_code == 200 and len(r.json()["top_k"]) == k and "preview" in r.json()


def test_param_parsers_read_any_mapping():
    pytest.importorskip("fastapi")
    from mnistlab.serve.payload import PayloadError, bool_param, int_param

    assert int_param({}, "n", 1, 9) is None and int_param({"n": "9"}, "n", 1, 9) == 9
    assert bool_param({"b": "Yes"}, "b") is True and bool_param({}, "b", default=True) is True
    for raw in ("²", "١", "9" * 5000, "10"):
        with pytest.raises(PayloadError) as e:
            int_param({"n": raw}, "n", 1, 9)
        assert e.value.status == 422


# --- settings out of range: one line, exit 2, before any work ----------------------------------

@pytest.mark.parametrize("override, words", [
    ("train.epochs=-1", ["train.epochs", "at least 1", "-1"]),
    ("train.epochs=0", ["train.epochs", "at least 1"]),
    ("train.batch_size=0", ["train.batch_size", "at least 1"]),
    ("data.val_size=999999", ["data.val_size", "60,000", "15,000"]),
    ("data.val_size=-5", ["data.val_size", "zero or more"]),
    ("data.val_size=10.5", ["data.val_size", "whole number"]),
    ("optim.lr=-0.1", ["optim.lr", "positive"]),
    ("optim.lr=.nan", ["optim.lr", "nan"]),
    ("optim.betas=[0.9,1.5]", ["optim.betas[1]", "[0, 1)"]),
    ("optim.betas=[0.9]", ["optim.betas", "two numbers"]),
    ("data.augment.hflip=1.5", ["data.augment.hflip", "[0, 1]"]),
    ("data.augment.rotate=-10", ["data.augment.rotate"]),
    ("train.label_smoothing=1", ["train.label_smoothing", "[0, 1)"]),
    ("train.checkpoint_every_steps=-1", ["train.checkpoint_every_steps", "zero or more"]),
    ("train.checkpoint_every_seconds=.inf", ["train.checkpoint_every_seconds"]),
    ("finetune.small.augment.erase=2", ["finetune.small.augment.erase", "[0, 1]"]),
    ("seed=-3", ["seed"]),
])
def test_nonsense_settings_exit_2_with_one_line_before_any_work(synthetic_data, capsys, override, words):
    code, out, err = _cli(capsys, "train", override, "--out", "run", "--quiet")
    assert code == 2 and "Traceback" not in err and out == ""
    line = err.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:")
    for w in words:
        assert w in line, line
    assert not Path("run").exists()  # refused before a run directory (or any data) was made


def test_every_numeric_field_has_a_range_even_fields_added_later():
    from dataclasses import fields

    from mnistlab.config import AugmentConfig, config_from_dict

    for f in fields(AugmentConfig):  # every augmentation knob, present and future, refuses a negative
        with pytest.raises(ConfigError, match=f"data.augment.{f.name}"):
            config_from_dict({"data": {"augment": {f.name: -1.0}}})
    assert load_config(None, ["train.epochs=1", "data.val_size=0.2", "train.checkpoint_every_steps=0"]).train.epochs == 1


def test_nproc_below_one_is_refused(capsys):
    code, _, err = _cli(capsys, "train", "--nproc", "0")
    assert code == 2 and "--nproc" in err


# --- resume: from the config alone, from within an epoch, and of a complete run -----------------

MID = ["model.name=mlp", "model.args.dropout=0.3", "train.epochs=2", "train.batch_size=16", "train.threads=1",
       "data.augment.rotate=10", "data.augment.erase=0.5", "train.ema=0.9", "train.checkpoint_every_steps=3",
       "train.checkpoint_every_seconds=0"]


def _tiny_data(n: int, seed: int):
    from mnistlab.data.imagedata import ImageData

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    return ImageData(images, torch.randint(0, 10, (n,), generator=g), [str(i) for i in range(10)], "tiny", 0.13, 0.31)


class _Killed(Exception):
    pass


def _fit(run_dir: Path, *, resume: bool = False):
    from mnistlab.models import create_model
    from mnistlab.train import fit

    cfg = load_config(None, MID)
    torch.manual_seed(0)
    model = create_model("mlp", dropout=0.3)
    return fit(cfg, model, _tiny_data(160, 1), _tiny_data(32, 2), device=torch.device("cpu"), run_dir=run_dir,
               resume=resume, quiet=True)


@pytest.mark.parametrize("kills_after", [1, 3, 4, 5, 7], ids=lambda k: f"checkpoint-{k}")
def test_a_resume_from_within_an_epoch_gives_bitwise_equal_weights(tmp_path, monkeypatch, kills_after):
    # 160 images of 16: 10 steps an epoch; checkpoints after steps 3, 6, 9, 10 (epoch end), 12, 15, 18, 20
    full = _fit(tmp_path / "full")
    import mnistlab.train as train_module

    real_save, saved = train_module.save_checkpoint, []

    def save_then_die(run_dir, state):
        real_save(run_dir, state)
        saved.append(state.get("within_epoch", {}).get("position"))
        if len(saved) == kills_after:
            raise _Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    (tmp_path / "part").mkdir()
    with pytest.raises(_Killed):
        _fit(tmp_path / "part")
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    resumed = _fit(tmp_path / "part", resume=True)
    assert saved[:5] == [3, 6, 9, None, 2][:kills_after]  # mid-epoch positions; None is an epoch's end
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    def same(h):
        return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in h]
    assert same(full.history) == same(resumed.history)  # the epoch's running loss and accuracy too
    rows = [json.loads(line)["epoch"] for line in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2]


LIGHT = ["model.name=linear", "train.epochs=1", "train.batch_size=64", "data.val_size=200", "train.threads=1",
         "train.eval_batch_size=500"]


def test_resume_of_a_run_stopped_before_its_first_checkpoint_starts_from_the_first_step(synthetic_data, capsys):
    from safetensors.torch import load_file

    assert _cli(capsys, "train", *LIGHT, "--out", "full", "--quiet")[0] == 0
    Path("part").mkdir()  # what a kill before the first checkpoint leaves: the resolved config alone
    Path("part/config.yaml").write_text(Path("full/config.yaml").read_text())
    code, out, err = _cli(capsys, "train", "--resume", "part")
    assert code == 0, err
    assert "stopped before its first checkpoint: training from the first step" in out
    a, b = load_file("full/model.safetensors"), load_file("part/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_of_a_complete_run_says_so_and_trains_nothing(synthetic_data, capsys):
    assert _cli(capsys, "train", *LIGHT, "--out", "run", "--quiet")[0] == 0
    before = Path("run/summary.json").stat().st_mtime_ns
    code, out, _ = _cli(capsys, "train", "--resume", "run")
    assert code == 0 and "run is already complete (1 epochs), nothing to resume: test accuracy" in out
    assert Path("run/summary.json").stat().st_mtime_ns == before
    code, out, _ = _cli(capsys, "train", "--resume", "run", "--json")
    assert json.loads(out)["epochs"] == 1


class _NotState:
    pass


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


BAD_CHECKPOINTS = {
    "empty": (b"", ["is empty (0 bytes)", "delete checkpoint.pt"]),
    "garbage": (b"not a torch file at all" * 4, ["is corrupt (UnpicklingError: ", "delete checkpoint.pt"]),
    "truncated": (None, ["is corrupt (", "delete checkpoint.pt"]),
    "python objects": (_torch_bytes({"model": _NotState(), "epoch": 0}), ["is not a checkpoint mnistlab wrote", "not loaded"]),
    "not a state": (_torch_bytes([1, 2]), ["is not a checkpoint mnistlab wrote"]),
}


def test_a_bad_checkpoint_is_one_clear_line(synthetic_data, capsys):
    import shutil

    assert _cli(capsys, "train", *LIGHT, "--out", "run", "--quiet")[0] == 0
    Path("run/summary.json").unlink()  # an interrupted run, so --resume reads the checkpoint
    good = Path("run/checkpoint.pt").read_bytes()
    for name, (content, words) in BAD_CHECKPOINTS.items():
        shutil.copytree("run", name)
        Path(name, "checkpoint.pt").write_bytes(good[: len(good) // 2] if content is None else content)
        code, _, err = _cli(capsys, "train", "--resume", name)
        assert code == 2 and "Traceback" not in err, name
        line = err.strip()
        assert len(line.splitlines()) == 1 and "weights_only" not in line, line
        for w in words:
            assert w in line, line


# --- SIGKILL at random moments: the resumed run ends with bitwise the same weights -------------

KILL_RUN = ["model.name=mlp", "model.args.dropout=0.2", "data.augment.rotate=10", "data.augment.erase=0.3",
            "train.epochs=3", "train.batch_size=4", "data.val_size=100", "train.eval_batch_size=500", "train.threads=1",
            "train.checkpoint_every_steps=20", "train.checkpoint_every_seconds=0"]  # 125 steps an epoch


def _wait_and_kill(proc: subprocess.Popen, run: Path, rng, first: bool) -> bool:
    """SIGKILL ``proc``: the first time as soon as the config is written (before any checkpoint), later
    at a random moment after 1-3 more checkpoints. False when it finished first."""
    ckpt, deadline = run / "checkpoint.pt", time.monotonic() + 300
    target, seen, last = int(rng.integers(1, 4)), 0, None
    while proc.poll() is None and time.monotonic() < deadline:
        if first and (run / "config.yaml").is_file():
            break
        ino = ckpt.stat().st_ino if ckpt.exists() else None
        if ino is not None and ino != last:
            seen, last = seen + 1, ino
            if not first and seen > target:  # seen - 1 new checkpoints since the process started
                time.sleep(float(rng.uniform(0, 0.03)))
                break
        time.sleep(0.0005)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True


@pytest.mark.slow  # six processes start torch: about a minute here; the in-process variant above is fast
def test_sigkill_at_five_random_moments_then_resume_gives_bitwise_equal_weights(tmp_path, monkeypatch, capsys):
    import numpy as np
    from conftest import write_synthetic_mnist
    from safetensors.torch import load_file

    from mnistlab.checkpoint import has_checkpoint, load_checkpoint

    write_synthetic_mnist(tmp_path / "data" / "mnist", n_train=600, n_test=100)
    env = {**os.environ, "MNISTLAB_DATA_DIR": str(tmp_path / "data"), "MNISTLAB_NO_TENSORBOARD": "1",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    assert _cli(capsys, "train", *KILL_RUN, "--out", "full", "--quiet")[0] == 0
    rng, run, stops = np.random.default_rng(19), tmp_path / "part", []
    argv = [sys.executable, "-m", "mnistlab", "train", *KILL_RUN, "--out", str(run), "--quiet"]
    for k in range(5):
        proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if not _wait_and_kill(proc, run, rng, first=k == 0):
            assert proc.returncode == 0, proc.stderr.read().decode()
            break
        state = load_checkpoint(run) if has_checkpoint(run) else None
        stops.append(None if state is None else (state["epoch"], (state.get("within_epoch") or {}).get("position")))
        argv = [sys.executable, "-m", "mnistlab", "train", "--resume", str(run), "--quiet"]
    else:
        assert subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True).returncode == 0
    print("stopped at (epochs done, step in the epoch):", stops)
    assert stops[0] is None  # killed before the first checkpoint: only config.yaml
    assert any(s is not None and s[0] == 0 and s[1] for s in stops)  # within the first epoch
    assert sum(1 for s in stops if s is not None and s[1]) >= 2  # within epochs, from checkpoints written there
    full, part = load_file(tmp_path / "full" / "model.safetensors"), load_file(run / "model.safetensors")
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    rows = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3]
