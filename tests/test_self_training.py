"""Self-training (finetune.semi.method=self-training): rounds from the parent, labels never read, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_digits
from finetune_helpers import make_parent
from safetensors.torch import load_file
from test_semi import _run, _same, _write_csv

from mnistlab.cli.main import main
from mnistlab.data.dataset import load_dataset
from mnistlab.finetune import self_training

QUICK = ["--shots", "5", "--quiet", "finetune.steps=6", "train.batch_size=10", "train.threads=1",
         "train.eval_batch_size=512", "finetune.semi.method=self-training", "finetune.semi.self_training.rounds=2",
         "finetune.semi.self_training.epochs=2", "finetune.semi.self_training.batch_size=64",
         "finetune.semi.self_training.repeat=2", "finetune.semi.self_training.bf16=false"]


@pytest.fixture
def parent(synthetic_data, tmp_path) -> Path:
    return make_parent(tmp_path / "parent", "fastcnn")


@pytest.fixture
def pool(tmp_path) -> str:
    images, labels = synthetic_digits(120, seed=7)  # other images than the labelled ones
    return _write_csv(tmp_path / "pool.csv", images, labels)


def test_unlabelled_labels_are_never_read(parent, pool, tmp_path, capsys):
    images, labels = synthetic_digits(120, seed=7)
    wrong = _write_csv(tmp_path / "wrong.csv", images, (labels + 1 + np.arange(len(labels)) % 9) % 10)
    a = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", pool, "--out", "a", *QUICK)
    b = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", wrong, "--out", "b", *QUICK)
    plain = _run(capsys, str(parent), "--dataset", "mnist", "--out", "plain", *QUICK)
    assert _same(a["weights"], b["weights"])  # bitwise: wrong labels change nothing
    assert not _same(a["weights"], plain["weights"])  # ... while the unlabelled images do train
    s = a["summary"]
    assert s["unlabelled"] == {"spec": pool, "images": 120, "dropped_as_labelled": 0}
    assert [r["round"] for r in s["self_training"]] == [1, 2]
    assert s["self_training"][0]["changed"] is None and 0 <= s["self_training"][1]["changed"] <= 120


def test_every_round_starts_from_the_parent_and_learns_the_last_rounds_labels(parent, pool, capsys, monkeypatch):
    images = load_dataset(pool, "train", progress=False).images  # none is a labelled one: all are unlabelled
    calls = []
    real_fit = self_training.fit

    def spy(cfg, model, data, val, **kw):
        calls.append({"start": {k: v.clone() for k, v in model.state_dict().items()}, "data": data, "cfg": cfg})
        result = real_fit(cfg, model, data, val, **kw)
        labelled = calls[0]["data"]  # round 0 trains on the labelled images alone; their class shares align the labels
        calls[-1]["labels"] = self_training.pseudo_labels(result.model, images, labelled, cfg, torch.device("cpu"))
        return result

    monkeypatch.setattr(self_training, "fit", spy)
    run = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", pool, "--out", "r", *QUICK)
    assert len(calls) == 3
    for later in calls[1:]:
        assert _same(later["start"], calls[0]["start"])  # each round starts again from the parent's weights
        assert later["cfg"].optim.lr == 0.02 and later["cfg"].schedule.name == "onecycle"
    n = len(images)
    for before, after in zip(calls, calls[1:], strict=False):
        assert torch.equal(after["data"].labels[:n], before["labels"])  # the last round's (TTA) labels, in order
        assert len(after["data"]) == n + 2 * 50  # plus the labelled images twice (repeat=2)
    history = [json.loads(line) for line in Path("r/metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == list(range(1, len(history) + 1))
    assert sorted({row["round"] for row in history}) == [0, 1, 2] and run["summary"]["epochs"] == len(history)


class _Stop(Exception):
    pass


def test_resume_in_the_middle_of_a_round_gives_the_same_final_weights(parent, pool, capsys, monkeypatch):
    argv = [str(parent), "--dataset", "mnist", "--unlabelled", pool, *QUICK]
    full = _run(capsys, *argv, "--out", "full")
    epochs0 = sum(1 for line in Path("full/rounds/0/metrics.jsonl").read_text().splitlines())
    from mnistlab.finetune import run as module

    original = module._Plan.epoch_done

    def stop_in_round_one(self, row):
        original(self, row)
        if row["epoch"] == epochs0 + 1:  # the first epoch of round 1
            raise _Stop

    monkeypatch.setattr(module._Plan, "epoch_done", stop_in_round_one)
    assert main(["finetune", *argv, "--out", "part"]) == 1
    assert not Path("part/rounds/2").exists()
    monkeypatch.setattr(module._Plan, "epoch_done", original)
    assert main(["finetune", "--resume", "part", "--quiet"]) == 0
    assert _same(full["weights"], load_file("part/model.safetensors"))
    assert _rows("part/metrics.jsonl") == _rows("full/metrics.jsonl")


def _rows(path: str) -> list[dict]:
    """metrics.jsonl without the timings."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in rows]


def test_an_unknown_method_is_refused(parent, pool, capsys):
    code = main(["finetune", str(parent), "--dataset", "mnist", "--unlabelled", pool, "--out", "x", *QUICK,
                 "finetune.semi.method=mixmatch"])
    err = capsys.readouterr().err
    assert code != 0 and "mixmatch" in err and "self-training" in err and not Path("x").exists()


def test_balance_gives_each_class_its_share_of_the_pseudo_labels():
    torch.manual_seed(0)
    logits = torch.randn(400, 3)
    logits[:, 0] += 2.0  # a model that over-predicts class 0
    p = torch.softmax(logits, 1)
    shares = torch.tensor([0.5, 0.25, 0.25])
    q = self_training.balance(p, shares)
    assert torch.allclose(q.mean(0), shares, atol=1e-3) and torch.allclose(q.sum(1), torch.ones(400))
    before, after = torch.bincount(p.argmax(1), minlength=3), torch.bincount(q.argmax(1), minlength=3)
    assert before[0] > 300 and after[0] < before[0] and (after[1:] > before[1:]).all()
    even = torch.eye(3).repeat(10, 1) * 4  # already balanced: labels unchanged
    assert torch.equal(self_training.balance(torch.softmax(even, 1), torch.full((3,), 1 / 3)).argmax(1), even.argmax(1))
