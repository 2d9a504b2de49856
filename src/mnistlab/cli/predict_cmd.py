"""`mnistlab predict`: classify image files and folders, or write a Kaggle submission."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab predict runs/train-20260101-120000 seven.png scans/      # a table; folders are searched recursively
  mnistlab predict runs/my-run photos/ --top-k 3 --json              # one JSON object per line
  mnistlab predict model.onnx digits/                                # an exported graph, on ONNX Runtime
  mnistlab predict runs/my-run --kaggle test.csv --out submission.csv   # Kaggle ImageId,Label file

images are preprocessed the MNIST way (grayscale, ink white on black, cropped, longer side 20 px,
centred by mass in 28x28). A file that cannot be read is reported and skipped; the exit code is 1
when any failed."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab predict`."""
    p = sub.add_parser("predict", help="classify images with a trained or exported model",
                       description="Classify image files and folders with a run directory, artifact or .onnx file.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory, a folder with model.json, or an .onnx or .ort file")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="how many classes to list per image (default 3)")
    p.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    p.add_argument("--kaggle", metavar="CSV", help="a Kaggle digit-recognizer test.csv to predict")
    p.add_argument("--out", metavar="CSV", help="with --kaggle: the submission file to write (default submission.csv)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="images per forward pass (default 256)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict the class of each input image and print the results."""
    from mnistlab.errors import ConfigError
    from mnistlab.predict import load_predictor

    if args.top_k < 1 or args.batch_size < 1:
        raise ConfigError("--top-k and --batch-size must be at least 1")
    if bool(args.kaggle) == bool(args.inputs):
        raise ConfigError("give image files/folders, or --kaggle test.csv (not both)",
                          hint="e.g. `mnistlab predict runs/my-run digits/` or `--kaggle test.csv --out submission.csv`")
    if args.out and not args.kaggle:
        raise ConfigError("--out is for --kaggle submissions", hint="without --kaggle, redirect the output: > predictions.jsonl")
    predictor = load_predictor(args.model)
    if args.kaggle:
        return predict_kaggle(predictor, Path(args.kaggle), Path(args.out or "submission.csv"), args)
    return predict_files(predictor, args)


def predict_files(predictor, args: argparse.Namespace) -> int:
    """Predict every image named by args.inputs, printing as each batch finishes."""
    from mnistlab.errors import MnistlabError
    from mnistlab.predict import find_images

    files = find_images(args.inputs)
    if not files:
        raise MnistlabError(f"no image files found in {', '.join(args.inputs)}",
                            hint="give image files (png, jpg, bmp, gif, tif, webp) or folders holding them")
    width = min(60, max(len(str(f)) for f in files))
    if not args.json:
        print(f"{'path':<{width}}  {'label':>8}  {'prob':>6}  top {args.top_k}")
    failed = 0
    for start in range(0, len(files), args.batch_size):
        batch, pixels = [], []
        for path in files[start:start + args.batch_size]:
            try:
                pixels.append(predictor.prepare_source(path))
                batch.append(path)
            except MnistlabError as err:
                failed += 1
                report_failure(path, err, args.json)
        for path, pred in zip(batch, predictor.predict_pixels(pixels, args.top_k) if pixels else [], strict=True):
            if args.json:
                print(json.dumps({"path": str(path), **pred.to_dict()}))
            else:
                top = "  ".join(f"{t['label']} {t['probability']:.3f}" for t in pred.top_k)
                print(f"{str(path):<{width}}  {pred.label:>8}  {pred.probability:6.3f}  {top}")
    if failed:
        print(f"{failed} of {len(files)} files could not be predicted", file=sys.stderr)
    return 1 if failed else 0


def report_failure(path: Path, err: Exception, as_json: bool) -> None:
    """One line on stderr (and a JSON record on stdout with --json) for an unusable file."""
    print(f"skipped: {err}", file=sys.stderr)
    if as_json:
        print(json.dumps({"path": str(path), "error": str(err)}))


def predict_kaggle(predictor, csv: Path, out: Path, args: argparse.Namespace) -> int:
    """Write the Kaggle submission ``ImageId,Label`` (ImageId from 1) for a test CSV."""
    from mnistlab.data.dataset import load_dataset
    from mnistlab.errors import DataError
    from mnistlab.fileio import atomic_write_text

    data = load_dataset(f"csv:{csv}", "test")
    if data.images.shape[-1] != predictor.size:
        raise DataError(f"{csv} holds {data.images.shape[-1]}px images, the model expects {predictor.size}px")
    _, probs = predictor.run(data.images.numpy(), chunk=args.batch_size)
    labels = [predictor.classes[i] for i in probs.argmax(1).tolist()]
    lines = ["ImageId,Label"] + [f"{i},{label}" for i, label in enumerate(labels, start=1)]
    atomic_write_text(out, "\n".join(lines) + "\n")
    summary = {"images": len(labels), "out": str(out), "counts": {c: labels.count(c) for c in predictor.classes}}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"wrote {len(labels)} predictions to {out}")
    return 0
