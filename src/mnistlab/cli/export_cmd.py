"""`mnistlab export`: write a model as ONNX or TorchScript and check it against eager PyTorch."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab export runs/train-20260101-120000 --format onnx --out model.onnx
  mnistlab export runs/my-run --format onnx --int8 --out model-int8.onnx   # static int8, accuracy change reported
  mnistlab export runs/my-run --format torchscript --out model.pt
  mnistlab predict model.onnx digits/        # predict and serve take the .onnx file directly

the graph takes `pixels`: uint8 [N, 1, 28, 28] (MNIST-style preprocessed, 0 background, 255 ink)
and returns `logits` and `probabilities`, float32 [N, classes]; normalisation is inside, the batch
size is dynamic, class names and preprocessing are in the file's metadata. After writing, the
file is compared with eager PyTorch on the model's test set (all images unless --check-images)."""

MAX_FLOAT_DIFF = 1e-3  # largest logit difference accepted for a float export before failing


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model to ONNX or TorchScript",
                       description="Export a run directory or artifact to ONNX or TorchScript, with a parity check.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory or a folder with model.json + model.safetensors")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"], help="file format (default onnx)")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--int8", action="store_true", help="ONNX only: quantize to int8, calibrated on training images")
    p.add_argument("--force", action="store_true", help="replace PATH if it exists")
    p.add_argument("--check-images", type=int, default=None, metavar="N",
                   help="parity check on the first N test images (default: all)")
    p.add_argument("--calibration-images", type=int, default=1000, metavar="N",
                   help="with --int8: training images used to calibrate (default 1000)")
    p.add_argument("--data-dir", metavar="DIR", help="where to look first for the model's dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object with the parity figures")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.artifact import load_artifact
    from mnistlab.errors import ConfigError
    from mnistlab.export import check_parity, export_onnx, export_torchscript, quantize_onnx

    out = Path(args.out)
    if args.int8 and args.format != "onnx":
        raise ConfigError("--int8 is for --format onnx", hint="drop --int8 or export to ONNX")
    if out.exists() and not args.force:
        raise ConfigError(f"'{out}' already exists", hint="choose another --out, or add --force to replace it")
    if out.is_dir():
        raise ConfigError(f"'{out}' is a folder", hint="give a file name such as model.onnx")
    model, card = load_artifact(args.model)
    pixels, labels, source = test_images(card, args)
    report: dict = {"out": str(out), "format": args.format, "int8": args.int8}
    if args.format == "torchscript":
        export_torchscript(model, card, out)
    else:
        export_onnx(model, card, out)
    float_parity = check_parity(model, card, out, args.format, pixels, labels, source)
    report["parity"] = float_parity.to_dict()
    if args.int8:
        calibration = calibration_images(card, args)
        quantize_onnx(out, out, calibration, card)
        report["int8_parity"] = check_parity(model, card, out, "onnx", pixels, labels, source).to_dict()
    report["bytes"] = out.stat().st_size
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report, card.arch)
    if float_parity.max_logit_diff > MAX_FLOAT_DIFF:
        print(f"error: the exported graph differs from eager PyTorch by up to {float_parity.max_logit_diff:.2g} "
              f"(limit {MAX_FLOAT_DIFF:g}); report this with --debug output", file=sys.stderr)
        return 1
    return 0


def test_images(card, args: argparse.Namespace):
    """(uint8 pixels [N, 1, S, S], labels or None, description) for the parity check."""
    import torch

    from mnistlab.data.dataset import load_dataset
    from mnistlab.errors import DataError

    size = card.preprocess.size
    try:
        if not card.dataset:
            raise DataError("the model card names no dataset")
        data = load_dataset(card.dataset, "test", data_dir=args.data_dir, download=False, progress=False)
        if data.images.shape[1:] != (card.preprocess.channels, size, size):
            raise DataError(f"{card.dataset} images are {list(data.images.shape[1:])}")
        n = len(data) if args.check_images is None else min(args.check_images, len(data))
        labels = data.labels[:n] if data.classes == card.classes else None
        return data.images[:n], labels, f"{card.dataset} test"
    except DataError as err:
        print(f"note: parity checked on random pixels, not real images ({err})", file=sys.stderr)
        g = torch.Generator().manual_seed(0)
        n = args.check_images or 1000
        return torch.randint(0, 256, (n, card.preprocess.channels, size, size), generator=g, dtype=torch.uint8), None, "random pixels"


def calibration_images(card, args: argparse.Namespace):
    """uint8 pixels [M, 1, S, S] from the training set (a seeded random sample) for int8 calibration."""
    import torch

    from mnistlab.data.dataset import load_dataset
    from mnistlab.errors import DataError

    if not card.dataset:
        raise DataError("--int8 needs calibration images, but the model card names no dataset")
    data = load_dataset(card.dataset, "train", data_dir=args.data_dir, progress=False)
    g = torch.Generator().manual_seed(0)
    index = torch.randperm(len(data), generator=g)[: args.calibration_images]
    return data.images[index].numpy()


def print_report(report: dict, arch: str) -> None:
    p = report["parity"]
    kb = report["bytes"] / 1024
    print(f"wrote {report['out']} ({report['format']}{', int8' if report['int8'] else ''}, {kb:,.0f} KB, {arch}; "
          "input pixels uint8 [N, 1, 28, 28], outputs logits and probabilities)")
    print(f"parity with eager PyTorch on {p['images']:,} {p['source']} images: identical predictions "
          f"{p['same_predictions']:.2%}, largest logit difference {p['max_logit_diff']:.2g}")
    if p["accuracy_eager"] is not None:
        print(f"accuracy: eager {p['accuracy_eager']:.4f}, exported float {p['accuracy_export']:.4f}")
    q = report.get("int8_parity")
    if q:
        change = ""
        if q["accuracy_export"] is not None:
            delta = 100 * (q["accuracy_export"] - q["accuracy_eager"])
            change = f"; accuracy {q['accuracy_eager']:.4f} -> {q['accuracy_export']:.4f} ({delta:+.2f} points)"
        print(f"int8: identical predictions {q['same_predictions']:.2%}, largest logit difference "
              f"{q['max_logit_diff']:.2g}{change}")
