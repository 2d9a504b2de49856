"""Read a handwritten string (a postal code, an amount, a form field) left to right.

Recognition-driven segmentation over the per-character classifier:

1. ``data.segment.StringImage`` cleans the image (any size, mode, polarity, uneven paper, ruling
   lines, specks, slant) and groups the ink into blobs of one or more characters;
2. each blob gets candidate cut paths; every run of ink between two cuts, no wider than
   ``_MAX_PIECE`` character heights, is a candidate character, prepared by the model's own
   preprocessing (``Predictor.prepare``, the one path) and classified in one batch;
3. a dynamic programme picks, per blob, the cuts whose pieces the classifier reads best: the sum
   of the log-probabilities of the pieces, minus the ink each cut crosses and a penalty for
   pieces too wide to be one character, plus a bonus per character. With ``expect_length`` the
   blobs' character counts are chosen together so the string has exactly that many.

The confidence of a character is the probability of its class among the allowed ones; the
string's is the product over its characters.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mnistlab.data.images import ImageSource, load_image
from mnistlab.data.segment import Blob, StringImage, ink_image
from mnistlab.errors import ConfigError
from mnistlab.predict import Predictor

_MAX_PIECE = 1.5  # widest candidate character, in character heights
_MIN_PIECE = 0.08  # narrowest
_MAX_CHARS = 40  # the most characters read from one image


@dataclass(frozen=True)
class CutWeights:
    """How the reader weighs a way of cutting a blob into characters (added to the sum of the
    pieces' log-probabilities). Tuned on strings of MNIST *training* digits (benchmarks/read.py
    --tune), never on the test digits the benchmark reports."""

    wide: float = 4.0  # per character height of ink width above wide_from
    wide_from: float = 1.05
    short: float = 8.0  # per character height of ink height below short_below (a cut-off sliver)
    short_below: float = 0.7
    cut: float = 1.0  # per stroke a cut crosses beyond free_strokes
    free_strokes: float = 0.0  # strokes a cut may cross for free (touching characters meet in about one)
    bonus: float = 0.0  # per character read


@dataclass
class CharReading:
    """One character: what it is, how sure, and where (x0, y0, x1, y1 in input pixels, exclusive)."""

    char: str
    confidence: float
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"char": self.char, "confidence": round(self.confidence, 6), "box": list(self.box)}


@dataclass
class Reading:
    """The string read from one image."""

    path: str
    text: str
    confidence: float
    chars: list[CharReading] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "text": self.text, "confidence": round(self.confidence, 6),
                "chars": [c.to_dict() for c in self.chars]}


def resolve_charset(charset: str | None, classes: list[str]) -> list[int]:
    """The class indices allowed: ``charset`` is "digits", "letters", "all" or the characters
    themselves; None means the model's digits, or all its classes when it has none."""
    if charset is None:
        wanted = [c for c in classes if c in string.digits] or list(classes)
    elif charset in ("digits", "letters", "all"):
        pick = {"digits": lambda c: c in string.digits, "letters": lambda c: c.isalpha(), "all": lambda c: True}
        wanted = [c for c in classes if pick[charset](c)]
    else:
        missing = sorted({ch for ch in charset if ch not in classes})
        if missing:
            raise ConfigError(f"--charset has characters the model cannot read: {''.join(missing)}",
                              hint=f"the model's classes are {' '.join(classes[:40])}")
        wanted = [c for c in classes if c in charset]
    if not wanted:
        raise ConfigError(f"the model has no {charset} classes", hint=f"its classes are {' '.join(classes[:40])}")
    return [classes.index(c) for c in wanted]


def open_string_image(source: ImageSource | Image.Image, name: str | None, expect_length: int | None,
                      max_pixels: int | None) -> tuple[Image.Image, str]:
    """(the decoded image, its name for the reading) for any reader; a length out of range is an error."""
    img = source if isinstance(source, Image.Image) else load_image(source, name=name, max_pixels=max_pixels)
    label = name or (str(source) if not isinstance(source, (bytes, bytearray, memoryview, Image.Image)) else "<image>")
    if expect_length is not None and not 1 <= expect_length <= _MAX_CHARS:
        raise ConfigError(f"expected length {expect_length} is out of range", hint=f"use 1 to {_MAX_CHARS}")
    return img, label


