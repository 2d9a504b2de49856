"""Semi-supervised fine-tuning (--unlabelled): FixMatch's loss, the sets kept apart, labels never read, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synthetic_digits
from finetune_helpers import make_parent
from safetensors.torch import load_file

from mnistlab.cli.main import main
from mnistlab.finetune.semi import align, semi_epochs, semi_loss

QUICK = ["--shots", "5", "--quiet", "finetune.steps=6", "train.batch_size=10", "finetune.semi.ratio=2",
         "finetune.semi.threshold=0.2", "train.threads=1", "train.eval_batch_size=512"]


@pytest.fixture
def parent(synthetic_data, tmp_path) -> Path:
    return make_parent(tmp_path / "parent")


def _write_csv(path: Path, images: np.ndarray, labels: np.ndarray) -> str:
    rows = [",".join(["label", *(f"pixel{i}" for i in range(784))])]
    rows += [",".join(map(str, [int(y), *img.reshape(-1).tolist()])) for img, y in zip(images, labels, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    return f"csv:{path}"


def _run(capsys, *argv: str) -> dict:
    code = main(["finetune", *argv])
    _, err = capsys.readouterr()
    assert code == 0, err
    out = argv[argv.index("--out") + 1]
    return {"summary": json.loads(Path(out, "summary.json").read_text()), "weights": load_file(f"{out}/model.safetensors")}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loss_counts_only_confident_pseudo_labels():
    torch.manual_seed(0)
    lx, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    weak = torch.tensor([[9.0, 0, 0], [0, 0, 0], [0, 0, 9.0], [0, 1.0, 0]])  # rows 0 and 2 are confident
    strong = torch.randn(4, 3, requires_grad=True)
    loss, share = semi_loss(lx, y, weak, strong, threshold=0.9, weight=2.0)
    ce = torch.nn.functional.cross_entropy
    expected = ce(lx, y) + 2.0 * (ce(strong[[0, 2]], torch.tensor([0, 2]), reduction="sum") / 4)
    assert share.item() == 0.5
    assert torch.allclose(loss, expected)
    loss.backward()  # the pseudo-labels carry no gradient; unconfident rows none either
    assert strong.grad[1].abs().sum() == 0 and strong.grad[3].abs().sum() == 0 and strong.grad[0].abs().sum() > 0



def test_an_epoch_is_a_pass_over_the_unlabelled_images():
    assert semi_epochs(6000, 59_900, 224) == (261, 23)  # 267 steps draw the pool once; 23 equal epochs
    assert semi_epochs(10, 60, 20) == (3, 4)  # 3 steps draw the pool: 4 epochs of 3 (12 >= 10 steps)
    assert semi_epochs(5, 10, 224) == (1, 5)  # a pool smaller than a step: an epoch per step


def test_alignment_evens_out_the_pseudo_label_classes():
    logits = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 0.5]])  # class 0 predicted too often
    aligned, spread = align(logits, None, momentum=0.0)
    p = torch.softmax(logits, 1)
    assert torch.allclose(spread, p.mean(0))
    q = torch.softmax(aligned, 1)
    assert torch.allclose(q.sum(1), torch.ones(3))
    assert (q[:, 1] > p[:, 1]).all()  # the rarer class gains in every row
    same, kept = align(logits, torch.full((2,), 0.5), momentum=1.0)  # a uniform running mean changes nothing
    assert torch.allclose(torch.softmax(same, 1), p, atol=1e-6) and torch.equal(kept, torch.full((2,), 0.5))

def test_unlabelled_labels_are_never_read_and_the_sets_are_recorded(parent, tmp_path, capsys):
    images, labels = synthetic_digits(120, seed=7)  # other images than the labelled ones
    right = _write_csv(tmp_path / "right.csv", images, labels)
    wrong = _write_csv(tmp_path / "wrong.csv", images, (labels + 1 + np.arange(len(labels)) % 9) % 10)
    a = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", right, "--out", "a", *QUICK)
    b = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", wrong, "--out", "b", *QUICK)
    plain = _run(capsys, str(parent), "--dataset", "mnist", "--out", "plain", *QUICK)
    assert _same(a["weights"], b["weights"])  # bitwise: wrong labels change nothing
    assert not _same(a["weights"], plain["weights"])  # ... while the unlabelled images do train
    assert a["summary"]["unlabelled"] == {"spec": right, "images": 120, "dropped_as_labelled": 0}
    assert a["summary"]["labelled"]["train_images"] == 50


def test_labelled_images_are_taken_out_of_the_unlabelled_set(parent, capsys):
    run = _run(capsys, str(parent), "--dataset", "mnist", "--unlabelled", "mnist", "--out", "same", *QUICK)
    s = run["summary"]
    assert s["labelled"]["train_images"] == 50 and s["unlabelled"]["dropped_as_labelled"] >= 50
    assert s["unlabelled"]["images"] + s["unlabelled"]["dropped_as_labelled"] == 1200  # the synthetic training split
    history = [json.loads(line) for line in Path("same/metrics.jsonl").read_text().splitlines()]
    assert all(0 <= row["confident"] <= 1 for row in history)


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_gives_the_same_final_weights(parent, tmp_path, capsys, monkeypatch):
    images, labels = synthetic_digits(60, seed=8)
    pool = _write_csv(tmp_path / "pool.csv", images, labels)
    argv = [str(parent), "--dataset", "mnist", "--unlabelled", pool, *QUICK, "finetune.steps=15", "finetune.semi.align=true"]
    full = _run(capsys, *argv, "--out", "full")
    from mnistlab.finetune import run as module

    original = module._Plan.epoch_done

    def stop_after_first(self, row):
        original(self, row)
        if row["epoch"] == 1:
            raise _Stop

    monkeypatch.setattr(module._Plan, "epoch_done", stop_after_first)
    assert main(["finetune", *argv, "--out", "part"]) == 1
    monkeypatch.setattr(module._Plan, "epoch_done", original)
    assert main(["finetune", "--resume", "part", "--quiet"]) == 0
    assert _same(full["weights"], load_file("part/model.safetensors"))


def test_help_and_dry_run_of_the_few_labels_recipe(parent, capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    assert "--unlabelled" in capsys.readouterr().out
    code = main(["finetune", str(parent), "finetune-few-labels", "--dataset", "mnist", "--shots", "5",
                 "--unlabelled", "mnist", "--dry-run", "--out", "dry", "--quiet", "train.threads=1"])
    assert code == 0, capsys.readouterr().err
