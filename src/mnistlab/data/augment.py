"""Batched data augmentation: random affine, elastic distortion, random erasing, mirroring and scan effects as tensor math.

Everything runs on the batch's own device with one call per batch (no per-image Python), and
every random draw comes from the caller's generator, so a seed reproduces a batch exactly.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from mnistlab.config import AugmentConfig


def _uniform(n: int, bound: float, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """n draws from U(-bound, bound), float32 on x's device."""
    return (torch.rand(n, device=x.device, generator=generator) * 2 - 1) * bound


def _affine_theta(x: torch.Tensor, p: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Per-image sampling matrices [B, 2, 3] for F.affine_grid (output -> input coordinates)."""
    b, _, h, w = x.shape
    angle = _uniform(b, math.radians(p.rotate), x, generator)
    shear = _uniform(b, math.radians(p.shear), x, generator)
    zoom = 1 + _uniform(b, p.scale, x, generator)
    shift = _uniform(2 * b, 2 * p.translate, x, generator).view(b, 2)  # normalised units: 2 = full size
    cos, sin, tan = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Forward map in pixel units: zoom * R(angle) @ [[1, tan], [0, 1]].
    a11, a12 = zoom * cos, zoom * (cos * tan - sin)
    a21, a22 = zoom * sin, zoom * (sin * tan + cos)
    det = (a11 * a22 - a12 * a21).view(b, 1, 1)
    # affine_grid wants the inverse map in normalised units: D^-1 A^-1 D with D = diag(w, h) / 2,
    # so a rotation stays a rotation when h != w.
    inv = torch.stack([a22, -a12 * h / w, -a21 * w / h, a11], dim=1).view(b, 2, 2) / det
    t = -(inv @ shift.unsqueeze(2))  # [B, 2, 2] @ [B, 2, 1] -> [B, 2, 1]
    return torch.cat([inv, t], dim=2)  # [B, 2, 3]


def _blur_matrix(n: int, sigma: float, device: torch.device) -> torch.Tensor:
    """Gaussian smoothing along one axis of length n as a matrix [n, n] (edges replicated).

    ``v @ m`` smooths the last axis of ``v``; a matrix product is much faster on CPU than a
    single-channel convolution with a wide kernel.
    """
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=device)
    weights = torch.exp(-0.5 * (offsets.float() / sigma) ** 2)
    weights = weights / weights.sum()
    out_pos = torch.arange(n, device=device)
    src_pos = (out_pos.view(1, n) + offsets.view(-1, 1)).clamp(0, n - 1)  # [K, n]: input feeding each output
    m = torch.zeros(n, n, device=device)
    m.index_put_((src_pos.flatten(), out_pos.repeat(len(offsets))), weights.repeat_interleave(n), accumulate=True)
    return m


def _elastic_field(x: torch.Tensor, p: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Smooth random displacements [B, H, W, 2] in normalised grid units (x, y order).

    As Simard et al. (2003): uniform noise in [-1, 1] per pixel, smoothed by a Gaussian of
    ``elastic_sigma`` pixels, scaled by ``elastic`` pixels.
    """
    b, _, h, w = x.shape
    noise = torch.rand(b, 2, h, w, device=x.device, generator=generator) * 2 - 1  # [B, 2, H, W]
    smooth = _blur_matrix(h, p.elastic_sigma, x.device).T @ noise @ _blur_matrix(w, p.elastic_sigma, x.device)
    # elastic pixels -> normalised units: 2 units span the width (x) or the height (y)
    scale = torch.tensor([2.0 * p.elastic / w, 2.0 * p.elastic / h], device=x.device, dtype=smooth.dtype)
    return (smooth * scale.view(1, 2, 1, 1)).permute(0, 2, 3, 1)  # [B, 2, H, W] -> [B, H, W, 2]


def _erase(x: torch.Tensor, prob: float, fill: float, generator: torch.Generator | None) -> torch.Tensor:
    """Set one random rectangle (2-33% of the area, aspect 0.3-3.3) to ``fill`` in a fraction of images."""
    b, _, h, w = x.shape
    draws = torch.rand(b, 5, device=x.device, generator=generator)  # [B, (apply, area, ratio, top, left)]
    area = (0.02 + draws[:, 1] * 0.31) * h * w
    ratio = torch.exp(math.log(0.3) + draws[:, 2] * (math.log(3.3) - math.log(0.3)))
    eh = torch.sqrt(area * ratio).clamp(1, h)
    ew = torch.sqrt(area / ratio).clamp(1, w)
    top = draws[:, 3] * (h - eh)
    left = draws[:, 4] * (w - ew)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
              & (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1)))  # [B, H, W]
    mask = (inside & (draws[:, 0] < prob).view(b, 1, 1)).unsqueeze(1)  # [B, 1, H, W]
    return x.masked_fill(mask, fill)  # the mask broadcasts over channels


