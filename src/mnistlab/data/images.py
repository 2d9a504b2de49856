"""The one preprocessing path for real images: photos, scans and canvas drawings -> MNIST style.

Folder datasets, ``predict``, the HTTP server and the web page all call these functions, so a
model sees the same kind of input wherever the image comes from. MNIST style means: grayscale,
background 0 and ink 255, the ink cropped, its longer side scaled to 20 of 28 pixels, and its
centre of mass at the centre of the frame (pixel index 14, 14, where MNIST's digits have theirs).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mnistlab.errors import DataError

if TYPE_CHECKING:
    import torch

MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 256 * 1024 * 1024  # larger files are refused before being read into memory
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

_WORK_SIDE = 1024  # larger inputs are box-averaged down to about this before the fine work
_BLANK_LEVEL = 0.05 * 255  # ink contrast below this (of 255) means there is no ink at all
_BBOX_LEVEL = 0.10  # fraction of the ink maximum that counts as ink when cropping
_EDGE_LEVEL = 0.02  # fainter ink just outside the crop that is still kept (anti-aliased edges)
_RINGING_LEVEL = 0.02  # after resizing, values below this fraction of the maximum are set to 0
_NOISE_PERCENTILE = 90  # of the border's residual ink: the noise floor subtracted everywhere

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO


class ImageError(DataError):
    """An image that cannot be used; ``reason`` is a short phrase such as "empty file (0 bytes)"."""

    def __init__(self, label: str, reason: str, fix: str) -> None:
        self.label = label
        self.reason = reason
        super().__init__(f"{label}: {reason}; {fix}")


def _read_source(source: ImageSource, name: str | None) -> tuple[bytes, str]:
    """The raw bytes of an image source and the name to use for it in messages."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        label = name or str(path)
        try:
            if path.stat().st_size > MAX_IMAGE_BYTES:
                raise ImageError(label, f"too large ({path.stat().st_size:,} bytes, the limit is "
                                 f"{MAX_IMAGE_BYTES:,})", "scale it down or compress it first")
            return path.read_bytes(), label
        except FileNotFoundError:
            raise ImageError(label, "no such file", "check the path") from None
        except IsADirectoryError:
            raise ImageError(label, "is a folder, not an image file", "pass an image file") from None
        except OSError as err:
            raise ImageError(label, f"cannot be read ({err.strerror or err})", "check its permissions") from err
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) > MAX_IMAGE_BYTES:
            raise ImageError(name or "<image bytes>", f"too large ({len(source):,} bytes, the limit is "
                             f"{MAX_IMAGE_BYTES:,})", "scale it down or compress it first")
        return bytes(source), name or "<image bytes>"
    label = name or str(getattr(source, "name", "<image stream>"))
    data = source.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(label, f"too large (over {MAX_IMAGE_BYTES:,} bytes)", "scale it down or compress it first")
    return data, label


