"""The one interface every model answers: a body of blocks, a pooled feature vector, a linear head.

    logits = head(dropout(pool(body(x))))

``body`` is an ``nn.Sequential`` of stages from input to output; ``blocks()`` returns them in
order, so partial fine-tuning ("last N blocks trainable") and discriminative learning rates
work the same way on every model. ``pool`` holds no parameters; every parameter outside the
head lives in exactly one block.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from mnistlab.errors import ModelError


class Classifier(nn.Module):
    """An image classifier: ``[B, C, H, W]`` float input -> ``[B, num_classes]`` logits.

    Built by the registry (``create_model``), which also sets ``arch_name`` and ``arch_args``
    so that ``create_model(model.arch_name, **model.arch_args)`` rebuilds the same architecture.
    """

    def __init__(
        self,
        body: dict[str, nn.Module],
        num_features: int,
        num_classes: int,
        *,
        pool: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(OrderedDict(body))
        self.pool = pool if pool is not None else nn.Identity()
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        # Set by the registry after building; plain attributes, not part of the state_dict.
        self.arch_name: str = ""
        self.arch_args: dict[str, Any] = {}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features before the head: ``[B, C, H, W]`` -> ``[B, num_features]``."""
        return self.pool(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: ``[B, C, H, W]`` -> ``[B, num_classes]``."""
        return self.head(self.head_drop(self.forward_features(x)))

    def blocks(self) -> list[nn.Module]:
        """The body's stages in order from input to output (the head excluded)."""
        return list(self.body)

    def reset_head(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes."""
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ModelError(
                f"num_classes must be a positive integer, got {num_classes!r}",
                hint="pass the number of classes in the new dataset, e.g. 26",
            )
        old = self.head
        self.head = nn.Linear(old.in_features, num_classes, device=old.weight.device, dtype=old.weight.dtype)
        self.arch_args["num_classes"] = num_classes

    @property
    def num_features(self) -> int:
        """Width of the feature vector the head reads."""
        return self.head.in_features

    @property
    def num_classes(self) -> int:
        """Number of classes the head predicts."""
        return self.head.out_features

    @property
    def uses_batchnorm(self) -> bool:
        """Whether any BatchNorm layer is present (matters for DDP: use SyncBatchNorm or not)."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.modules())


def flat_size(in_channels: int, image_size: int) -> int:
    """Number of values in one flattened ``[C, S, S]`` image."""
    return in_channels * image_size * image_size


def require(condition: bool, message: str, hint: str) -> None:
    """Raise ``ModelError(message, hint=hint)`` unless ``condition`` holds (for builder knobs)."""
    if not condition:
        raise ModelError(message, hint=hint)
