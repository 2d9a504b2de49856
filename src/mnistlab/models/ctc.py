"""Decoding CTC frame scores into characters (numpy): best path, the likeliest labelling (prefix
beam search), each constrained to a character set, and best path with exactly N characters.

Input everywhere: ``logp`` float [T, K + 1], log-probabilities per frame, column 0 the blank and
column k + 1 the k-th character; ``allowed`` the character indices (0-based) that may appear.
Output: a list of ``(char index, first frame, last frame)``, left to right, and the per-frame
path, for the confidence and the box of each character.
"""

from __future__ import annotations

import numpy as np

Span = tuple[int, int, int]  # (character index, first frame, last frame), frames inclusive
BEAM_WIDTH = 8  # prefixes kept a frame; 4 and 16 read the same validation strings (benchmarks/README.md)
_NEGLIGIBLE = -12.0  # log-probability below which a character is not tried at a frame (6e-6)


def restrict(logp: np.ndarray, allowed: list[int]) -> np.ndarray:
    """Log-probabilities over the blank and the allowed characters only, renormalised per frame
    (other characters get -inf)."""
    keep = np.full(logp.shape[1], False)
    keep[0] = True
    keep[np.asarray(allowed, dtype=np.int64) + 1] = True
    out = np.where(keep[None, :], logp, -np.inf)
    top = out.max(axis=1, keepdims=True)
    return out - (top + np.log(np.exp(out - top).sum(axis=1, keepdims=True)))


def spans_of(path: np.ndarray) -> list[Span]:
    """Characters of a per-frame path of classes (0 = blank, k + 1 = character k): runs of one class,
    a repeat separated by a blank counting twice."""
    spans: list[Span] = []
    prev = 0
    for t, s in enumerate(path.tolist()):
        if s != 0 and s == prev:
            c, a, _ = spans[-1]
            spans[-1] = (c, a, t)
        elif s != 0:
            spans.append((s - 1, t, t))
        prev = s
    return spans


def greedy(logp: np.ndarray, allowed: list[int]) -> tuple[list[Span], np.ndarray]:
    """Best path: the likeliest class per frame (among blank and ``allowed``), repeats merged, blanks dropped."""
    path = np.argmax(restrict(logp, allowed), axis=1)
    return spans_of(path), path


def beam(logp: np.ndarray, allowed: list[int], width: int = 16) -> tuple[list[Span], np.ndarray]:
    """The likeliest labelling by prefix beam search (``prefixes``): each string scored by the sum
    over all its alignments rather than by its best path alone, so a character whose probability is
    split over frames, or between a repeat and a blank, still counts. Its spans are those of its best
    alignment (``align``)."""
    lp = restrict(logp, allowed)
    path = align(lp, prefixes(lp, allowed, width)[0][0])
    return spans_of(path), path


def prefixes(logp: np.ndarray, allowed: list[int], width: int = 16) -> list[tuple[tuple[int, ...], float]]:
    """Prefix beam search over the frames, ``width`` prefixes kept a frame: the strings left at the
    end with their log-probabilities (summed over alignments), likeliest first."""
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -np.inf)}  # (ends in a blank, in its last char)
    for t in range(logp.shape[0]):
        row = logp[t]
        chars = [c for c in allowed if row[c + 1] > _NEGLIGIBLE]
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pn) in beams.items():
            total = np.logaddexp(pb, pn)
            _add(nxt, prefix, total + row[0], -np.inf)  # a blank: the prefix stays
            last = prefix[-1] if prefix else -1
            for c in chars:
                if c == last:
                    _add(nxt, prefix, -np.inf, pn + row[c + 1])  # the same character held
                    _add(nxt, (*prefix, c), -np.inf, pb + row[c + 1])  # a repeat, after a blank
                else:
                    _add(nxt, (*prefix, c), -np.inf, total + row[c + 1])
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:width]
        beams = {k: (v[0], v[1]) for k, v in ranked}
    return [(k, float(np.logaddexp(*v))) for k, v in beams.items()]


def _add(beams: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], pb: float, pn: float) -> None:
    cur = beams.setdefault(prefix, [-np.inf, -np.inf])
    cur[0], cur[1] = np.logaddexp(cur[0], pb), np.logaddexp(cur[1], pn)