def _per_image(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One U(0, 1) draw per image, float [B, 1, 1, 1] on x's device."""
    return torch.rand(x.shape[0], device=x.device, generator=generator).view(-1, 1, 1, 1)


def _blur_each(x: torch.Tensor, sy: torch.Tensor, sx: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each image of float [B, C, H, W] by its own Gaussian sigmas (pixels, float [B]) per axis, edges replicated."""
    b, c, h, w = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)

    def kernels(sigma: torch.Tensor) -> torch.Tensor:  # [B * C, K]
        k = torch.exp(-(t**2) / (2 * sigma.clamp(min=1e-2).view(-1, 1) ** 2))
        return (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)

    v = F.pad(x.reshape(1, b * c, h, w), (0, 0, radius, radius), mode="replicate")  # one channel per image
    v = F.conv2d(v, kernels(sy).view(b * c, 1, -1, 1), groups=b * c)
    v = F.conv2d(F.pad(v, (radius, radius, 0, 0), mode="replicate"), kernels(sx).view(b * c, 1, 1, -1), groups=b * c)
    return v.view(b, c, h, w)


def _upsample_matrix(n: int, cells: int, device: torch.device) -> torch.Tensor:
    """Bilinear upsampling (align_corners=True) from ``cells`` >= 2 to ``n`` values along one axis, as a matrix [n, cells].

    ``m @ v`` equals ``F.interpolate`` of v's first axis; bilinear is separable, so two small matrix
    products upsample a batch of grids several times faster on a CPU than ``F.interpolate``.
    """
    src = torch.arange(n, device=device, dtype=torch.float32) * ((cells - 1) / max(n - 1, 1))
    lo = src.floor().clamp(max=cells - 2).long()  # the left neighbour; the last point uses the last pair
    frac = src - lo
    m = torch.zeros(n, cells, device=device)
    rows = torch.arange(n, device=device)
    m[rows, lo] = 1 - frac
    m[rows, lo + 1] = frac
    return m


_OCTAVES = ((3, 4.0), (6, 2.0), (12, 1.0))  # (cells a side, weight) of the shading's random grids


@functools.lru_cache(maxsize=16)
def _octave_matrices(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every octave's weighted upsampling side by side: [H, 21] for the rows, [21, W] for the columns."""
    rows = torch.cat([weight * _upsample_matrix(h, cells, device) for cells, weight in _OCTAVES], dim=1)
    cols = torch.cat([_upsample_matrix(w, cells, device) for cells, _ in _OCTAVES], dim=1).T
    return rows, cols


def _value_noise(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Smooth random shading float [B, 1, H, W] in [0, 1]: random grids of 3, 6 and 12 cells a side,
    upsampled bilinearly, weighted 4:2:1 and summed (shadows, stains, uneven paper)."""
    b, _, h, w = x.shape
    total = sum(cells for cells, _ in _OCTAVES)
    grids = torch.zeros(b, 1, total, total, device=x.device)  # the octaves' grids as diagonal blocks
    at = 0
    for cells, _ in _OCTAVES:
        grids[:, :, at:at + cells, at:at + cells] = torch.rand(b, 1, cells, cells, device=x.device, generator=generator)
        at += cells
    rows, cols = _octave_matrices(h, w, x.device)
    field = rows @ grids @ cols  # [H, 21] @ [B, 1, 21, 21] @ [21, W] -> [B, 1, H, W]: the weighted sum of the octaves
    lo = field.amin(dim=(2, 3), keepdim=True)
    return (field - lo) / (field.amax(dim=(2, 3), keepdim=True) - lo).clamp(min=1e-6)


def _ruling_lines(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One solid straight line per image at a random angle and place: float [B, 1, H, W] in [0, 1]."""
    b, _, h, w = x.shape
    draws = torch.rand(b, 4, device=x.device, generator=generator)  # [B, (angle, offset, width, ink)]
    angle = (draws[:, 0] * math.pi).view(b, 1, 1)
    offset = ((draws[:, 1] - 0.5) * 0.8 * min(h, w)).view(b, 1, 1)  # pixels from the centre
    half_width = (0.4 + 0.8 * draws[:, 2]).view(b, 1, 1)
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1) - (h - 1) / 2
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w) - (w - 1) / 2
    dist = (xs * torch.sin(angle) - ys * torch.cos(angle) - offset).abs()  # [B, H, W]
    ink = (0.5 + 0.5 * draws[:, 3]).view(b, 1, 1)
    return ((half_width + 0.5 - dist).clamp(0, 1) * ink).unsqueeze(1)


def _outline(x: torch.Tensor) -> torch.Tensor:
    """The strokes of float [B, C, H, W] (ink white on black) as hollow outlines: the one-pixel ring
    that a 3x3 dilation adds around the ink, scaled so that each image's brightest ring is 1."""
    ring = (F.max_pool2d(x, 3, stride=1, padding=1) - x).clamp(min=0)
    return ring / ring.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)


