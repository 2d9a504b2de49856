"""Cross-validation: folds stratified, disjoint, covering and reproducible; test set never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mnistlab.splits as splits
from mnistlab.cli.main import main
from mnistlab.config import load_config
from mnistlab.cv import run_cv, stratified_folds
from mnistlab.errors import ConfigError, DataError

TINY = ["model.name=linear", "train.epochs=1", "data.train_limit=240", "train.batch_size=32"]


def _labels() -> torch.Tensor:
    """Imbalanced labels in a shuffled order: 50 of class 0, 23 of class 1, 7 of class 2, 11 of class 3."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate((50, 23, 7, 11))])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(3))]


@pytest.mark.parametrize("k", [2, 5, 7])
def test_folds_are_disjoint_cover_everything_and_are_stratified(k):
    y = _labels()
    folds = stratified_folds(y, k, seed=0)
    assert len(folds) == k
    every = torch.cat(folds)
    assert len(every) == len(y) and torch.equal(every.sort().values, torch.arange(len(y)))  # disjoint and covering
    sizes = torch.tensor([len(f) for f in folds])
    assert int(sizes.max() - sizes.min()) <= 1
    for c in range(4):
        per_fold = torch.tensor([int((y[f] == c).sum()) for f in folds])
        total = int((y == c).sum())
        assert int(per_fold.sum()) == total
        assert int(per_fold.max() - per_fold.min()) <= 1, (c, per_fold.tolist())  # each class's share, +-1


def test_folds_are_reproducible_from_the_seed_and_change_with_it():
    y = _labels()
    a, b, c = stratified_folds(y, 5, seed=1), stratified_folds(y, 5, seed=1), stratified_folds(y, 5, seed=2)
    assert all(torch.equal(x, z) for x, z in zip(a, b, strict=True))
    assert not all(torch.equal(x, z) for x, z in zip(a, c, strict=True))


def test_fold_count_errors():
    with pytest.raises(ConfigError, match="at least 2"):
        stratified_folds(_labels(), 1, seed=0)
    with pytest.raises(DataError, match="cannot make"):
        stratified_folds(torch.tensor([0, 1]), 3, seed=0)


def test_cv_cli_reports_folds_never_loads_test_and_repeats_exactly(synthetic_data, monkeypatch, capsys):
    asked = []

    def spy(loader):
        def load(spec, split="train", **kw):
            asked.append(split)
            return loader(spec, split, **kw)
        return load

    monkeypatch.setattr(splits, "load_dataset", spy(splits.load_dataset))  # every command loads its data there
    assert main(["cv", *TINY, "--folds", "3", "--out", "a", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "mean validation accuracy" in table and "±" in table
    assert main(["cv", *TINY, "--folds", "3", "--out", "b", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert asked and set(asked) == {"train"}  # the test split is never loaded

    a, b = (json.loads(Path(d, "cv.json").read_text()) for d in ("a", "b"))
    assert a["fold_indices_sha"] == b["fold_indices_sha"]
    assert [f["val_accuracy"] for f in a["per_fold"]] == [f["val_accuracy"] for f in b["per_fold"]]
    assert printed["mean_val_accuracy"] == a["mean_val_accuracy"]
    assert [f["val_images"] for f in a["per_fold"]] == [80, 80, 80] and a["pool_images"] == 240
    accs = [f["val_accuracy"] for f in a["per_fold"]]
    assert a["mean_val_accuracy"] == pytest.approx(sum(accs) / 3)
    assert a["std_val_accuracy"] == pytest.approx(torch.tensor(accs).std().item(), abs=1e-6)  # sample std
    for i in (1, 2, 3):
        assert (Path("a") / f"fold-{i}" / "model.safetensors").is_file()
    assert (Path("a") / "cv.txt").read_text().count("\n") == 5


def test_cv_refuses_classes_smaller_than_the_fold_count(synthetic_data):
    cfg = load_config(None, ["data.train_limit=12", *TINY[:2]])
    with pytest.raises(DataError, match="fewer examples than folds"):
        run_cv(cfg, 5, out="c", quiet=True)
