"""A small convnet built for speed: three conv-BN-ReLU-pool stages, then a linear head.

    28x28 -> [(conv 3x3 (pad 1) + BN + ReLU) x depth -> MaxPool 2] x 3 -> 28 -> 14 -> 7 -> 3
    -> Flatten: widths[-1] * 3 * 3 features -> Linear num_classes

Two knobs make a training step cheaper on a CPU (the default recipe uses both; measured in
benchmarks/README.md): ``pool_first`` max-pools each stage's last conv before its BatchNorm and
ReLU, which then touch a quarter of the values (the layer order of the fast GPU MNIST runs), and
``strided_stem`` halves the side in the first stage by a stride-2 conv instead of a max-pool, so
neither the widest activation (16 x 28 x 28) nor its pooling is ever made. ``dct_stem`` makes the
first conv a fixed bank of the lowest-frequency 3x3 DCT filters and their negatives (as the
whitened first layers of fast CIFAR-10 runs), frozen with its BatchNorm, so no gradient flows
into stage 1 or through stage 2's input; the default recipe leaves it off (it cost 1.4 points of
the MNIST-C proxy).

The default widths (16, 32, 64) cost about 1.9 MFLOP-MACs a forward pass per 28x28 image, a third
less than the tutorial ``cnn``, and BatchNorm lets it take a high learning rate, so one epoch
is enough for 99% on MNIST. It is the model of the default recipe ``mnist-fast``.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from mnistlab.models.base import Classifier, require
from mnistlab.models.registry import register_model


def conv_bn_relu_pool(c_in: int, c_out: int, depth: int = 1, *, pool_first: bool = False,
                      stride: int = 1) -> nn.Sequential:
    """``depth`` x [conv 3x3 (no bias, the BN has one) -> BatchNorm -> ReLU], then MaxPool 2 (halves the side).

    ``pool_first``: the last conv is pooled before its BatchNorm and ReLU. ``stride=2``: the first
    conv halves the side itself and the stage has no pool.
    """
    pool = stride == 1
    layers: list[nn.Module] = []
    for i in range(depth):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, stride=stride if i == 0 else 1, padding=1, bias=False))
        if pool and pool_first and i == depth - 1:
            layers.append(nn.MaxPool2d(2))
        layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if pool and not pool_first:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def dct_filters(count: int, in_channels: int = 1) -> torch.Tensor:
    """The ``count`` lowest-frequency 3D DCT-II basis filters over (channel, 3, 3), unit norm: [count, C, 3, 3].

    Ordered by total frequency; the first is the constant (mean) filter. A frozen stem of these
    and their negatives keeps everything a learned 3x3 stem could pass on, up to the dropped
    highest frequencies: ReLU(f) - ReLU(-f) = f.
    """
    def cosines(n: int, k: int) -> torch.Tensor:
        return torch.cos(math.pi * (2 * torch.arange(n) + 1) * k / (2 * n))

    freqs = sorted(itertools.product(range(in_channels), range(3), range(3)), key=lambda f: (sum(f), f))[:count]
    bank = [cosines(in_channels, c).view(-1, 1, 1) * cosines(3, u).view(1, -1, 1) * cosines(3, v).view(1, 1, -1)
            for c, u, v in freqs]
    return torch.stack([f / f.norm() for f in bank])


@register_model("fastcnn", "fast convnet: 3 conv-BN-ReLU-pool stages, flatten, linear (~30k params); the default")
def fastcnn(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    widths: tuple[int, ...] = (16, 32, 64),
    depth: int = 1,
    dropout: float = 0.0,
    pool_first: bool = False,
    strided_stem: bool = False,
    dct_stem: bool = False,
) -> Classifier:
    """One stage of ``depth`` convs per entry of ``widths``; each stage halves the side (flatten size follows).

    ``pool_first``, ``strided_stem`` and ``dct_stem`` make a step cheaper (module docstring); all off is the
    original net.
    """
    require(len(widths) >= 1 and min(widths) >= 1, f"widths must be positive, got {list(widths)}",
            "e.g. widths=[16, 32, 64]")
    strides = [2 if i == 0 and strided_stem else 1 for i in range(len(widths))]  # 1: the stage max-pools
    side = image_size
    for stride in strides:
        side = (side + 1) // 2 if stride == 2 else side // 2  # a stride-2 conv (pad 1) rounds up
    require(side >= 1, f"fastcnn with {len(widths)} stages needs image_size >= {2 ** len(widths)}, got {image_size}",
            "use fewer widths or larger images")
    require(depth >= 1, f"depth must be at least 1, got {depth}", "e.g. depth=2 (convs per stage)")
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.1")
    require(not dct_stem or (widths[0] % 2 == 0 and widths[0] // 2 <= 9 * in_channels),
            f"dct_stem needs an even first width of at most {18 * in_channels} (filters and their negatives), "
            f"got {widths[0]}", "e.g. widths=[16, 32, 64], or dct_stem=false")
    body: dict[str, nn.Module] = {}
    c_in = in_channels
    for i, (width, stride) in enumerate(zip(widths, strides, strict=True)):
        body[f"stage{i + 1}"] = conv_bn_relu_pool(c_in, width, depth, pool_first=pool_first, stride=stride)
        c_in = width
    pool = nn.Flatten()  # [B, C, side, side] -> [B, C * side * side]; keeps where the strokes are
    model = Classifier(body, c_in * side * side, num_classes, pool=pool, dropout=dropout)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    if dct_stem:
        stem = body["stage1"]
        bank = dct_filters(widths[0] // 2, in_channels)
        stem[0].weight.data.copy_(torch.cat([bank, -bank]))
        stem.requires_grad_(False)  # the optimizer takes only what trains; BatchNorm still normalises by batch
    return model
