"""Cut an image of a handwritten string (a postal code, an amount) into candidate characters.

The reader (``mnistlab.read``) scores candidates with the per-character classifier and picks the
best cuts; this module only does the image work, in numpy:

1. ``StringImage.from_image``: grayscale (any mode), ink made bright whatever the polarity, an
   uneven background (shadow, grey or tinted paper) subtracted, ruling lines removed, small
   specks dropped, the slant measured and sheared upright, and the whole rescaled so a digit is
   ``WORK_HEIGHT`` pixels tall.
2. ``StringImage.blobs``: the ink grouped into blobs: connected components, with the pieces of a
   broken stroke (parts stacked over each other) joined. A blob holds one character or several
   touching or overlapping ones.
3. ``StringImage.cuts``: for a blob, candidate cut paths (seams) from top to bottom that cross as
   little ink as possible, so characters that overlap in x can still be separated; ``piece``
   gives the ink between two cuts as an image for ``preprocess_image`` and its box in the
   original image's pixels.
4. ``StringImage.line``: the whole cleaned string as one line image of a fixed height, for the
   sequence reader (``mnistlab.read_ctc``); ``box_of_columns`` maps columns back to a box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from mnistlab.data.images import ImageError, gray_of

try:  # optional: the `read` extra
    from scipy import ndimage as _ndimage
except ImportError:  # pragma: no cover - the numpy labelling below does the same
    _ndimage = None

WORK_HEIGHT = 32  # pixels a character is scaled to before cutting (the classifier then sees 20 of 28)
_MAX_SIDE = 1400  # larger inputs are box-averaged down to about this first
_MIN_CONTRAST = 0.06 * 255  # ink weaker than this against the paper means there is no ink
_LINE_FRACTION = 0.4  # a horizontal run of ink this share of the width long is a ruling line
_MAX_SLANT = 0.7  # the most slant (dx per dy) corrected
_CUT_STEP = 0.1  # candidate cuts every this share of the character height
_SEAM_REACH = 0.3  # a cut path may drift this share of the height left or right of its start


@dataclass
class Blob:
    """Ink that is connected (or stacked, for a broken stroke): one or more characters."""

    x0: int
    x1: int  # exclusive
    y0: int
    y1: int
    mask: np.ndarray  # bool [H, W] of the work image: this blob's pixels


def _block_reduce(a: np.ndarray, factor: int, how: str) -> np.ndarray:
    h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
    blocks = a[:h, :w].reshape(h // factor, factor, w // factor, factor)
    return blocks.mean(axis=(1, 3)) if how == "mean" else np.percentile(blocks, 10, axis=(1, 3))


def _resize(a: np.ndarray, width: int, height: int, resample=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(a.astype(np.float32)).resize((width, height), resample), dtype=np.float32)


def _bright_ink(gray: np.ndarray) -> np.ndarray:
    """Ink strength >= 0 with the (possibly uneven) background subtracted, whatever the polarity."""
    lo, hi = np.percentile(gray, [1, 99])
    if np.median(gray) > (lo + hi) / 2:  # most of the image is light: dark ink on paper
        gray = 255.0 - gray
    # The background is the darkest tenth of each block, blocks larger than a stroke is wide,
    # smoothed back up to full size: it follows shadows and grey paper but not the ink.
    block = max(4, min(gray.shape) // 4)
    if min(gray.shape) >= 2 * block:
        coarse = _block_reduce(gray, block, "p10")
        background = _resize(coarse, gray.shape[1], gray.shape[0])
    else:
        background = np.full_like(gray, np.percentile(gray, 10))
    return np.maximum(gray - background, 0.0)


def _otsu(values: np.ndarray) -> float:
    """The threshold between two groups of ``values`` that best separates them (Otsu's method)."""
    hist, edges = np.histogram(values, bins=128)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centres[int(np.argmax(between))])


