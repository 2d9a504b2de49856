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


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Model input from images: uint8 [B, C, H, W] -> float32 (x/255 - mean)/std.

    Floating-point input is taken to be already scaled to [0, 1].
    """
    x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
    return (x - mean) / std