def load_image(source: ImageSource, *, name: str | None = None, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image from a path, bytes or a binary file object.

    The pixel count is checked against ``max_pixels`` (default MAX_IMAGE_PIXELS; a server passes
    its own, smaller limit) before any pixel is decoded. EXIF
    orientation (phone photos) is applied. Raises ImageError (a DataError) naming the image
    when it is empty, not an image, corrupt or truncated, or too large.
    """
    data, label = _read_source(source, name)
    max_pixels = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise ImageError(label, "empty file (0 bytes)", "replace it with a real image file or remove it")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(
                    label, f"too large ({width}x{height} = {width * height:,} pixels, the limit is "
                    f"{max_pixels:,})", "scale it down first",
                )
            img.load()
            img = ImageOps.exif_transpose(img) or img
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageError(label, f"too large to decode safely ({err})", "scale it down first") from err
        except UnidentifiedImageError:
            raise ImageError(
                label, "not an image file", "use PNG, JPEG, BMP, GIF, TIFF or WebP"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as err:
            raise ImageError(
                label, f"corrupt or truncated image ({err})", "re-export it or remove it"
            ) from err
    return img


def _gray_and_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Grayscale on a 0..255 float scale [H, W], and alpha in 0..1 [H, W] when the image has one."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = np.asarray(img, dtype=np.float32)
        peak = float(gray.max()) if gray.size else 0.0
        if mode.startswith("I;16") or peak > 255:
            gray = gray * (255.0 / max(65535.0, peak))
        elif mode == "F" and peak <= 1.0:
            gray = gray * 255.0
        return gray, None
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.float32)[..., 3] / 255.0
        return np.asarray(rgba.convert("L"), dtype=np.float32), alpha
    try:
        return np.asarray(img.convert("L"), dtype=np.float32), None
    except ValueError:  # modes without a direct conversion to L (e.g. HSV)
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.float32), None


def _flatten_alpha(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite a translucent image onto a backdrop that contrasts with its ink.

    A canvas drawing may be dark ink on transparency or white ink on transparency; a fixed
    white backdrop would erase the latter. The visible (opaque) pixels are taken as the ink:
    bright ink goes onto black, dark ink onto white. Fully opaque images are returned unchanged.
    """
    if alpha.min() >= 0.99:
        return gray
    weight = float(alpha.sum())
    ink_level = float((gray * alpha).sum()) / weight if weight > 0 else 0.0
    backdrop = 0.0 if ink_level > 127.5 else 255.0
    return gray * alpha + backdrop * (1.0 - alpha)


def _block_mean(a: np.ndarray, factor: int) -> np.ndarray:
    """Downscale by an integer factor, averaging factor x factor blocks."""
    h, w = (a.shape[0] // factor) * factor, (a.shape[1] // factor) * factor
    # [h, w] -> [h/f, f, w/f, f] -> mean over each block
    return a[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _box_blur(a: np.ndarray, k: int) -> np.ndarray:
    """Mean over k x k neighbourhoods (k odd), same shape as ``a``."""
    padded = np.pad(a, k // 2, mode="edge")
    sums = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), dtype=np.float64)
    sums[1:, 1:] = padded.cumsum(0).cumsum(1)  # summed-area table
    return (sums[k:, k:] - sums[:-k, k:] - sums[k:, :-k] + sums[:-k, :-k]) / (k * k)


def _mean3(a: np.ndarray) -> np.ndarray:
    """``_box_blur(a, 3)`` as two separable 3-tap sums: a few adds a pixel, no summed-area table."""
    p = np.pad(a, 1, mode="edge")
    rows = p[:-2] + p[1:-1] + p[2:]
    return (rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]) * (1.0 / 9.0)


def _percentile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation) in float64, without numpy's per-call
    overhead: ~1 us instead of 10-20 us on the hundred-odd border pixels of every image."""
    s = np.sort(values, axis=None)
    pos = q / 100 * (s.size - 1)
    lo = int(pos)
    a, b = float(s[lo]), float(s[min(lo + 1, s.size - 1)])
    return a + (b - a) * (pos - lo)


def _border(a: np.ndarray) -> np.ndarray:
    """The pixels of ``a``'s frame, each once: top row, bottom row, left column, right column."""
    return np.concatenate([a[0], a[-1], a[1:-1, 0], a[1:-1, -1]])


def _near(values: np.ndarray, level: np.ndarray | float) -> np.ndarray:
    """The values close to ``level``: within three robust standard deviations (1.4826 x the median
    absolute deviation; at least one grey level). Ink covering less than half the border is far."""
    deviation = np.abs(values - level)
    return deviation <= max(3.0 * 1.4826 * _percentile(deviation, 50), 1.0)


