"""Calibration: expected calibration error, negative log-likelihood and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar T > 0 fitted to
minimise the NLL on held-out data (the run's validation split). Dividing by T never changes
the argmax, so accuracy is untouched; only the probabilities move.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

ECE_BINS = 15
T_RANGE = (0.05, 20.0)  # temperatures searched


@dataclass
class Reliability:
    """Per confidence bin: mean confidence, accuracy and count (bins with no images hold 0)."""

    edges: list[float]  # ECE_BINS + 1 bin edges in [0, 1]
    confidence: list[float]
    accuracy: list[float]
    count: list[int]


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / T)."""
    if not len(labels):
        return float("nan")
    return F.cross_entropy(logits.float() / temperature, labels.long()).item()


def reliability(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> Reliability:
    """Bin the top-class confidence of probabilities float [N, classes] into ``bins`` equal-width bins."""
    conf, pred = probs.float().max(1)
    hit = (pred == labels.long()).float()
    index = (conf * bins).ceil().long().clamp(1, bins) - 1  # bin i holds (i/bins, (i+1)/bins]
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.bincount(index, weights=conf, minlength=bins)
    hit_sum = torch.bincount(index, weights=hit, minlength=bins)
    safe = count.clamp(min=1).double()
    return Reliability(
        edges=[i / bins for i in range(bins + 1)],
        confidence=(conf_sum.double() / safe).tolist(),
        accuracy=(hit_sum.double() / safe).tolist(),
        count=count.tolist(),
    )


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of |accuracy - confidence| weighted by the bin's share."""
    n = len(labels)
    if not n:
        return float("nan")
    r = reliability(probs, labels, bins)
    return sum(c / n * abs(a - f) for c, a, f in zip(r.count, r.accuracy, r.confidence, strict=True))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, labels); 1.0 without data.

    A golden-section search on log T over :data:`T_RANGE` (the NLL is convex in 1/T), deterministic.
    """
    if not len(labels):
        return 1.0
    logits, labels = logits.double(), labels.long()

    def loss(log_t: float) -> float:
        return F.cross_entropy(logits / torch.tensor(log_t).exp(), labels).item()

    lo, hi = torch.log(torch.tensor(T_RANGE, dtype=torch.float64)).tolist()
    ratio = (5**0.5 - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(80):  # the bracket shrinks by 0.618 per step: 80 steps are far below float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    best = (lo + hi) / 2
    return float(torch.tensor(best).exp()) if loss(best) <= loss(0.0) else 1.0
