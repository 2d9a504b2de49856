"""Read a handwritten string with the sequence model: the whole line at once, no cuts.

``CtcReader`` prepares an image the one way its model was trained on
(``StringImage.from_image(img).line(height)``: cleaned, upright, ink white on black, a fixed
height, the width following), runs the ``crnn`` over it and decodes the frames (``models.ctc``):
the likeliest string of allowed characters (prefix beam search, which sums each string's
alignments), or with ``expect_length`` the best path holding exactly that many. A character's
confidence is the highest probability its class has over its frames; the string's is the product. Its box is the ink between the midpoints to its neighbours' frames,
mapped back to the input image's pixels.

``load_reader`` picks the reader a model was trained for: this one for a ``crnn`` run
(``mnistlab train read-ctc``), the segmentation reader (``read.StringReader``) for a classifier.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from mnistlab.artifact import WEIGHTS, ModelCard, read_card, resolve_artifact
from mnistlab.data.images import ImageSource
from mnistlab.data.segment import StringImage
from mnistlab.errors import ModelError
from mnistlab.models.crnn import ARCH, STRIDE, build_crnn
from mnistlab.models.ctc import Span, confidences, decode
from mnistlab.predict import is_onnx_file, load_predictor
from mnistlab.read import CharReading, Reading, StringReader, open_string_image, resolve_charset


class CtcReader:
    """Reads strings with a ``crnn`` artifact; ``read`` answers as ``StringReader.read`` does."""

    def __init__(self, model: torch.nn.Module, card: ModelCard, *, charset: str | None = None, name: str = "crnn") -> None:
        self.model, self.card, self.name = model.eval(), card, name
        self.classes = list(card.classes)
        self.height = int(card.preprocess.size)
        self.allowed = resolve_charset(charset, self.classes)

    @classmethod
    def load(cls, path: str | os.PathLike, *, charset: str | None = None) -> CtcReader:
        """The reader of a ``crnn`` run directory or artifact folder (no pickle: safetensors + model.json)."""
        directory = resolve_artifact(path)
        card = read_card(directory)
        if card.arch != ARCH:
            raise ModelError(f"'{path}' holds a {card.arch} classifier, not a sequence reader",
                             hint="read with it through load_reader, or train one: mnistlab train read-ctc")
        model = build_crnn(card.arch_args)
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        return cls(model, card, charset=charset, name=directory.name)

    def with_charset(self, charset: str | None) -> CtcReader:
        """The same model reading only ``charset``."""
        return CtcReader(self.model, self.card, charset=charset, name=self.name)

    def read(self, source: ImageSource | Image.Image, *, name: str | None = None, expect_length: int | None = None,
             max_pixels: int | None = None) -> Reading:
        """Read one image (a path, bytes, a file object or a decoded PIL image)."""
        img, label = open_string_image(source, name, expect_length, max_pixels)
        work = StringImage.from_image(img, label=label)
        line = work.line(self.height)
        logp = self.frames(line.pixels)
        spans = decode(logp, self.allowed, expect_length)
        confs = confidences(logp, spans)
        chars = []
        for k, ((c, _, _), conf) in enumerate(zip(spans, confs, strict=True)):
            u0, u1 = _columns(spans, k, line.pixels.shape[1])
            box = work.box_of_columns(line.x0 + u0 * line.step, line.x0 + u1 * line.step)
            if box is None:  # no ink under the character's frames: the frames' own columns
                box = _frame_box(work, line, u0, u1)
            chars.append(CharReading(self.classes[c], conf, box))
        confidence = float(np.prod(confs)) if chars else 0.0
        return Reading(path=label, text="".join(ch.char for ch in chars), confidence=confidence, chars=chars)

    @torch.no_grad()
    def frames(self, pixels: np.ndarray) -> np.ndarray:
        """Log-probabilities [frames, classes + 1] (blank first) of one line image [height, W]."""
        x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))[None, None]  # [1, 1, H, W]
        return self.model(x).log_softmax(-1)[0].numpy()


def _columns(spans: list[Span], k: int, width: int) -> tuple[float, float]:
    """Line columns of character k: from the midpoint to the previous character's frames to the
    midpoint to the next one's (the line's edges for the first and the last)."""
    _, a, b = spans[k]
    left = 0.0 if k == 0 else STRIDE * (spans[k - 1][2] + 1 + a) / 2
    right = float(width) if k == len(spans) - 1 else STRIDE * (b + 1 + spans[k + 1][1]) / 2
    return left, right


def _frame_box(work: StringImage, line, u0: float, u1: float) -> tuple[int, int, int, int]:
    """The box of line columns u0..u1 over the line's full height, in input pixels."""
    ys = np.array([line.y0, line.y0 + line.pixels.shape[0] * line.step])
    xs = np.array([line.x0 + u0 * line.step, line.x0 + u1 * line.step])
    oy, ox = work.to_original(np.repeat(ys, 2), np.tile(xs, 2))
    return int(np.floor(ox.min())), int(np.floor(oy.min())), int(np.ceil(ox.max())), int(np.ceil(oy.max()))


def is_sequence_model(path: str | os.PathLike) -> bool:
    """True when ``path`` is a run or artifact of the sequence reader (a ``crnn`` card)."""
    if is_onnx_file(path):
        return False
    return read_card(path).arch == ARCH


def load_reader(path: str | os.PathLike, *, charset: str | None = None, device: str = "cpu",
                threads: int | None = None) -> CtcReader | StringReader:
    """The reader a model was trained for: ``CtcReader`` for a ``crnn`` run, else the segmentation
    reader over the classifier (a run, an artifact or an .onnx file)."""
    if is_sequence_model(path):
        if threads:
            torch.set_num_threads(threads)
        return CtcReader.load(path, charset=charset)
    return StringReader(load_predictor(path, device=device, threads=threads), charset=charset)
