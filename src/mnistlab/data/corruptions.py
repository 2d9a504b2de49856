"""A battery of image corruptions as batched, seeded tensor math, for measuring robustness.

The fifteen families of MNIST-C (Mu and Gilmer, 2019: shot noise, impulse noise, glass blur,
motion blur, shear, scale, rotate, brightness, translate, stripe, fog, spatter, dotted line,
zigzag, canny edges) and five more (Gaussian noise, contrast, inversion, occlusion,
pixelation), each at five severities. Severity parameters follow the published ones where
MNIST-C has them, and :attr:`Corruption.published` names the severity MNIST-C was made at.
These are re-implementations for whole batches, not the published code: figures measured
with them are a proxy for MNIST-C, not MNIST-C itself.

    out = corrupt(images, "fog", severity=5, seed=0)   # uint8 [N, 1, 28, 28] -> uint8, same shape

Every random draw comes from one generator seeded by (seed, corruption, severity), so the
same call gives the same images on every run. Images are taken in MNIST polarity (ink white
on black). Training augmentation lives in ``data.augment`` and shares no code with this file.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mnistlab.errors import ConfigError

Fn = Callable[[torch.Tensor, object, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One family: a function of (images float [B, 1, H, W] in [0, 1], level, generator) and its levels."""

    name: str
    fn: Fn
    levels: tuple  # the parameter of severities 1..5
    published: int | None = None  # the severity MNIST-C uses; None: not an MNIST-C family


# ---- helpers ---------------------------------------------------------------------------------


