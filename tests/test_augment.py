"""Batched augmentation: identity when off, reproducible, geometrically sane, fast."""

from __future__ import annotations

import time

import pytest
import torch

from mnistlab.config import AugmentConfig
from mnistlab.data.augment import augment_batch

FULL = AugmentConfig(rotate=15, translate=0.1, scale=0.1, shear=10, elastic=34, erase=0.5)


def _blobs(b: int = 8, h: int = 28, w: int = 28) -> torch.Tensor:
    """A bright square in the middle of each image, float [B, 1, H, W] in [0, 1]."""
    x = torch.zeros(b, 1, h, w)
    x[:, :, h // 2 - 4:h // 2 + 4, w // 2 - 4:w // 2 + 4] = 1.0
    return x


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_disabled_is_identity():
    x = _blobs()
    assert not AugmentConfig().enabled
    assert augment_batch(x, AugmentConfig(), _gen(0)) is x
    assert AugmentConfig(erase=0.1).enabled and AugmentConfig(elastic=1).enabled


@pytest.mark.parametrize("params", [FULL, AugmentConfig(rotate=30), AugmentConfig(elastic=20), AugmentConfig(erase=1)])
def test_reproducible_and_shape_preserving(params):
    x = torch.rand(16, 1, 28, 28)
    a = augment_batch(x, params, _gen(7))
    b = augment_batch(x, params, _gen(7))
    c = augment_batch(x, params, _gen(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, x)
    assert torch.equal(x, augment_batch(x, AugmentConfig(), _gen(7)))  # input untouched


def test_each_image_gets_its_own_transform():
    x = _blobs(4)
    out = augment_batch(x, AugmentConfig(rotate=45, translate=0.2), _gen(0))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[2], out[3])


def test_rotation_keeps_mass_and_centre():
    x = _blobs(64)
    out = augment_batch(x, AugmentConfig(rotate=40), _gen(1))
    mass = out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass, x.sum(dim=(1, 2, 3)), rtol=0.08)
    ys = torch.arange(28.0).view(1, 1, 28, 1)
    cy = (out * ys).sum(dim=(1, 2, 3)) / mass
    assert torch.allclose(cy, torch.full_like(cy, 13.5), atol=0.3)


def test_translation_moves_content_within_bounds():
    x = _blobs(256)
    out = augment_batch(x, AugmentConfig(translate=0.1), _gen(2))
    xs = torch.arange(28.0).view(1, 1, 1, 28)
    cx = (out * xs).sum(dim=(1, 2, 3)) / out.sum(dim=(1, 2, 3))
    shift = cx - 13.5
    assert shift.abs().max() <= 2.8 + 0.2  # at most 10% of 28 px
    assert shift.abs().max() > 1.5 and shift.std() > 0.8  # and it really moves, both ways
    assert (shift > 0).any() and (shift < 0).any()


def test_scale_changes_size():
    x = _blobs(128)
    out = augment_batch(x, AugmentConfig(scale=0.3), _gen(3))
    area = (out > 0.5).sum(dim=(1, 2, 3)).float()
    assert area.min() < 64 * 0.8 and area.max() > 64 * 1.2


def test_fill_value_for_normalised_input():
    mean, std = 0.1307, 0.3081
    black = -mean / std
    x = torch.full((8, 1, 28, 28), black)  # an all-black normalised batch
    out = augment_batch(x, AugmentConfig(rotate=30, translate=0.2, scale=0.2, shear=10, erase=1), _gen(4), fill=black)
    assert torch.allclose(out, x, atol=1e-5)  # black stays black: nothing else moves in
    ones = torch.ones(8, 1, 28, 28)
    shifted = augment_batch(ones, AugmentConfig(translate=0.3), _gen(4))
    assert shifted.min() < 0.01  # the default fill 0 moved in from outside


