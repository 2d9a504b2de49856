"""LeNet-5 (LeCun et al., 1998), with a modern choice of activation and pooling.

conv 6@5x5 pad 2 -> pool 2 -> conv 16@5x5 -> pool 2 -> fc 120 -> fc 84 -> head
28x28 -> 28 -> 14 -> 10 -> 5: 16*5*5 = 400 features into fc 120
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from mnistlab.models.base import Classifier, require
from mnistlab.models.registry import register_model

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
}
POOLS: dict[str, type[nn.Module]] = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d}


@register_model("lenet5", "LeNet-5: two 5x5 conv+pool stages, then 120 and 84 unit layers")
def lenet5(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    activation: Literal["relu", "tanh", "sigmoid", "gelu"] = "relu",
    pool: Literal["max", "avg"] = "max",
    dropout: float = 0.0,
) -> Classifier:
    """LeNet-5; ``activation="tanh", pool="avg"`` is closest to the 1998 network."""
    side = (image_size // 2 - 4) // 2  # pad-2 conv keeps S, pool halves, 5x5 conv takes 4, pool halves
    require(side >= 1, f"lenet5 needs image_size >= 12, got {image_size}", "resize the images or use 'mlp'")
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.2")
    act, pooling = ACTIVATIONS[activation], POOLS[pool]
    body = {
        "conv1": nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), act(), pooling(2)),
        "conv2": nn.Sequential(nn.Conv2d(6, 16, 5), act(), pooling(2)),
        "fc1": nn.Sequential(
            nn.Flatten(), nn.Linear(16 * side * side, 120), act()
        ),  # [B, 16, s, s] -> [B, 120]
        "fc2": nn.Sequential(nn.Linear(120, 84), act()),
    }
    return Classifier(body, 84, num_classes, dropout=dropout)
