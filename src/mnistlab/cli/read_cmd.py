"""`mnistlab read`: read the handwritten digit string in each image, left to right."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab train read-ctc --out runs/reader                    # the sequence reader (about 15 min on 1 CPU core)
  mnistlab read runs/reader postcode.png                       # text, confidence, and each character
  mnistlab read runs/my-run scans/ --json                      # one JSON object per image
  mnistlab read runs/my-run cheque.jpg --expect-length 6       # exactly six characters
  mnistlab read runs/my-run form.png --charset 0123456789 --out boxed/   # also write boxed PNGs

each image may be any size, mode and polarity (dark ink on light paper or light on dark). A run
of `mnistlab train read-ctc` reads the whole line with its sequence model (CNN + CTC); a
classifier run reads it by cutting the string into characters, each prepared the MNIST way and
classified (benchmarks/README.md compares the two). The JSON
object is {"path", "text", "confidence", "chars": [{"char", "confidence", "box": [x0, y0, x1, y1]}]}
(box in the image's pixels, exclusive ends; confidence of the string = product over characters).
A file that cannot be read is reported and skipped; the exit code is then 1."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab read`."""
    p = sub.add_parser("read", help="read handwritten digit strings (postal codes, amounts) from images",
                       description="Read the string of characters in each image, left to right.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a sequence-reader run (train read-ctc), or a classifier's run "
                   "directory, folder with model.json, .onnx or .ort file")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of text")
    p.add_argument("--expect-length", type=int, metavar="N", help="read exactly N characters from each image")
    p.add_argument("--charset", metavar="CHARS",
                   help="allowed characters: digits (default), letters, all, or the characters themselves")
    p.add_argument("--out", metavar="DIR", help="write each image with its boxes and reading drawn (PNG) here")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read every input image and print the readings."""
    from mnistlab.data.images import load_image
    from mnistlab.errors import ConfigError, MnistlabError
    from mnistlab.fileio import atomic_path
    from mnistlab.predict import find_images
    from mnistlab.read import draw_reading
    from mnistlab.read_ctc import load_reader

    if args.expect_length is not None and args.expect_length < 1:
        raise ConfigError("--expect-length must be at least 1")
    reader = load_reader(args.model, charset=args.charset)
    files = find_images(args.inputs)
    if not files:
        raise MnistlabError(f"no image files found in {', '.join(args.inputs)}",
                            hint="give image files (png, jpg, bmp, gif, tif, webp) or folders holding them")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in files:
        try:
            img = load_image(path)
            reading = reader.read(img, name=str(path), expect_length=args.expect_length)
        except MnistlabError as err:
            failed += 1
            print(f"error: {err}", file=sys.stderr)
            continue
        if args.json:
            print(json.dumps(reading.to_dict()), flush=True)
        else:
            chars = "  ".join(f"{c.char}:{c.confidence:.2f}" for c in reading.chars)
            print(f"{path}  {reading.text or '(nothing)'}  confidence {reading.confidence:.3f}  [{chars}]", flush=True)
        if out is not None:
            with atomic_path(out / f"{path.stem}.read.png") as tmp:
                draw_reading(img, reading).save(tmp, format="PNG")
    return 1 if failed else 0
