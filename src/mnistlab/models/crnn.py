"""A small convolutional-recurrent sequence model for reading a line of characters (CTC).

    line image [B, 1, H=32, W] (ink bright on black, height fixed, width following the string)
    -> conv-BN-ReLU widths[0], MaxPool 2      -> [B, w0, 16, W/2]
    -> conv-BN-ReLU widths[1], MaxPool 2      -> [B, w1, 8, W/4]
    -> 2 x conv-BN-ReLU widths[2], MaxPool (2, 1) -> [B, w2, 4, W/4]
    -> conv (4 x 1) + BN + ReLU: the height to one row -> [B, w2, 1, W/4] -> frames [B, T=W/4, w2]
    -> bidirectional LSTM, ``hidden`` per direction  -> [B, T, 2 * hidden]
    -> Linear                                  -> [B, T, num_classes + 1]

Class 0 of the output is the CTC blank; class k + 1 is the card's k-th character. One frame
covers ``STRIDE`` = 4 input columns. The default widths (16, 32, 64) and hidden 64 make about
130k parameters and ~27 M multiply-adds for a 5-digit string (W ~ 160), so it trains on a CPU.

It is not one of the registry's classifiers (its output is a sequence, not one label): it is
built from the card's ``arch_args`` by :func:`build_crnn`, which the sequence reader uses.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mnistlab.models.base import require

ARCH = "crnn"
STRIDE = 4  # input columns per output frame
HEIGHT = 32  # the line image's default height, pixels


def _conv(c_in: int, c_out: int, kernel: tuple[int, int] = (3, 3), padding: tuple[int, int] = (1, 1)) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class CRNN(nn.Module):
    """Line image ``[B, 1, height, W]`` -> frame logits ``[B, W // 4, num_classes + 1]`` (blank first)."""

    arch_name = ARCH

    def __init__(self, *, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64), hidden: int = 64,
                 height: int = HEIGHT) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        require(len(widths) == 3 and min(widths) >= 1, f"widths must be three positive numbers, got {list(widths)}",
                "e.g. widths=[16, 32, 64]")
        require(hidden >= 1 and num_classes >= 1, f"hidden and num_classes must be positive, got {hidden}, {num_classes}",
                "e.g. hidden=64")
        require(height >= 8 and height % 8 == 0, f"height must be a multiple of 8, got {height}", "e.g. height=32")
        self.height = height
        self.arch_args: dict[str, Any] = {"num_classes": num_classes, "widths": list(widths), "hidden": hidden,
                                          "height": height}
        w0, w1, w2 = widths
        self.features = nn.Sequential(
            *_conv(1, w0), nn.MaxPool2d(2),
            *_conv(w0, w1), nn.MaxPool2d(2),
            *_conv(w1, w2), *_conv(w2, w2), nn.MaxPool2d((2, 1)),
            *_conv(w2, w2, (height // 8, 1), (0, 0)),
        )
        self.rnn = nn.LSTM(w2, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, num_classes + 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Frame logits; ``lengths`` (frames per line, for a padded batch) keeps padding out of the LSTM."""
        if x.shape[-2] != self.height:
            raise ValueError(f"this crnn takes lines {self.height} pixels high, got {tuple(x.shape)}")
        f = self.features(x)  # [B, C, 1, T]
        f = f.squeeze(2).transpose(1, 2)  # [B, T, C]
        if lengths is not None:
            packed = nn.utils.rnn.pack_padded_sequence(f, lengths.cpu().clamp(min=1), batch_first=True,
                                                       enforce_sorted=False)
            out, _ = self.rnn(packed)
            out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=f.shape[1])
        else:
            out, _ = self.rnn(f)
        return self.head(out)  # [B, T, num_classes + 1]


def frames_for(width: int) -> int:
    """Output frames for an input line ``width`` pixels wide."""
    return width // STRIDE


def build_crnn(arch_args: dict[str, Any]) -> CRNN:
    """The model a card's ``arch_args`` describe (untrained)."""
    args = dict(arch_args)
    if "widths" in args:
        args["widths"] = tuple(args["widths"])
    return CRNN(**args)