def _border_paper(shape: tuple[int, int], border: np.ndarray, median: float) -> tuple[np.ndarray | None, np.ndarray]:
    """The paper's level over an image of ``shape`` and which of its ``border`` pixels are paper (not ink that touches the edge, as it
    does in a tightly cropped digit). The level is a plane a + b*x + c*y [H, W] fitted to the
    paper pixels of the border, or ``None`` when those are flat (MNIST-style inputs, drawings on
    a plain canvas), where the median does the job. An evenly lit page is flat; a photo or a scan
    under a lamp is not, and with a constant level its darker side counts as ink."""
    paper = _near(border, median)
    h, w = shape
    if min(h, w) < 3 or float(np.ptp(border[paper])) < 2 * _BLANK_LEVEL:
        return None, paper
    # border coordinates in the order of ``_border``
    xs = np.concatenate([np.arange(w), np.arange(w), np.zeros(h - 2), np.full(h - 2, w - 1)]) / w
    ys = np.concatenate([np.zeros(w), np.full(w, h - 1), np.arange(1, h - 1), np.arange(1, h - 1)]) / h
    design = np.stack([np.ones_like(xs), xs, ys], axis=1)
    for _ in range(2):  # fit on the paper pixels, then again on those the plane calls paper
        coef = np.linalg.lstsq(design[paper], border[paper], rcond=None)[0]
        paper = _near(border, design @ coef)
    across = (coef[0] + coef[1] * (np.arange(w) / w)).astype(np.float32)
    down = (coef[2] * (np.arange(h) / h)).astype(np.float32)
    return across[None, :] + down[:, None], paper


def _ink_map(gray: np.ndarray) -> np.ndarray:
    """Ink strength >= 0 [H, W]: background subtracted and polarity fixed; all zero when blank."""
    framed = min(gray.shape) >= 3
    border = _border(gray) if framed else gray.ravel()
    median = _percentile(border, 50)
    plane, paper = _border_paper(gray.shape, border, median)
    background = median if plane is None else plane
    lo, hi = float(gray.min()), float(gray.max())
    # A bright background means dark ink on paper: invert so ink is the positive direction.
    ink = background - gray if median > (lo + hi) / 2 else gray - background
    np.maximum(ink, 0.0, out=ink)  # (np.maximum, not np.clip: same result, a tenth of the call overhead)
    if framed:
        # the noise floor: what the paper pixels of the border show as ink (never the ink there;
        # ``paper`` holds at least half the border)
        ink = np.maximum(ink - _percentile(_border(ink)[paper], _NOISE_PERCENTILE), 0.0)
    if ink.size == 0 or float(ink.max()) < _BLANK_LEVEL:
        return np.zeros_like(ink)
    return ink