def align(logp: np.ndarray, labels: tuple[int, ...] | list[int]) -> np.ndarray:
    """The best per-frame path (0 = blank, k + 1 = character k) that reads exactly ``labels``
    (Viterbi over the labels with blanks between them); all blanks when the frames cannot hold them."""
    T = logp.shape[0]
    ext = np.zeros(2 * len(labels) + 1, dtype=np.int64)  # blank, l1, blank, l2, ..., blank
    ext[1::2] = np.asarray(labels, dtype=np.int64) + 1
    S = len(ext)
    skip = np.zeros(S, dtype=bool)  # may jump from s - 2: a character not equal to the one before it
    skip[3::2] = ext[3::2] != ext[1:-2:2]
    score = np.full(S, -np.inf)
    score[0] = logp[0, ext[0]]
    if S > 1:
        score[1] = logp[0, ext[1]]
    back = np.zeros((T, S), dtype=np.int64)
    idx = np.arange(S)
    for t in range(1, T):
        cand = np.full((3, S), -np.inf)  # stay, step from s - 1, jump from s - 2
        cand[0], cand[1, 1:], cand[2, 2:] = score, score[:-1], score[:-2]
        cand[2, ~skip] = -np.inf
        pick = np.argmax(cand, axis=0)
        score = cand[pick, idx] + logp[t, ext]
        back[t] = idx - pick
    ends = [S - 1, S - 2] if S > 1 else [0]
    s = max(ends, key=lambda e: score[e])
    if score[s] == -np.inf:
        return np.zeros(T, dtype=np.int64)
    states = np.zeros(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        states[t] = s
        s = back[t, s]
    return ext[states]


def exact_length(logp: np.ndarray, allowed: list[int], n: int) -> tuple[list[Span], np.ndarray] | None:
    """The best path that reads exactly ``n`` characters (Viterbi over states (characters so far,
    blank or the current character)); None when the frames cannot hold ``n`` characters."""
    lp = restrict(logp, allowed)[:, [0, *[a + 1 for a in allowed]]]  # [T, A + 1]: blank, then allowed
    T, S = lp.shape
    if n < 0 or n > T:
        return None
    neg = -np.inf
    score = np.full((n + 1, S), neg)  # score[k, 0]: k characters read, now in a blank; [k, s]: in character s
    score[0, 0] = lp[0, 0]
    if n >= 1:
        score[1, 1:] = lp[0, 1:]
    back = np.zeros((T, n + 1, S, 2), dtype=np.int32)  # (previous k, previous state)
    ks = np.arange(n + 1)
    for t in range(1, T):
        new = np.full_like(score, neg)
        bk = np.zeros((n + 1, S, 2), dtype=np.int32)
        # into a blank at k: stay in the blank, or leave the character just read
        best_s = np.argmax(score, axis=1)
        new[:, 0] = score[ks, best_s] + lp[t, 0]
        bk[:, 0, 0], bk[:, 0, 1] = ks, best_s
        if n >= 1:
            prev = score[:-1]  # [n, S]: states with k - 1 characters
            order = np.argsort(-prev[:, 1:], axis=1)  # best and second-best character state
            first, second = order[:, 0] + 1, order[:, min(1, S - 2)] + 1
            rows = np.arange(n)
            for s in range(1, S):
                other = np.where(first == s, second, first)  # best previous character that is not s
                from_other = prev[rows, other] if S > 2 else np.full(n, neg)
                from_blank = prev[:, 0]
                stay = score[1:, s]
                cand = np.stack([stay, from_blank, from_other])  # [3, n]
                pick = np.argmax(cand, axis=0)
                new[1:, s] = cand[pick, rows] + lp[t, s]
                bk[1:, s, 0] = np.where(pick == 0, rows + 1, rows)
                bk[1:, s, 1] = np.choose(pick, [np.full(n, s), np.zeros(n, dtype=np.int64), other])
        score, back[t] = new, bk
    end = int(np.argmax(score[n]))
    if score[n, end] == neg:
        return None
    states = np.zeros(T, dtype=np.int64)
    k, s = n, end
    for t in range(T - 1, -1, -1):
        states[t] = s
        if t:
            k, s = back[t, k, s]
    path = np.where(states > 0, np.asarray([0, *[a + 1 for a in allowed]])[states], 0)
    return spans_of(path), path  # the states never enter a repeat without a blank, so spans are the n characters


def decode(logp: np.ndarray, allowed: list[int], expect_length: int | None = None) -> list[Span]:
    """What a reader answers: with ``expect_length`` the best path holding exactly that many
    characters, else (or when the frames cannot hold them) the likeliest labelling (``beam``)."""
    decoded = exact_length(logp, allowed, expect_length) if expect_length is not None else None
    return (decoded if decoded is not None else beam(logp, allowed, BEAM_WIDTH))[0]


def confidences(logp: np.ndarray, spans: list[Span]) -> list[float]:
    """Per character: the highest probability its class has over its frames."""
    return [float(np.exp(logp[a:b + 1, c + 1].max())) for c, a, b in spans]
