"""How legible the overlap level is: 5-digit overlapping strings read blind from their pictures, against the readers.

    python read_blind_probe.py make RUN DIR        # DIR/sheet{0..3}.png to read (10 strings each), DIR/NN.png, DIR/truth.json
    python read_blind_probe.py score RUN DIR ANSWERS.json [READER_RUN ...]

``make`` draws 40 five-digit strings at the overlap level from RUN's *validation* digits (seeded,
the test set not used) and writes the sheets to read and the truths, which stay unopened until the
answers (a JSON list of 40 strings, in sheet order) are written down. ``score`` prints whole-string
and per-character accuracy of the answers and of each reader on the same pictures, and every string.
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from probe_strings import digits

from mnistlab.data.strings import edit_distance, make_string
from mnistlab.read_ctc import CtcReader

COUNT, PER_SHEET, SHEET_HEIGHT = 40, 10, 72


def make(run: str, out: Path) -> None:
    _, _, images, labels = digits(run)
    rng = np.random.default_rng([2026, 12, 7])
    items = [make_string(images, labels, 5, "overlap", rng) for _ in range(COUNT)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "truth.json").write_text(json.dumps([truth for _, truth in items]))
    rows = []
    for i, (img, _) in enumerate(items):
        img.save(out / f"{i:02d}.png")
        g = img.convert("L")
        g = g.resize((max(1, g.width * SHEET_HEIGHT // g.height), SHEET_HEIGHT), Image.BILINEAR)
        row = Image.new("L", (520, SHEET_HEIGHT + 8), 255)
        row.paste(g.crop((0, 0, min(g.width, 520), SHEET_HEIGHT)), (0, 4))
        rows.append(np.asarray(row))
    for k in range(0, COUNT, PER_SHEET):
        Image.fromarray(np.concatenate(rows[k:k + PER_SHEET])).save(out / f"sheet{k // PER_SHEET}.png")


def score(out: Path, answers: list[str], readers: list[str]) -> None:
    truth = json.loads((out / "truth.json").read_text())
    readings = {"blind": answers}
    for run in readers:
        reader = CtcReader.load(run)
        readings[Path(run).name] = [reader.read(Image.open(out / f"{i:02d}.png")).text for i in range(COUNT)]
    for name, got in readings.items():
        right = sum(g == t for g, t in zip(got, truth, strict=True))
        chars = sum(max(0, len(t) - edit_distance(g, t)) for g, t in zip(got, truth, strict=True)) / (5 * COUNT)
        print(f"{name:14s} {right}/{COUNT} strings, {100 * chars:.1f}% characters")
    for i, t in enumerate(truth):
        print(i, t, *(got[i] for got in readings.values()))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], Path(sys.argv[3]))
    else:
        score(Path(sys.argv[3]), json.loads(Path(sys.argv[4]).read_text()), sys.argv[5:])
