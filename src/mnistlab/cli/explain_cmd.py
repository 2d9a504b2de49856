"""`mnistlab explain`: attribution maps (what the model looked at) for image files and folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.cli.main import add_common

METHODS = ("saliency", "integrated-gradients", "gradcam", "occlusion")  # mnistlab.explain.METHODS, without torch

EXAMPLES = """examples:
  mnistlab explain runs/train-20260101-120000 seven.png --out why/          # saliency for the predicted class
  mnistlab explain runs/my-run scans/ --method integrated-gradients --out why/
  mnistlab explain runs/my-run photo.jpg --method gradcam --target 3 --out why/   # evidence for class 3
  mnistlab explain runs/my-run digits/ --method occlusion --out why/ --json

writes one PNG per image (the 28x28 input, the map over it, the map over the original image, the
top-3 classes and probabilities) and grid.METHOD.png with every image. Methods (Captum):
saliency (|gradient|), integrated-gradients (from a blank image), gradcam (last convolution
stage, or a ViT's patch tokens; not for linear and mlp), occlusion (blank 4x4 squares)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab explain`."""
    p = sub.add_parser("explain", help="show which pixels a model's decision rests on",
                       description="Attribution maps for image files and folders, overlaid on each image.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory or a folder with model.json + model.safetensors")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders (searched recursively)")
    p.add_argument("--method", default="saliency", choices=METHODS, help="attribution method (default saliency)")
    p.add_argument("--target", metavar="CLASS", help="explain this class (name or index) instead of the predicted one")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)")
    p.add_argument("--json", action="store_true", help="one JSON object per image instead of a table")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain each input image and print its top classes and where its PNG went."""
    import numpy as np

    from mnistlab.artifact import load_artifact
    from mnistlab.data.images import load_image
    from mnistlab.errors import ConfigError, MnistlabError
    from mnistlab.explain import explain_images
    from mnistlab.predict import TorchPredictor, find_images, is_onnx_file

    if is_onnx_file(args.model):
        raise ConfigError("explanations need the PyTorch model", hint="give the run directory the exported file came from")
    predictor = TorchPredictor(args.model)  # the preprocessing; its model is BatchNorm-folded, without stages
    model, _ = load_artifact(args.model)
    target = class_index(args.target, predictor.classes)
    names, pixels, originals, failed = [], [], [], 0
    files = find_images(args.inputs)
    for path in files:
        try:
            image = load_image(path)
        except MnistlabError as err:
            failed += 1
            print(f"error: {path}: {err}", file=sys.stderr)
            continue
        pixels.append(predictor.prepare(image))
        original = image.convert("L")
        original.thumbnail((512, 512))  # a photo is drawn at a readable size, not at 12 megapixels
        originals.append(np.asarray(original))
        names.append(str(path))
    if not names:
        raise ConfigError("no image could be read", hint="give image files (png, jpg, ...) or folders holding them")
    records = explain_images(model, mean=predictor.mean, std=predictor.std, classes=predictor.classes,
                             names=names, pixels=np.stack(pixels), originals=originals, out=Path(args.out),
                             method=args.method, target=target, autocontrast=predictor.autocontrast,
                             temperature=predictor.temperature)
    for r in records:
        if args.json:
            print(json.dumps(r))
        else:
            top = "  ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            print(f"{r['image']}  {top}  -> {r['png']}")
    if not args.json:
        print(f"grid: {Path(args.out) / f'grid.{args.method}.png'}")
    if failed:
        print(f"{failed} of {len(files)} files could not be read", file=sys.stderr)
    return 1 if failed else 0


def class_index(target: str | None, classes: list[str]) -> int | None:
    """The index of ``--target`` given as a class name or an index; None when not given."""
    from mnistlab.errors import ConfigError

    if target is None:
        return None
    if target in classes:
        return classes.index(target)
    if target.isdigit() and int(target) < len(classes):
        return int(target)
    raise ConfigError(f"--target '{target}' is not a class of this model",
                      hint=f"choose one of {', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}")
