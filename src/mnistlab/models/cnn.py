"""The classic tutorial convnet (Keras / TensorFlow "Convolutional Neural Network" tutorial), exactly.

    Conv 32@3x3 + ReLU -> MaxPool 2 -> Conv 64@3x3 + ReLU -> MaxPool 2 -> Conv 64@3x3 + ReLU
    -> Flatten -> Dense 64 + ReLU -> Dense num_classes
    28x28 -> 26 -> 13 -> 11 -> 5 -> 3: 64*3*3 = 576 features into Dense 64

93,322 parameters for 1 channel and 10 classes, the figure in the Keras model summary.
The head is the final Dense; Dense 64 belongs to the last block.
"""

from __future__ import annotations

from torch import nn

from mnistlab.models.base import Classifier, require
from mnistlab.models.registry import register_model


@register_model("cnn", "the classic Keras/PyTorch tutorial convnet: 3 conv layers, dense 64 (93k params)")
def cnn(
    *, in_channels: int = 1, num_classes: int = 10, image_size: int = 28, dropout: float = 0.0
) -> Classifier:
    """The tutorial convnet; ``dropout`` applies between Dense 64 and the head."""
    side = ((image_size - 2) // 2 - 2) // 2 - 2  # valid 3x3 convs take 2, pools halve (floor)
    require(side >= 1, f"cnn needs image_size >= 22, got {image_size}", "resize the images or use 'mlp'")
    require(0.0 <= dropout < 1.0, f"dropout must be in [0, 1), got {dropout}", "e.g. dropout=0.5")
    body = {
        "conv1": nn.Sequential(nn.Conv2d(in_channels, 32, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        "conv2": nn.Sequential(nn.Conv2d(32, 64, 3), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        "conv3": nn.Sequential(nn.Conv2d(64, 64, 3), nn.ReLU(inplace=True)),
        # [B, 64, side, side] -> [B, 64*side*side] -> [B, 64]
        "dense": nn.Sequential(nn.Flatten(), nn.Linear(64 * side * side, 64), nn.ReLU(inplace=True)),
    }
    return Classifier(body, 64, num_classes, dropout=dropout)
