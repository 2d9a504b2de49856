"""Decoding CTC frame scores into characters (numpy): best path, constrained to a character set,
and best path with exactly N characters.

Input everywhere: ``logp`` float [T, K + 1], log-probabilities per frame, column 0 the blank and
column k + 1 the k-th character; ``allowed`` the character indices (0-based) that may appear.
Output: a list of ``(char index, first frame, last frame)``, left to right, and the per-frame
path, for the confidence and the box of each character.
"""

from __future__ import annotations

import numpy as np

Span = tuple[int, int, int]  # (character index, first frame, last frame), frames inclusive


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


def confidences(logp: np.ndarray, spans: list[Span]) -> list[float]:
    """Per character: the highest probability its class has over its frames."""
    return [float(np.exp(logp[a:b + 1, c + 1].max())) for c, a, b in spans]