@dataclass
class _Candidate:
    blob: int
    i: int  # left cut index
    j: int  # right cut index
    box: tuple[int, int, int, int]
    width: float  # between the cuts, in character heights
    height: float = 0.0  # of the ink, in character heights
    ink_width: float = 0.0
    probs: np.ndarray | None = None


class _Analysis(NamedTuple):
    blobs: list[Blob]
    cands: list[_Candidate]
    cut_costs: list[np.ndarray]
    cuts_of: list[list[np.ndarray]]


class StringReader:
    """Reads digit strings with a per-character ``Predictor``."""

    def __init__(self, predictor: Predictor, *, charset: str | None = None, weights: CutWeights | None = None) -> None:
        self.predictor = predictor
        self.weights = weights or CutWeights()
        self.allowed = resolve_charset(charset, predictor.classes)
        self.chars = [predictor.classes[i] for i in self.allowed]

    def with_charset(self, charset: str | None) -> StringReader:
        """The same classifier and weights reading only ``charset``."""
        return StringReader(self.predictor, charset=charset, weights=self.weights)

    def read(self, source: ImageSource | Image.Image, *, name: str | None = None, expect_length: int | None = None,
             max_pixels: int | None = None) -> Reading:
        """Read one image (a path, bytes, a file object or a decoded PIL image)."""
        img, label = open_string_image(source, name, expect_length, max_pixels)
        return self.decide(self.analyse(img, label), label, expect_length)

    def analyse(self, img: Image.Image, label: str = "<image>") -> _Analysis:
        """The image work and the classifier's reading of every candidate character (the slow part)."""
        work = StringImage.from_image(img, label=label)
        blobs = work.blobs()
        cands, cut_costs, cuts_of = self._candidates(work, blobs)
        self._classify(work, blobs, cands, cuts_of)
        return _Analysis(blobs, cands, cut_costs, cuts_of)

    def decide(self, analysis: _Analysis, label: str = "<image>", expect_length: int | None = None) -> Reading:
        """The best reading given the candidates: the cuts per blob, then the characters left to right."""
        blobs, cands, cut_costs, cuts_of = analysis
        per_blob = [self._blob_paths([c for c in cands if c.blob == b], cut_costs[b], len(cuts_of[b]))
                    for b in range(len(blobs))]
        chosen = _choose_counts(per_blob, expect_length)
        chars: list[CharReading] = []
        for b, k in enumerate(chosen):
            for cand in per_blob[b][k][1] if k else []:
                p = cand.probs
                best = int(np.argmax(p))
                chars.append(CharReading(self.chars[best], float(p[best]), cand.box))
        chars.sort(key=lambda c: (c.box[0] + c.box[2]) / 2)
        confidence = float(np.prod([c.confidence for c in chars])) if chars else 0.0
        return Reading(path=label, text="".join(c.char for c in chars), confidence=confidence, chars=chars)

    def _candidates(self, work: StringImage, blobs: list[Blob]):
        cands: list[_Candidate] = []
        cut_costs: list[np.ndarray] = []
        cuts_of: list[list[np.ndarray]] = []
        for b, blob in enumerate(blobs):
            cuts = work.cuts(blob)
            cuts_of.append(cuts)
            ink = np.where(blob.mask, work.ink, 0.0)[blob.y0:blob.y1] / 255.0
            rows = np.arange(blob.y1 - blob.y0)
            costs = np.array([float(ink[rows, np.clip(c, 0, ink.shape[1] - 1)].sum()) for c in cuts])
            costs = costs / work.stroke  # in strokes crossed
            costs[0] = costs[-1] = 0.0  # the blob's own edges cost nothing
            cut_costs.append(costs)
            for i in range(len(cuts) - 1):
                for j in range(i + 1, len(cuts)):
                    width = float(np.mean(cuts[j] - cuts[i])) / work.char_height
                    if width > _MAX_PIECE and not (i == 0 and j == len(cuts) - 1):
                        break
                    if width < _MIN_PIECE:
                        continue
                    cands.append(_Candidate(b, i, j, (0, 0, 0, 0), width))
        return cands, cut_costs, cuts_of

    def _classify(self, work: StringImage, blobs: list[Blob], cands: list[_Candidate],
                  cuts_of: list[list[np.ndarray]]) -> None:
        pixels, kept = [], []
        for cand in cands:
            got = work.piece(blobs[cand.blob], cuts_of[cand.blob][cand.i], cuts_of[cand.blob][cand.j])
            if got is None:
                continue
            cand.box, cand.height, cand.ink_width = got.box, got.height, got.width
            pixels.append(self.predictor.prepare(ink_image(got.image)))
            kept.append(cand)
        if pixels:
            _, probs = self.predictor.run(np.stack(pixels)[:, None])
            probs = probs[:, self.allowed]
            probs = probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)
            for cand, p in zip(kept, probs, strict=True):
                cand.probs = p

    def _blob_paths(self, cands: list[_Candidate], costs: np.ndarray, n_cuts: int):
        """For each character count k: (score, pieces) of the best way to read the blob as k characters."""
        kmax = min(_MAX_CHARS, n_cuts - 1)
        best = [[-math.inf] * (kmax + 1) for _ in range(n_cuts)]
        back: list[list[_Candidate | None]] = [[None] * (kmax + 1) for _ in range(n_cuts)]
        best[0][0] = 0.0
        ending: dict[int, list[_Candidate]] = {}
        for c in cands:
            if c.probs is not None:
                ending.setdefault(c.j, []).append(c)
        w = self.weights
        for j in range(1, n_cuts):
            for c in ending.get(j, []):
                score = (math.log(max(float(c.probs.max()), 1e-12)) + w.bonus
                         - w.wide * max(0.0, c.ink_width - w.wide_from)
                         - w.short * max(0.0, w.short_below - c.height) - w.cut * max(0.0, costs[j] - w.free_strokes))
                for k in range(1, kmax + 1):
                    if best[c.i][k - 1] > -math.inf and best[c.i][k - 1] + score > best[j][k]:
                        best[j][k] = best[c.i][k - 1] + score
                        back[j][k] = c
        out: list[tuple[float, list[_Candidate]]] = [(-math.inf, [])] * (kmax + 1)
        out[0] = (-math.inf, [])
        for k in range(1, kmax + 1):
            if best[n_cuts - 1][k] == -math.inf:
                continue
            pieces, j, kk = [], n_cuts - 1, k
            while kk:
                c = back[j][kk]
                pieces.append(c)
                j, kk = c.i, kk - 1
            out[k] = (best[n_cuts - 1][k], pieces[::-1])
        return out


