"""The in-memory dataset type every loader returns, and the one input normalisation.

Kept apart from the loaders (``dataset``, ``folders``, ``csvdata``) so that they can all build an
ImageData without importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class ImageData:
    """A dataset split held in memory."""

    images: torch.Tensor  # uint8 [N, C, H, W] (C=1, 28x28 for this family)
    labels: torch.Tensor  # int64 [N]; -1 where unknown (unlabelled CSV test files)
    classes: list[str]
    name: str  # the spec it came from
    mean: float  # normalisation statistics of the source dataset (pixel/255)
    std: float
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) for folder datasets

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> ImageData:
        """The examples at ``index`` (int64 indices or a bool mask), as a new ImageData."""
        index = index.to(self.labels.device)
        return replace(self, images=self.images[index], labels=self.labels[index], skipped=list(self.skipped))

    def to(self, device: torch.device | str) -> ImageData:
        """A copy whose tensors live on ``device``."""
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def class_counts(self) -> torch.Tensor:
        """Number of examples of each class, int64 [len(classes)] (unlabelled ones not counted)."""
        known = self.labels[self.labels >= 0]
        return torch.bincount(known.cpu(), minlength=len(self.classes))


def normalize(x: torch.Tensor, mean: float, std: float, autocontrast: bool = False) -> torch.Tensor:
    """Model input from images: uint8 [B, C, H, W] -> float32 (x/255 - mean)/std.

    Floating-point input is taken to be already scaled to [0, 1]. With ``autocontrast``, each
    image is first turned ink-on-black and stretched so its paper is 0 and its brightest ink 1,
    so grey paper, faint ink and dark-on-light images reach the model as the clean digits it
    trained on (see :func:`stretch_contrast`).
    """
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    if autocontrast:
        x = stretch_contrast(x)
    return (x - mean) / std


AUTOCONTRAST_MIN_RANGE = 1.0 / 255  # an image flatter than one grey level is left as it is (no division by ~0)
POLARITY_MARGIN = 0.5  # of an image's range: uneven paper (fog) or inverted side bands are not a negative
PAPER_QUANTILE = 0.3  # share of the pixels taken to be paper at least (below 1/2: a band of inverted columns is not paper)


def stretch_contrast(x: torch.Tensor) -> torch.Tensor:
    """Per image of float [B, C, H, W] in [0, 1]: the paper black, the brightest ink white.

    Most of a digit image is paper, so the paper's grey level is the 30% quantile of the pixels
    counted from the dark end for ink-on-paper, from the bright end for dark-on-light. An image is
    dark-on-light when its bright quantile sits nearer its brightest pixel than its dark quantile
    sits to its darkest, by more than half its range; it is turned over first (what
    ``data.images.preprocess_image`` does to real images). Then (x - paper) / (ink - paper), clamped to [0, 1]: grey or uneven paper goes
    black, faint ink turns full. A clean MNIST image (paper 0, brightest ink 1) passes unchanged.
    Every operation exports to ONNX.
    """
    flat = x.flatten(1)  # [B, C*H*W]
    lo, hi = flat.amin(1), flat.amax(1)
    sample = x[:, :, ::2, ::2].flatten(1)  # every other pixel: a quarter of the work, strokes are wider than 2 px
    n = sample.shape[1]
    k = int(PAPER_QUANTILE * (n - 1)) + 1
    low = sample.topk(n - k + 1, dim=1, largest=False).values  # ascending: one sort-like pass gives both quantiles
    dark_paper, bright_paper = low[:, k - 1], low[:, -1]  # the k-th darkest and the k-th brightest pixel
    # turned over only on clear evidence: the dark quantile far above the darkest pixel, the bright one at the brightest
    dark_on_light = (dark_paper - lo) - (hi - bright_paper) > POLARITY_MARGIN * (hi - lo)
    paper = torch.where(dark_on_light, 1 - bright_paper, dark_paper)
    ink = torch.where(dark_on_light, 1 - lo, hi)
    span = (ink - paper).clamp(min=AUTOCONTRAST_MIN_RANGE)
    # one multiply-add per pixel: (flipped - paper) / span, where flipped = sign * x + flip;
    # an image flatter than AUTOCONTRAST_MIN_RANGE is only turned over
    sign = torch.where(dark_on_light, -1.0, 1.0)
    flip = torch.where(dark_on_light, 1.0, 0.0)
    flat_enough = ink - paper < AUTOCONTRAST_MIN_RANGE
    scale = torch.where(flat_enough, sign, sign / span).unsqueeze(1)
    shift = torch.where(flat_enough, flip, (flip - paper) / span).unsqueeze(1)
    return torch.addcmul(shift, flat, scale).clamp(0, 1).view_as(x)