def _runs_from(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: (row, start, end exclusive) arrays."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    d = np.diff(padded, axis=1)
    rows, starts = np.nonzero(d == 1)
    _, ends = np.nonzero(d == -1)  # same row order as starts (row-major scan)
    return rows, starts, ends


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a bool mask: (labels int32 [H, W] with 0 = background, count),
    numbered in raster order of their first pixel. SciPy's labelling when it is installed (the
    same labels, several times faster), else :func:`label_runs`."""
    if _ndimage is None:
        return label_runs(mask)
    labels, n = _ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return labels.astype(np.int32, copy=False), int(n)


def label_runs(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """:func:`label_components` in numpy and Python: union-find over horizontal runs."""
    rows, starts, ends = _runs_from(mask)
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_row: dict[int, list[int]] = {}
    for i, r in enumerate(rows.tolist()):
        by_row.setdefault(r, []).append(i)
    for r, here in by_row.items():
        above = by_row.get(r - 1)
        if not above:
            continue
        j = 0
        for i in here:  # both lists sorted by start; 8-connected: runs overlap when widened by one
            while j < len(above) and ends[above[j]] < starts[i]:
                j += 1
            k = j
            while k < len(above) and starts[above[k]] <= ends[i]:
                a, b = find(i), find(above[k])
                if a != b:
                    parent[a] = b
                k += 1
    labels = np.zeros(mask.shape, dtype=np.int32)
    roots: dict[int, int] = {}
    for i in range(len(rows)):
        root = find(i)
        lab = roots.setdefault(root, len(roots) + 1)
        labels[rows[i], starts[i]:ends[i]] = lab
    return labels, len(roots)


def _remove_lines(mask: np.ndarray) -> np.ndarray:
    """The mask without long horizontal ruling lines; strokes that cross a line are kept whole."""
    length = max(8, int(_LINE_FRACTION * mask.shape[1]))
    rows, starts, ends = _runs_from(mask)
    long_runs = (ends - starts) >= length
    if not long_runs.any():
        return mask
    line = np.zeros_like(mask)
    for r, s, e in zip(rows[long_runs], starts[long_runs], ends[long_runs], strict=True):
        line[r, s:e] = True
    out = mask & ~line
    reach = max(2, int(line.any(axis=1).sum()) + 1)  # the band's thickness, plus one
    above = np.zeros_like(mask)
    below = np.zeros_like(mask)
    for d in range(1, reach + 1):  # ink (not line) within reach above and below: a crossing stroke
        above[d:] |= out[:-d]
        below[:-d] |= out[d:]
    return out | (line & above & below)


def _slant(mask: np.ndarray) -> float:
    """The lean of the writing (dx per dy, x growing to the right as y grows downwards): the
    second-moment slant cov(x, y) / var(y) of each connected piece, their median weighted by ink."""
    labels, n = label_components(mask)
    slants, weights = [], []
    for lab in range(1, n + 1):
        ys, xs = np.nonzero(labels == lab)
        if len(ys) < 10 or xs.max() - xs.min() > ys.max() - ys.min():
            continue  # too small, or wider than tall (touching characters): no clear lean
        slants.append(float(((xs - xs.mean()) * (ys - ys.mean())).mean() / ys.var()))
        weights.append(len(ys))
    if not slants:
        return 0.0
    order = np.argsort(slants)
    cum = np.cumsum(np.array(weights)[order])
    median = slants[order[int(np.searchsorted(cum, cum[-1] / 2))]]
    return float(np.clip(median, -_MAX_SLANT, _MAX_SLANT))


def _shear(a: np.ndarray, s: float, yc: float, pad: int) -> np.ndarray:
    """Shift each row by -s * (y - yc) pixels (nearest pixel), inside a frame ``pad`` wider each side."""
    out = np.zeros((a.shape[0], a.shape[1] + 2 * pad), dtype=a.dtype)
    for y in range(a.shape[0]):
        dx = pad + int(round(-s * (y - yc)))
        out[y, dx:dx + a.shape[1]] = a[y]
    return out


class StringImage:
    """The work copy of a string image: bright ink on black, upright, characters WORK_HEIGHT tall.

    ``to_original(ys, xs)`` maps work pixel coordinates back to the input image's.
    """

    def __init__(self, ink: np.ndarray, mask: np.ndarray, scale: float, slant: float, yc: float, pad: int,
                 char_height: float) -> None:
        self.ink, self.mask = ink, mask
        self.scale, self.slant, self.yc, self.pad = scale, slant, yc, pad
        self.char_height = char_height
        self.stroke = 1.0  # ink a cut crossing one stroke square-on meets (stroke width x ink level)

    @classmethod
    def from_image(cls, img: Image.Image, *, label: str = "<image>") -> StringImage:
        """Clean, measure and rescale ``img``; raises ImageError when it holds no ink."""
        gray = gray_of(img)
        if gray.size == 0 or min(gray.shape) < 2:
            raise ImageError(label, f"too small ({gray.shape[1]}x{gray.shape[0]} pixels)", "give a larger image")
        factor = 1.0
        if max(gray.shape) > _MAX_SIDE:
            k = int(np.ceil(max(gray.shape) / _MAX_SIDE))
            gray, factor = _block_reduce(gray, k, "mean"), float(k)
        ink = _bright_ink(gray)
        if float(ink.max()) < _MIN_CONTRAST:
            raise ImageError(label, "no ink found (the image is blank or has too little contrast)",
                             "give an image with dark writing on light paper or light on dark")
        strong = ink > max(_otsu(ink[ink > 0.02 * ink.max()]), 0.25 * float(ink.max()))
        mask = _hysteresis(ink > 0.5 * max(_otsu(ink[ink > 0.02 * ink.max()]), 0.25 * float(ink.max())), strong)
        mask = _remove_lines(mask)
        labels, n = label_components(mask)
        if n == 0:
            raise ImageError(label, "no ink found", "give an image with visible writing")
        heights, areas = _component_sizes(labels, n)
        big = areas >= 0.2 * areas.max()
        char_height = float(np.median(heights[big]))
        keep = (areas >= max(3.0, 0.02 * char_height ** 2)) | (heights >= 0.35 * char_height)
        mask = keep[labels - 1] & (labels > 0) if n else mask
        if not mask.any():
            raise ImageError(label, "no ink found (only specks)", "give an image with visible writing")
        zoom = WORK_HEIGHT / char_height
        h, w = max(2, round(mask.shape[0] * zoom)), max(2, round(mask.shape[1] * zoom))
        region = _resize(np.where(_grow(mask), ink, 0.0), w, h, Image.BILINEAR if zoom >= 1 else Image.BOX)
        work_mask = _resize(mask.astype(np.float32), w, h, Image.BILINEAR if zoom >= 1 else Image.BOX) > 0.35
        slant = _slant(work_mask)
        ys = np.nonzero(work_mask.any(axis=1))[0]
        yc = (ys.min() + ys.max()) / 2 if len(ys) else h / 2
        pad = int(np.ceil(abs(slant) * h)) + 2
        out = cls(_shear(region, slant, yc, pad), _shear(work_mask, slant, yc, pad), factor / zoom, slant, yc, pad,
                  WORK_HEIGHT)
        out.stroke = _stroke_width(out.mask) * float(np.percentile(out.ink[out.mask], 75)) / 255.0
        return out

    def to_original(self, ys: np.ndarray, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Work coordinates (row, column) -> the input image's (row, column), as floats."""
        x = xs - self.pad + self.slant * (ys - self.yc)
        return ys * self.scale, x * self.scale

    def line(self, height: int) -> Line:
        """The whole string as one line image for a sequence model: the ink (0..1, bright on black)
        cropped to its extent with a margin and scaled to ``height`` rows, the width following."""
        ys, xs = np.nonzero(self.mask)
        m = max(1, round(0.08 * self.char_height))
        y0, y1 = max(0, int(ys.min()) - m), min(self.mask.shape[0], int(ys.max()) + 1 + m)
        x0, x1 = max(0, int(xs.min()) - m), min(self.mask.shape[1], int(xs.max()) + 1 + m)
        level = float(np.percentile(self.ink[self.mask], 90)) or 1.0
        crop = np.clip(self.ink[y0:y1, x0:x1] / level, 0.0, 1.0)
        zoom = height / (y1 - y0)
        width = max(4, round((x1 - x0) * zoom))
        pixels = _resize(crop, width, height, Image.BILINEAR if zoom >= 1 else Image.BOX)
        return Line(np.clip(pixels, 0.0, 1.0).astype(np.float32), x0, y0, 1.0 / zoom)

    def box_of_columns(self, x0: float, x1: float) -> tuple[int, int, int, int] | None:
        """The box (input pixels, exclusive ends) of the ink between work columns x0 and x1; None if none."""
        lo, hi = max(0, int(np.floor(x0))), min(self.mask.shape[1], int(np.ceil(x1)))
        ys, xs = np.nonzero(self.mask[:, lo:hi])
        if not len(ys):
            return None
        oy, ox = self.to_original(ys.astype(np.float64), (xs + lo).astype(np.float64))
        return (int(np.floor(ox.min())), int(np.floor(oy.min())), int(np.ceil(ox.max() + self.scale)),
                int(np.ceil(oy.max() + self.scale)))

    def blobs(self) -> list[Blob]:
        """The ink as blobs, left to right: components, with stacked pieces (broken strokes) joined."""
        labels, n = label_components(self.mask)
        comps = []
        for lab in range(1, n + 1):
            ys, xs = np.nonzero(labels == lab)
            comps.append([int(xs.min()), int(xs.max()) + 1, int(ys.min()), int(ys.max()) + 1, [lab]])
        comps.sort(key=lambda c: (c[0] + c[1]) / 2)
        merged: list[list] = []
        for c in comps:
            for m in merged:
                overlap = min(m[1], c[1]) - max(m[0], c[0])
                small = min(m[1] - m[0], c[1] - c[0])
                width = max(m[1], c[1]) - min(m[0], c[0])
                if overlap >= 0.6 * small and width <= 1.1 * self.char_height:
                    m[0], m[1], m[2], m[3] = min(m[0], c[0]), max(m[1], c[1]), min(m[2], c[2]), max(m[3], c[3])
                    m[4] += c[4]
                    break
            else:
                merged.append(c)
        merged.sort(key=lambda c: c[0])
        return [Blob(c[0], c[1], c[2], c[3], np.isin(labels, c[4])) for c in merged]

    def cuts(self, blob: Blob) -> list[np.ndarray]:
        """Cut paths across ``blob``: int arrays [y1 - y0] of the column where each row is cut
        (pixels left of it go left). The first and last are the blob's edges."""
        rows = blob.y1 - blob.y0
        left = np.full(rows, blob.x0, dtype=np.int64)
        right = np.full(rows, blob.x1, dtype=np.int64)
        width = blob.x1 - blob.x0
        step = max(1, round(_CUT_STEP * self.char_height))
        margin = round(0.15 * self.char_height)
        if width < 0.55 * self.char_height:
            return [left, right]
        cost = np.where(blob.mask, self.ink, 0.0)[blob.y0:blob.y1] / 255.0
        seams = [left]
        for x in range(blob.x0 + margin, blob.x1 - margin + 1, step):
            seams.append(_seam(cost, x, round(_SEAM_REACH * self.char_height), blob.x0 + 1, blob.x1 - 1))
        seams.append(right)
        return _dedupe(seams)

    def piece(self, blob: Blob, left: np.ndarray, right: np.ndarray) -> Piece | None:
        """The ink of ``blob`` between two cuts; None when there is (almost) none."""
        cols = np.arange(self.mask.shape[1])
        band = np.zeros_like(blob.mask)
        band[blob.y0:blob.y1] = (cols[None, :] >= left[:, None]) & (cols[None, :] < right[:, None])
        sel = blob.mask & band
        ys, xs = np.nonzero(sel)
        if len(ys) < 3:
            return None
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        keep = _grow(_grow(sel)) & band  # the soft edges of the strokes too, as MNIST's digits have them
        crop = np.where(keep, self.ink, 0.0)[y0:y1, x0:x1]
        m = 4
        out = np.zeros((crop.shape[0] + 2 * m, crop.shape[1] + 2 * m), dtype=np.float32)
        out[m:-m, m:-m] = crop
        oy, ox = self.to_original(ys.astype(np.float64), xs.astype(np.float64))
        box = (int(np.floor(ox.min())), int(np.floor(oy.min())), int(np.ceil(ox.max() + self.scale)),
               int(np.ceil(oy.max() + self.scale)))
        return Piece(out, box, (y1 - y0) / self.char_height, (x1 - x0) / self.char_height)


