"""Fully connected models: softmax regression (``linear``) and a multi-layer perceptron (``mlp``)."""

from __future__ import annotations

from torch import nn

from mnistlab.models.base import Classifier, flat_size, require
from mnistlab.models.registry import register_model


@register_model("linear", "softmax regression: flattened pixels -> one linear layer")
def linear(*, in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> Classifier:
    """Multinomial logistic regression; the body only flattens ``[B, C, S, S]`` -> ``[B, C*S*S]``."""
    require(image_size >= 1, f"image_size must be positive, got {image_size}", "e.g. image_size=28")
    return Classifier({"flatten": nn.Flatten()}, flat_size(in_channels, image_size), num_classes)


@register_model("mlp", "multi-layer perceptron: flattened pixels -> hidden ReLU layers -> linear head")
def mlp(
    *,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: int = 28,
    hidden: tuple[int, ...] = (512, 256),
    dropout: float = 0.0,
) -> Classifier:
    """One block per hidden layer (Linear -> ReLU -> Dropout); the first block also flattens."""
    require(image_size >= 1, f"image_size must be positive, got {image_size}", "e.g. image_size=28")
    require(
        all(h >= 1 for h in hidden),
        f"hidden sizes must be positive, got {list(hidden)}",
        "e.g. hidden=[512, 256]",
    )
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.2")
    width = flat_size(in_channels, image_size)
    body: dict[str, nn.Module] = {}
    if not hidden:
        body["flatten"] = nn.Flatten()
    for i, h in enumerate(hidden):
        layers = [nn.Flatten()] if i == 0 else []  # [B, C, S, S] -> [B, C*S*S]
        layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
        if i < len(hidden) - 1:  # the last hidden layer's dropout is the head's
            layers.append(nn.Dropout(dropout))
        body[f"fc{i + 1}"] = nn.Sequential(*layers)
        width = h
    return Classifier(body, width, num_classes, dropout=dropout)