def scan_effects(x: torch.Tensor, p: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """What a scanner or camera does to a page, on float images [B, C, H, W] in [0, 1] (ink white on black).

    In this order, each applied to an image with probability ``p.scan_prob`` at a strength drawn
    uniformly up to its setting: blur (sigma per axis), uneven shading, grey paper and faded ink,
    a ruling line, Gaussian noise, speckle. Before them, with probability ``p.outline`` (not
    ``scan_prob``), the strokes turn into their outlines. Only a share ``p.scan_images`` of the
    images, drawn first, is touched at all. The result is clamped to [0, 1].
    """
    b, _, h, w = x.shape
    touched = _per_image(x, generator) < p.scan_images if p.scan_images < 1 else True

    def chosen() -> torch.Tensor:
        return (_per_image(x, generator) < p.scan_prob) & touched  # bool [B, 1, 1, 1]

    out = x
    if p.outline > 0:
        out = torch.where((_per_image(x, generator) < p.outline) & touched, _outline(x), x)
    if p.blur > 0:
        on = chosen().flatten()
        sy = _per_image(x, generator).flatten() * p.blur * on
        sx = _per_image(x, generator).flatten() * p.blur * on
        out = _blur_each(out, sy, sx, radius=max(1, min(math.ceil(3 * p.blur), min(h, w) // 2)))
    if p.shading > 0:
        out = out + _value_noise(x, generator) * _per_image(x, generator) * p.shading * chosen()
    if p.paper > 0 or p.fade > 0:
        paper = _per_image(x, generator) * p.paper * chosen()
        keep = 1 - _per_image(x, generator) * p.fade * chosen()
        out = paper + out * (1 - paper) * keep
    if p.lines > 0:
        line = _ruling_lines(x, generator) * ((_per_image(x, generator) < p.lines) & touched)
        out = torch.maximum(out, line)
    if p.noise > 0:
        sigma = _per_image(x, generator) * p.noise * chosen()
        out = out + torch.randn(out.shape, device=x.device, generator=generator) * sigma
    if p.speckle > 0:
        share = _per_image(x, generator) * p.speckle * chosen()
        draws = torch.rand(out.shape, device=x.device, generator=generator)
        out = torch.where(draws < share / 2, 1.0, torch.where(draws > 1 - share / 2, 0.0, out))
    return out.clamp(0, 1)


def augment_batch(x: torch.Tensor, p: AugmentConfig, generator: torch.Generator | None = None,
                  fill: float = 0.0) -> torch.Tensor:
    """Randomly augment a float batch [B, C, H, W]; returns a new tensor of the same shape.

    ``fill`` is the value of a black pixel in ``x``'s scale (0 for [0, 1] images,
    -mean/std for normalised ones); it fills whatever moves in from outside and erased areas.
    ``generator`` must live on ``x.device``. Returns ``x`` itself when nothing is enabled.
    """
    if not p.enabled or x.shape[0] == 0:
        return x
    if not x.is_floating_point():
        raise TypeError(f"augment_batch needs a floating-point batch, got {x.dtype}; call normalize() first")
    out = x
    if p.geometric:
        theta = _affine_theta(x, p, generator)
        grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # [B, H, W, 2]
        if p.elastic > 0:
            grid = grid + _elastic_field(x, p, generator).to(x.dtype)
        # Sampling x - fill with zero padding and adding fill back pads with ``fill``.
        shifted = x - fill if fill else x
        out = F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out = out + fill if fill else out
    if p.erase > 0:
        out = _erase(out, p.erase, fill, generator)
    if p.hflip > 0:
        flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p.hflip  # [B]
        out = torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
    if p.scan:
        if fill:
            raise ValueError("scan effects need [0, 1] images (fill 0); normalise after augmenting")
        out = scan_effects(out, p, generator)
    return out