def _choose_counts(per_blob: list[list[tuple[float, list]]], expect_length: int | None) -> list[int]:
    """How many characters each blob holds: the best for each alone, or with ``expect_length`` the
    best combination summing to it (a blob may then hold none: a stray mark)."""
    if expect_length is None:
        counts = []
        for options in per_blob:
            scores = [s for s, _ in options]
            k = int(np.argmax(scores)) if max(scores) > -math.inf else 0
            counts.append(k if max(scores) > -math.inf else 0)
        return counts
    # knapsack over blobs: best[n] = best total score reading n characters so far
    best: dict[int, tuple[float, list[int]]] = {0: (0.0, [])}
    for options in per_blob:
        nxt: dict[int, tuple[float, list[int]]] = {}
        for n, (score, ks) in best.items():
            for k, (s, _) in enumerate(options):
                s = -2.0 if k == 0 else s  # skipping a blob (a stray mark) costs a little
                if s == -math.inf or n + k > expect_length:
                    continue
                if n + k not in nxt or score + s > nxt[n + k][0]:
                    nxt[n + k] = (score + s, ks + [k])
        best = nxt
    if expect_length in best:
        return best[expect_length][1]
    return best[max(best)][1]  # fewer characters than asked for is all the image holds


def draw_reading(img: Image.Image, reading: Reading) -> Image.Image:
    """The image in colour with each character's box and reading drawn on it (green: confidence
    at least 0.9, red: less), and the whole reading along the bottom."""
    out = img.convert("RGB")
    draw = ImageDraw.Draw(out)
    width = max(1, round(max(out.size) / 300))
    size = max(10, round(min(out.size[1] / 9, 40)))
    font = ImageFont.load_default(size=size)
    for c in reading.chars:
        x0, y0, x1, y1 = c.box
        hue = (220, 40, 40) if c.confidence < 0.9 else (30, 140, 60)
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=hue, width=width)
        draw.text((x0 + 2, max(0, y0 - size - 2)), f"{c.char} {c.confidence:.2f}", fill=hue, font=font)
    draw.text((3, out.size[1] - size - 3), f"{reading.text}  ({reading.confidence:.3f})", fill=(30, 30, 200), font=font)
    return out
