"""`mnistlab export`: write a model as ONNX, TorchScript, ORT or ExecuTorch and check it against eager PyTorch."""

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
  mnistlab export runs/my-run --format ort --out model.ort               # ONNX Runtime Mobile (phones)
  mnistlab export runs/my-run --format ort --int8 --out model-int8.ort
  mnistlab export runs/my-run --format executorch --out model.pte       # ExecuTorch, XNNPACK backend
  mnistlab predict model.onnx digits/        # predict and serve take the .onnx file directly

the graph takes `pixels`: uint8 [N, 1, 28, 28] (MNIST-style preprocessed, 0 background, 255 ink)
and returns `logits` and `probabilities`, float32 [N, classes]; normalisation is inside, the batch
size is dynamic, class names and preprocessing are in the file's metadata. After writing, the
file is compared with eager PyTorch on the model's test set (all images unless --check-images)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab export`."""
    p = sub.add_parser("export", help="export a model to ONNX, TorchScript, or for phones (ORT, ExecuTorch)",
                       description="Export a run directory or artifact to ONNX, TorchScript, ONNX Runtime's ORT format "
                                   "or ExecuTorch, with a parity check.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory or a folder with model.json + model.safetensors")
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript", "ort", "executorch"],
                   help="file format (default onnx); ort and executorch are for phones")
    p.add_argument("--out", required=True, metavar="PATH", help="the file to write")
    p.add_argument("--int8", action="store_true", help="ONNX and ORT: quantize to int8, calibrated on training images")
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
    """Export MODEL to --out, print the parity report; exit 1 when the float graph differs from eager."""
    from mnistlab.export import MAX_FLOAT_DIFF, ExportOptions, export_model
    from mnistlab.export_mobile import MOBILE_FORMATS, export_mobile

    options = ExportOptions(fmt=args.format, int8=args.int8, force=args.force, check_images=args.check_images,
                            calibration_images=args.calibration_images, data_dir=args.data_dir)
    export = export_mobile if args.format in MOBILE_FORMATS else export_model
    result = export(args.model, Path(args.out), options, note=lambda text: print(f"note: {text}", file=sys.stderr))
    report = result.to_dict()
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report, result.arch)
    if not result.parity_ok:
        print(f"error: the exported graph differs from eager PyTorch by up to {result.parity.max_logit_diff:.2g} "
              f"(limit {MAX_FLOAT_DIFF:g}); report this with --debug output", file=sys.stderr)
        return 1
    return 0


def print_report(report: dict, arch: str) -> None:
    """The export report as a few readable lines."""
    p = report["parity"]
    kb = report["bytes"] / 1024
    batch = "1" if report["format"] == "executorch" else "N"  # a .pte takes one image per call
    print(f"wrote {report['out']} ({report['format']}{', int8' if report['int8'] else ''}, {kb:,.0f} KB, {arch}; "
          f"input pixels uint8 [{batch}, 1, 28, 28], outputs logits and probabilities)")
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
