"""Statistics over seeds: the mean, spread and range of a figure measured once per seed."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class SeedStats:
    """Mean, sample standard deviation (0 for one value), extremes and count of one figure."""

    mean: float
    std: float
    min: float
    max: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """The figures as a plain dict (for JSON results)."""
        return asdict(self)


@dataclass(frozen=True)
class SeedSummary:
    """What several seeds of one recipe achieved: test accuracy (None if never measured) and training time."""

    test_accuracy: SeedStats | None
    train_seconds: SeedStats


def seed_stats(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = list(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def describe(values: Iterable[float]) -> SeedStats | None:
    """Mean, standard deviation, min, max and count of ``values``; None when there are none."""
    values = list(values)
    if not values:
        return None
    mean, std = seed_stats(values)
    return SeedStats(mean=mean, std=std, min=min(values), max=max(values), n=len(values))


def summarize_runs(summaries: list[dict[str, Any]]) -> SeedSummary:
    """Test accuracy and training seconds over the ``summary.json`` contents of several seeds."""
    seconds = describe(s["train_seconds"] for s in summaries)
    if seconds is None:
        raise ValueError("summarize_runs needs at least one run summary")
    accuracy = describe(s["test_accuracy"] for s in summaries if s.get("test_accuracy") is not None)
    return SeedSummary(test_accuracy=accuracy, train_seconds=seconds)