@dataclass
class Line:
    """A string as one line image: ``pixels`` float32 [height, width] in 0..1 (bright ink on black);
    line column u is work column ``x0 + u * step`` of the ``StringImage`` it came from."""

    pixels: np.ndarray
    x0: int
    y0: int
    step: float


@dataclass
class Piece:
    """A candidate character: its ink (float, bright on black, with a margin) for ``preprocess_image``,
    its box (x0, y0, x1, y1, exclusive ends) in the input image, and its upright ink height and width
    in character heights."""

    image: np.ndarray
    box: tuple[int, int, int, int]
    height: float
    width: float


def _stroke_width(mask: np.ndarray) -> float:
    """The typical stroke width of a mask, pixels: twice its area over its boundary length."""
    inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    area = float(mask.sum())
    return max(1.0, 2.0 * area / max(1.0, area - float(inner.sum())))


def _component_sizes(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(heights, areas) of components 1..n."""
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    rows = np.nonzero(labels)[0]
    labs = labels[labels > 0]
    top = np.full(n + 1, np.iinfo(np.int64).max)
    bottom = np.full(n + 1, -1)
    np.minimum.at(top, labs, rows)
    np.maximum.at(bottom, labs, rows)
    return (bottom - top + 1)[1:].astype(np.float64), areas


def _hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The parts of ``weak`` connected to some pixel of ``strong``: faint stroke ends kept, faint noise not."""
    labels, n = label_components(weak)
    hit = np.zeros(n + 1, dtype=bool)
    hit[np.unique(labels[strong & weak])] = True
    hit[0] = False
    return hit[labels]


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask grown by one pixel (3x3), to keep the soft edges of strokes."""
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    grown[:, 1:] |= out[:, :-1]
    grown[:, :-1] |= out[:, 1:]
    return grown


def _seam(cost: np.ndarray, x: int, reach: int, lo: int, hi: int) -> np.ndarray:
    """The top-to-bottom path near column ``x`` (within ``reach``, columns lo..hi) crossing the least
    ink, moving at most one column per row; a small pull keeps it near ``x``."""
    c0, c1 = max(lo, x - reach), min(hi, x + reach)
    window = cost[:, c0:c1 + 1] + 0.01 * np.abs(np.arange(c0, c1 + 1) - x)[None, :]
    rows, width = window.shape
    total = window[0].copy()
    back = np.zeros((rows, width), dtype=np.int8)
    for r in range(1, rows):
        options = np.stack([np.r_[np.inf, total[:-1]], total, np.r_[total[1:], np.inf]])  # from left, same, right
        choice = np.argmin(options, axis=0)
        back[r] = choice - 1
        total = options[choice, np.arange(width)] + window[r]
    path = np.zeros(rows, dtype=np.int64)
    j = int(np.argmin(total))
    for r in range(rows - 1, -1, -1):
        path[r] = j
        j += int(back[r, j])  # back: -1 came from the left, 0 straight down, +1 from the right
    return path + c0


def _dedupe(seams: list[np.ndarray]) -> list[np.ndarray]:
    """Cuts in left-to-right order with near-identical ones dropped (the edges always kept)."""
    out = [seams[0]]
    for s in sorted(seams[1:-1], key=lambda s: float(s.mean())):
        s = np.maximum(s, out[-1])  # cuts never cross
        if np.abs(s - out[-1]).mean() >= 1.0:
            out.append(s)
    out.append(seams[-1])
    return out


def ink_image(a: np.ndarray) -> Image.Image:
    """A float ink array (bright on black) as an 8-bit grayscale image for ``preprocess_image``."""
    peak = float(a.max()) or 1.0
    return Image.fromarray(np.clip(a * (255.0 / peak), 0, 255).astype(np.uint8), mode="L")