def _gauss_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """A normalised 1-D Gaussian [K] of radius ceil(3 sigma)."""
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of float [B, C, H, W], edges reflected (as scikit-image's default)."""
    if sigma <= 0:
        return x
    k = _gauss_kernel(sigma, x.device)
    r = (len(k) - 1) // 2
    c = x.shape[1]
    pad_h = min(r, x.shape[2] - 1)
    pad_w = min(r, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect")
    kh = k[r - pad_h : r + pad_h + 1].view(1, 1, -1, 1).repeat(c, 1, 1, 1)  # [C, 1, K, 1]
    kw = k[r - pad_w : r + pad_w + 1].view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    return F.conv2d(F.conv2d(x, kh, groups=c), kw, groups=c)


def _centre_warp(x: torch.Tensor, inverse: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
    """Resample ``x`` [B, C, H, W] at ``inverse`` @ (p - centre) + centre (+ shift, pixels), zeros outside.

    ``inverse`` [B, 2, 2] maps output to input pixel coordinates (x, y order), as scikit-image's warp.
    """
    b, _, h, w = x.shape
    scale = torch.tensor([w / 2, h / 2], device=x.device)
    theta = torch.diag_embed(1 / scale).expand(b, 2, 2) @ inverse @ torch.diag_embed(scale).expand(b, 2, 2)
    t = torch.zeros(b, 2, 1, device=x.device) if shift is None else (shift / scale).view(b, 2, 1)
    grid = F.affine_grid(torch.cat([theta, t], dim=2), list(x.shape), align_corners=False)  # [B, H, W, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _signs(b: int, g: torch.Generator, device: torch.device, n: int = 1) -> torch.Tensor:
    """Random +-1, float [B, n]."""
    return torch.randint(0, 2, (b, n), generator=g).to(device).float() * 2 - 1


def _rand(shape: tuple[int, ...], g: torch.Generator, device: torch.device) -> torch.Tensor:
    """U(0, 1) drawn on the CPU generator (same numbers on every device), moved to ``device``."""
    return torch.rand(shape, generator=g).to(device)


def _line_profile(dist: torch.Tensor) -> torch.Tensor:
    """Stroke intensity at a distance (pixels) from a line's centre: 1 on it, 0 beyond 2.3 px."""
    d = dist.clamp(0, 2.3 - 1e-6)
    return (torch.log1p(-d / 2.3) + 1).clamp(0, 1)


def _grid(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row coordinates, float [1, H, W] each."""
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                                torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    return cols.unsqueeze(0), rows.unsqueeze(0)


# ---- noise -----------------------------------------------------------------------------------


def _gaussian_noise(x, sigma, g):
    return x + torch.randn(x.shape, generator=g).to(x.device) * sigma


def _shot_noise(x, photons, g):
    return torch.poisson(x.cpu() * photons, generator=g).to(x.device) / photons


def _impulse_noise(x, amount, g):
    draw = _rand(x.shape, g, x.device)
    salt = draw < amount / 2
    pepper = (draw >= amount / 2) & (draw < amount)
    return x.masked_fill(salt, 1.0).masked_fill(pepper, 0.0)


# ---- blur ------------------------------------------------------------------------------------


def _glass_blur(x, level, g):
    sigma, delta, iterations = level
    b, c, h, w = x.shape
    x = gaussian_blur(x, sigma).mul(255).floor().div(255)  # scikit-image's uint8 round trip
    cols, rows = _grid(h, w, x.device)
    for _ in range(iterations):  # every pixel takes a random neighbour within delta (local shuffling)
        move = _rand((b, h, w), g, x.device) < 0.5
        d = torch.randint(-delta, delta, (b, 2, h, w), generator=g).to(x.device).float()
        src_c = (cols + d[:, 0] * move).clamp(0, w - 1).long()
        src_r = (rows + d[:, 1] * move).clamp(0, h - 1).long()
        index = (src_r * w + src_c).view(b, 1, h * w).expand(b, c, h * w)
        x = x.reshape(b, c, h * w).gather(2, index).view(b, c, h, w)
    return gaussian_blur(x, sigma)


def _motion_blur(x, level, g):
    radius, sigma = level
    b = x.shape[0]
    angle = torch.deg2rad(_rand((b,), g, x.device) * 90 - 45)
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)  # [B, 2] (x, y)
    taps = torch.arange(int(radius), device=x.device, dtype=torch.float32)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    eye = torch.eye(2, device=x.device).expand(b, 2, 2)
    out = torch.zeros_like(x)
    for k, wk in zip(taps.tolist(), weights.tolist(), strict=True):  # one-sided, along the angle
        out = out + wk * _centre_warp(x, eye, shift=direction * k)
    return out


def _pixelate(x, factor, g):
    h, w = x.shape[-2:]
    small = F.adaptive_avg_pool2d(x, (max(1, int(h * factor)), max(1, int(w * factor))))
    return F.interpolate(small, size=(h, w), mode="nearest")


# ---- geometry --------------------------------------------------------------------------------


def _shear(x, amount, g):
    s = _signs(x.shape[0], g, x.device).squeeze(1) * amount
    inverse = torch.zeros(x.shape[0], 2, 2, device=x.device)
    inverse[:, 0, 0] = 1
    inverse[:, 0, 1] = -torch.sin(s)
    inverse[:, 1, 1] = torch.cos(s)
    return _centre_warp(x, inverse)


def _rotate(x, radians, g):
    a = _signs(x.shape[0], g, x.device).squeeze(1) * radians
    cos, sin = torch.cos(a), torch.sin(a)
    inverse = torch.stack([cos, -sin, sin, cos], dim=1).view(-1, 2, 2)
    return _centre_warp(x, inverse)


def _scale(x, factor, g):
    inverse = torch.eye(2, device=x.device).expand(x.shape[0], 2, 2) / factor  # the digit shrinks to `factor`
    return _centre_warp(x, inverse)


def _translate(x, pixels, g):
    b = x.shape[0]
    shift = -_signs(b, g, x.device, 2) * pixels  # sample from p - d: the content moves by d
    return _centre_warp(x, torch.eye(2, device=x.device).expand(b, 2, 2), shift=shift)


# ---- intensity -------------------------------------------------------------------------------


def _brightness(x, amount, g):
    return x + amount


def _contrast(x, factor, g):
    means = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - means) * factor + means


def _inversion(x, alpha, g):
    return (1 - alpha) * x + alpha * (1 - x)


def _fractal(b: int, size: int, decay: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Fractal noise float [B, size, size] in [0, 1], synthesised by FFT on a 64 x 64 map and cropped.

    As in diamond-square plasma whose random offsets shrink by ``decay`` per halving of the step
    (and enter squared), the amplitude at frequency f goes as f^(-2 log2 decay).
    """
    n = 64
    fy = torch.fft.fftfreq(n, device=device).view(n, 1)
    fx = torch.fft.rfftfreq(n, device=device).view(1, -1)
    f = torch.sqrt(fx**2 + fy**2).clamp(min=1.0 / n)
    amplitude = f ** (-2 * math.log2(decay))
    phase = _rand((b, n, n // 2 + 1), g, device) * 2 * math.pi
    spectrum = amplitude * torch.polar(torch.ones_like(phase), phase)
    field = torch.fft.irfft2(spectrum, s=(n, n))
    lo = field.amin(dim=(1, 2), keepdim=True)
    hi = field.amax(dim=(1, 2), keepdim=True)
    return ((field - lo) / (hi - lo))[:, :size, :size]


def _fog(x, level, g):
    strength, decay = level
    b, _, h, w = x.shape
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fog = _fractal(b, max(h, w), decay, g, x.device)[:, :h, :w].unsqueeze(1)
    return (x + strength * fog) * peak / (peak + strength)


def _spatter(x, level, g):
    loc, scale, sigma, threshold, mask_sigma = level
    liquid = gaussian_blur(torch.randn(x.shape, generator=g).to(x.device) * scale + loc, sigma)
    mask = gaussian_blur((liquid > threshold).float(), mask_sigma)
    mask = mask * (mask >= 0.8)
    return x * (1 - mask) + 63 / 255 * mask  # mud


def _occlusion(x, fraction, g):
    b, _, h, w = x.shape
    side_h, side_w = round(h * fraction), round(w * fraction)
    draws = _rand((b, 2), g, x.device)  # the square's top-left, inside the middle of the image
    top = (h / 4 + draws[:, 0] * (h / 2 - side_h / 2)).round().view(b, 1, 1)
    left = (w / 4 + draws[:, 1] * (w / 2 - side_w / 2)).round().view(b, 1, 1)
    cols, rows = _grid(h, w, x.device)
    inside = (rows >= top) & (rows < top + side_h) & (cols >= left) & (cols < left + side_w)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


def _stripe(x, width, g):
    w = x.shape[-1]
    cols = torch.arange(w, device=x.device)
    band = (cols < width) | (cols >= w - width)
    return torch.where(band.view(1, 1, 1, w), 1 - x, x)


# ---- strokes drawn over the image ------------------------------------------------------------


def _dotted_line(x, count, g):
    b, _, h, w = x.shape
    cols, rows = _grid(h, w, x.device)
    out = x
    for _ in range(int(count)):
        r = torch.randint(0, h - 1, (b, 2), generator=g).to(x.device).float()
        slope = ((r[:, 1] - r[:, 0]) / (w - 1)).view(b, 1, 1)
        stroke = _line_profile((rows - (slope * cols + r[:, 0].view(b, 1, 1))).abs())
        dashes = (cols.long() // 2) % 2 == 0  # two columns on, two off
        out = out + (stroke * dashes).unsqueeze(1)
    return out


def _zigzag(x, count, g):
    b, _, h, w = x.shape
    cols, rows = _grid(h, w, x.device)
    c0, c1, period, amplitude = 2.0, float(w - 3), 4.0, 2.0
    out = x
    for _ in range(int(count)):
        r0 = torch.randint(0, h - 1, (b,), generator=g).to(x.device).float()
        r1 = r0 + torch.randint(-5, 5, (b,), generator=g).to(x.device).float()
        theta = torch.atan((r1 - r0) / (c1 - c0)).view(b, 1, 1)
        along = (cols - c0) * torch.cos(theta) + (rows - r0.view(b, 1, 1)) * torch.sin(theta)
        across = -(cols - c0) * torch.sin(theta) + (rows - r0.view(b, 1, 1)) * torch.cos(theta)
        phase = torch.remainder(along / period, 1.0)
        wave = amplitude * (1 - 4 * (phase - 0.5).abs())  # a triangle wave, +-amplitude
        length = (c1 - c0) / torch.cos(theta)
        stroke = _line_profile((across - wave).abs()) * ((along >= 0) & (along <= length))
        out = out + stroke.unsqueeze(1)
    return out


HYSTERESIS_STEPS = 12  # pixels an edge may grow from a strong pixel along weak ones


def _canny_edges(x, sigma, g):
    b, c, h, w = x.shape
    s = gaussian_blur(x, sigma)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=x.device)
    padded = F.pad(s, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    gy = F.conv2d(padded, sobel.T.reshape(1, 1, 3, 3).repeat(c, 1, 1, 1), groups=c)
    mag = torch.sqrt(gx**2 + gy**2)
    # non-maximum suppression along the gradient, quantised to 0, 45, 90, 135 degrees
    angle = torch.remainder(torch.rad2deg(torch.atan2(gy, gx)), 180.0)
    sector = (((angle + 22.5) // 45) % 4).long()  # 0: horizontal gradient, 1: 45, 2: vertical, 3: 135
    m = F.pad(mag, (1, 1, 1, 1))
    neighbours = [(0, 1), (1, 1), (1, 0), (1, -1)]  # (dy, dx) per sector
    keep = torch.zeros_like(mag, dtype=torch.bool)
    for k, (dy, dx) in enumerate(neighbours):
        ahead = m[:, :, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        behind = m[:, :, 1 - dy : 1 - dy + h, 1 - dx : 1 - dx + w]
        keep |= (sector == k) & (mag >= ahead) & (mag >= behind)
    mag = mag * keep / 4  # sobel's [1, 2, 1] weights sum to 4, as scikit-image scales it
    strong, weak = mag >= 0.2, mag >= 0.1  # scikit-image's default thresholds for float images
    edges = strong
    for _ in range(HYSTERESIS_STEPS):  # hysteresis: weak pixels joined to strong ones
        grown = F.max_pool2d(edges.float(), 3, stride=1, padding=1).bool() & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


# ---- the battery -----------------------------------------------------------------------------

CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("shot_noise", _shot_noise, (60, 25, 12, 5, 3), published=5),
    Corruption("impulse_noise", _impulse_noise, (0.03, 0.06, 0.09, 0.17, 0.27), published=4),
    Corruption("glass_blur", _glass_blur, ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)), published=1),
    Corruption("motion_blur", _motion_blur, ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), published=1),
    Corruption("shear", _shear, (0.2, 0.4, 0.6, 0.8, 1.0), published=2),  # radians
    Corruption("scale", _scale, (0.9, 0.8, 0.7, 0.6, 0.5), published=3),  # size of the result
    Corruption("rotate", _rotate, (0.2, 0.4, 0.6, 0.8, 1.0), published=2),  # radians
    Corruption("brightness", _brightness, (0.1, 0.2, 0.3, 0.4, 0.5), published=5),
    Corruption("translate", _translate, (1, 2, 3, 4, 5), published=3),  # pixels per axis
    Corruption("stripe", _stripe, (3, 5, 7, 9, 11), published=3),  # inverted columns at each side
    Corruption("fog", _fog, ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), published=5),
    Corruption("spatter", _spatter, ((0.65, 0.3, 4, 0.69, 0.6), (0.65, 0.3, 3, 0.68, 0.6), (0.65, 0.3, 2, 0.68, 0.5),
                                     (0.65, 0.3, 1, 0.65, 1.5), (0.67, 0.4, 1, 0.65, 1.5)), published=4),
    Corruption("dotted_line", _dotted_line, (1, 2, 3, 4, 5), published=1),  # lines
    Corruption("zigzag", _zigzag, (1, 2, 3, 4, 5), published=1),  # zigzag lines
    Corruption("canny_edges", _canny_edges, (1.0, 1.25, 1.5, 1.75, 2.0), published=1),  # smoothing sigma
    Corruption("gaussian_noise", _gaussian_noise, (0.08, 0.12, 0.18, 0.26, 0.38)),
    Corruption("contrast", _contrast, (0.4, 0.3, 0.2, 0.1, 0.05)),
    Corruption("inversion", _inversion, (0.6, 0.7, 0.8, 0.9, 1.0)),  # blend towards the negative
    Corruption("occlusion", _occlusion, (0.2, 0.3, 0.4, 0.5, 0.6)),  # side of a black square / image side
    Corruption("pixelation", _pixelate, (0.6, 0.5, 0.4, 0.3, 0.25)),  # resolution kept
)}
MNIST_C = tuple(name for name, c in CORRUPTIONS.items() if c.published is not None)  # the 15 families
SEVERITIES = (1, 2, 3, 4, 5)
CHUNK = 1024  # images corrupted at a time


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """The generator seed of one (seed, corruption, severity): stable across runs and processes."""
    return (seed * 1_000_003 + zlib.crc32(name.encode()) * 31 + severity) % (2**63 - 1)


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """``images`` (uint8 [N, C, H, W], or float in [0, 1]) under corruption ``name`` at ``severity`` 1-5.

    Returns a new tensor of the same shape, dtype and device; the same arguments give the same result.
    """
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption '{name}'", hint=f"choose one of {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity {severity} is out of range", hint="choose a severity from 1 to 5")
    spec = CORRUPTIONS[name]
    g = torch.Generator().manual_seed(corruption_seed(seed, name, severity))
    parts = []
    for start in range(0, len(images), CHUNK):  # bounded memory; the draws run on in order, chunk after chunk
        chunk = images[start : start + CHUNK]
        x = chunk.float().div(255) if chunk.dtype == torch.uint8 else chunk.float()
        out = spec.fn(x, spec.levels[severity - 1], g).clamp(0, 1)
        parts.append(out.mul(255).round().to(torch.uint8) if chunk.dtype == torch.uint8 else out.to(chunk.dtype))
    return torch.cat(parts) if parts else images.clone()