def test_erasing():
    x = torch.ones(200, 1, 28, 28)
    out = augment_batch(x, AugmentConfig(erase=0.5), _gen(5), fill=-1.0)
    erased = (out == -1.0).float().mean(dim=(1, 2, 3))
    hit = erased > 0
    assert 0.35 < hit.float().mean() < 0.65  # about half the images
    assert erased[hit].min() >= 0.01 and erased[hit].max() <= 0.40  # 2-33% of the area, pixel-rounded
    assert torch.equal(out[~hit], x[~hit])


def test_hflip_mirrors_about_the_requested_share_and_nothing_else():
    x = torch.rand(400, 1, 28, 28)
    out = augment_batch(x, AugmentConfig(hflip=0.5), _gen(3))
    mirrored = (out == x.flip(-1)).flatten(1).all(dim=1)
    kept = (out == x).flatten(1).all(dim=1)
    assert torch.equal(mirrored | kept, torch.ones(400, dtype=torch.bool))  # each image one or the other
    assert 0.4 < mirrored.float().mean() < 0.6
    assert torch.equal(out, augment_batch(x, AugmentConfig(hflip=0.5), _gen(3)))  # seeded
    assert AugmentConfig(hflip=0.5).enabled and torch.equal(augment_batch(x, AugmentConfig(hflip=1.0), _gen(0)), x.flip(-1))


def test_elastic_is_small_and_smooth():
    x = _blobs(32)
    out = augment_batch(x, AugmentConfig(elastic=34, elastic_sigma=4), _gen(6))
    diff = (out - x).abs().mean(dim=(1, 2, 3))
    assert (diff > 0).all() and diff.max() < 0.2
    mass = out.sum(dim=(1, 2, 3))
    assert torch.allclose(mass, x.sum(dim=(1, 2, 3)), rtol=0.5)  # local stretching, no loss of the shape
    ys = torch.arange(28.0).view(1, 1, 28, 1)
    cy = (out * ys).sum(dim=(1, 2, 3)) / mass
    assert (cy - 13.5).abs().max() < 3  # displacements of a pixel or two, not a shift of the whole image


def test_non_square_and_multichannel():
    x = torch.rand(4, 3, 20, 36)
    out = augment_batch(x, FULL, _gen(9))
    assert out.shape == (4, 3, 20, 36)


def test_default_generator_and_bad_dtype():
    x = _blobs(2)
    assert augment_batch(x, FULL).shape == x.shape
    with pytest.raises(TypeError, match="floating-point"):
        augment_batch(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), FULL)
    assert augment_batch(x[:0], FULL).shape == (0, 1, 28, 28)


def test_fast_enough():
    """512 MNIST-sized images with everything on: a few ms on an idle core; the bound is loose
    because test machines are shared, but it catches a per-image loop or a slow convolution."""
    x = torch.rand(512, 1, 28, 28)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        augment_batch(x, FULL, _gen(0))  # warm-up
        best = min(_timed(lambda: augment_batch(x, FULL, _gen(0))) for _ in range(5))
    finally:
        torch.set_num_threads(threads)
    assert best < 0.2


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_shading_is_the_bilinear_sum_of_three_random_grids():
    """The matrix form of the shading equals upsampling each grid with F.interpolate and summing 4:2:1."""
    import torch.nn.functional as F

    from mnistlab.data.augment import _value_noise

    x = torch.zeros(6, 1, 28, 20)
    got = _value_noise(x, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    field = torch.zeros(6, 1, 28, 20)
    for cells, weight in ((3, 4.0), (6, 2.0), (12, 1.0)):
        grid = torch.rand(6, 1, cells, cells, generator=gen)
        field = field + weight * F.interpolate(grid, size=(28, 20), mode="bilinear", align_corners=True)
    lo, hi = field.amin(dim=(2, 3), keepdim=True), field.amax(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(got, (field - lo) / (hi - lo), rtol=0, atol=1e-5)
    assert got.amin() == 0 and got.amax() == 1 and got.shape == x.shape