def _crop_mask(ink: np.ndarray) -> np.ndarray:
    """The pixels that decide the crop: ink above ``_BBOX_LEVEL`` of the maximum (255) whose 3x3
    neighbourhood is inky on average too, so that specks of scanner noise on the paper do not
    widen the box to the whole page, while every pixel of a stroke (even a one-pixel line, whose
    neighbourhood mean is a third of it) counts. Large photos are smoothed first, their noise
    being finer than their strokes."""
    k = 2 * (max(ink.shape) // 112) + 1
    smooth = _box_blur(ink, k) if k > 1 else ink
    level = _BBOX_LEVEL * 255.0
    return (smooth > level) & (_mean3(smooth) > level)


def _grow_box(ink: np.ndarray, is_ink: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (top, bottom, left, right; exclusive ends) of ``is_ink``, grown by one pixel on
    each side where that pixel line holds faint ink: the soft anti-aliased edge of a small drawing.
    """
    rows, cols = np.flatnonzero(is_ink.any(axis=1)), np.flatnonzero(is_ink.any(axis=0))
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    faint = ink > _EDGE_LEVEL * 255.0
    if top > 0 and faint[top - 1, left:right].any():
        top -= 1
    if bottom < ink.shape[0] and faint[bottom, left:right].any():
        bottom += 1
    if left > 0 and faint[top:bottom, left - 1].any():
        left -= 1
    if right < ink.shape[1] and faint[top:bottom, right].any():
        right += 1
    return top, bottom, left, right


def _shift_to_centre(frame: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Move the content so its centre of mass lands on the frame's centre, keeping box inside."""
    size = frame.shape[0]
    total = float(frame.sum())
    idx = np.arange(size, dtype=np.float64)
    cy = float(frame.sum(axis=1) @ idx) / total
    cx = float(frame.sum(axis=0) @ idx) / total
    y0, x0, y1, x1 = box  # ink occupies rows y0:y1, cols x0:x1
    dy = min(max(round(size / 2 - cy), -y0), size - y1)
    dx = min(max(round(size / 2 - cx), -x0), size - x1)
    out = np.zeros_like(frame)
    out[y0 + dy:y1 + dy, x0 + dx:x1 + dx] = frame[y0:y1, x0:x1]
    return out


def gray_of(img: Image.Image) -> np.ndarray:
    """Any image as grayscale float32 [H, W] on a 0..255 scale, translucency flattened onto a
    backdrop that contrasts with its ink."""
    gray, alpha = _gray_and_alpha(img)
    return _flatten_alpha(gray, alpha) if alpha is not None else gray


def preprocess_image(img: Image.Image, *, size: int = 28) -> np.ndarray:
    """Turn any image into an MNIST-style uint8 array [size, size]: 0 background, 255 ink.

    Handles every PIL mode (L, RGB, RGBA, P, LA, I;16, 1, ...) and both polarities (dark ink on
    light paper, light ink on dark). An image with no ink gives all zeros. An image that is
    already MNIST style comes back nearly unchanged.
    """
    gray = gray_of(img)
    longer = max(gray.shape)
    if longer > 2 * _WORK_SIDE:
        gray = _block_mean(gray, longer // _WORK_SIDE)
    ink = _ink_map(gray)
    peak = float(ink.max()) if ink.size else 0.0
    if peak <= 0.0:
        return np.zeros((size, size), dtype=np.uint8)
    ink *= 255.0 / peak
    is_ink = _crop_mask(ink)
    if not is_ink.any():
        return np.zeros((size, size), dtype=np.uint8)
    top, bottom, left, right = _grow_box(ink, is_ink)
    crop = ink[top:bottom, left:right]
    target = max(1, round(size * 20 / 28))
    scale = target / max(crop.shape)
    new_h = min(target, max(1, round(crop.shape[0] * scale)))
    new_w = min(target, max(1, round(crop.shape[1] * scale)))
    resized = Image.fromarray(crop.astype(np.float32)).resize((new_w, new_h), Image.LANCZOS)  # mode F
    small = np.maximum(np.asarray(resized, dtype=np.float32), 0.0)
    if float(small.max()) <= 0.0:
        return np.zeros((size, size), dtype=np.uint8)
    small *= 255.0 / float(small.max())  # thin strokes fade when shrunk; restore full ink
    if (new_h, new_w) != crop.shape:
        small[small < _RINGING_LEVEL * 255.0] = 0.0  # Lanczos ripples around strokes; MNIST's background is 0
    frame = np.zeros((size, size), dtype=np.float32)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    frame[y0:y0 + new_h, x0:x0 + new_w] = small
    frame = _shift_to_centre(frame, (y0, x0, y0 + new_h, x0 + new_w))
    frame = np.rint(frame)
    return np.minimum(np.maximum(frame, 0, out=frame), 255, out=frame).astype(np.uint8)


def image_to_array(source: ImageSource, *, name: str | None = None, size: int = 28) -> np.ndarray:
    """Load and preprocess one image: ``preprocess_image(load_image(source))``."""
    return preprocess_image(load_image(source, name=name), size=size)


def images_to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
    """Stack preprocessed uint8 [H, W] arrays into a uint8 tensor [N, 1, H, W]."""
    import torch  # here, so the image path (and ONNX serving) needs no torch

    if not arrays:
        return torch.zeros((0, 1, 28, 28), dtype=torch.uint8)
    stacked = np.stack([np.asarray(a, dtype=np.uint8) for a in arrays])
    if stacked.ndim != 3:
        raise ValueError(f"expected 2-D images, got arrays of shape {stacked.shape[1:]}")
    return torch.from_numpy(stacked).unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]


def is_image_file(path: Path) -> bool:
    """True when the file name has an image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


__all__ = [
    "IMAGE_EXTENSIONS", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS", "ImageError", "gray_of", "image_to_array", "images_to_tensor", "is_image_file",
    "load_image", "preprocess_image",
]
