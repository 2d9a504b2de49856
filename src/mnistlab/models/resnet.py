"""A small residual network for 28x28 inputs (He et al., 2016, BasicBlock variant).

    stem conv 3x3 -> stage 1 (stride 1) -> stage 2 (stride 2) -> ... -> global average pool -> head
    28x28 with the default 3 stages: 28 -> 28 -> 14 -> 7, then pooled to ``widths[-1]`` features.

Any input size works (the pool is adaptive), so there is no ``image_size`` argument.
"""

from __future__ import annotations

import torch
from torch import nn

from mnistlab.models.base import Classifier, require
from mnistlab.models.registry import register_model


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias, the BN has one) followed by BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``; the shortcut projects when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, stride=stride)
        self.conv2 = conv_bn(c_out, c_out)
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.relu(self.conv1(x)))
        return self.relu(out + self.shortcut(x))


@register_model("resnet", "small ResNet: 3x3 stem, stages of BasicBlocks, global average pool (~0.3M params)")
def resnet(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    widths: tuple[int, ...] = (32, 64, 128),
    depths: tuple[int, ...] = (1, 1, 1),
    dropout: float = 0.0,
) -> Classifier:
    """ResNet with one stage per entry of ``widths``/``depths``; stride 2 between stages."""
    require(
        len(widths) == len(depths) >= 1,
        f"widths and depths need the same, non-zero length, got {list(widths)} and {list(depths)}",
        "e.g. widths=[32, 64, 128] depths=[1, 1, 1]",
    )
    require(
        min(widths) >= 1 and min(depths) >= 1,
        f"widths and depths must be positive, got {list(widths)} and {list(depths)}",
        "e.g. widths=[32, 64, 128] depths=[1, 1, 1]",
    )
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.2")
    body: dict[str, nn.Module] = {
        "stem": nn.Sequential(*conv_bn(in_channels, widths[0]), nn.ReLU(inplace=True))
    }
    c_in = widths[0]
    for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
        stride = 1 if i == 0 else 2
        blocks = [BasicBlock(c_in if j == 0 else width, width, stride if j == 0 else 1) for j in range(depth)]
        body[f"stage{i + 1}"] = nn.Sequential(*blocks)
        c_in = width
    pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # [B, C, h, w] -> [B, C]
    model = Classifier(body, widths[-1], num_classes, pool=pool, dropout=dropout)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


@register_model("resnet-wide", "ResNet preset: widths 64-128-256, two blocks per stage (~2.8M params)")
def resnet_wide(*, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> Classifier:
    """``resnet`` with ``widths=(64, 128, 256)`` and ``depths=(2, 2, 2)``."""
    return resnet(
        in_channels=in_channels,
        num_classes=num_classes,
        widths=(64, 128, 256),
        depths=(2, 2, 2),
        dropout=dropout,
    )
