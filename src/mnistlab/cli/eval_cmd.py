"""`mnistlab eval`: evaluate a trained model on a labelled dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab eval runs/train-20260101-120000          # its test set: accuracy, per-class report, confusion
  mnistlab eval runs/my-run --json                  # one JSON object: accuracy, loss, per_class, ...
  mnistlab eval runs/my-run --split val             # the run's own seeded validation split
  mnistlab eval runs/my-run --dataset folder:scans/   # every image of a plain tree of class folders
  mnistlab eval runs/my-run --robustness --plots out/ # accuracy under 20 corruptions x 5 severities, example grid
  mnistlab eval runs/my-run --robustness --robustness-images 2000 --corruptions fog,brightness --json
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab eval`."""
    p = sub.add_parser("eval", help="evaluate a model on a dataset", description="Evaluate a run directory or model artifact.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory or a folder holding model.json + model.safetensors")
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split (default test; a plain tree of class folders: all of it)")
    p.add_argument("--data-dir", metavar="DIR", help="where to look first for registered datasets")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="also write confusion_matrix.png, top_losses.png, top_losses_explained.png and reliability.png "
                   "here (with --robustness, robustness.png too)")
    p.add_argument("--robustness", action="store_true",
                   help="also measure accuracy under the corruption battery (MNIST-C families and more, severities 1-5)")
    p.add_argument("--robustness-images", type=int, metavar="N",
                   help="corrupt a seeded sample of N images of the split (default 2000; 0: all)")
    p.add_argument("--corruptions", metavar="A,B", help="only these corruptions (default: all; see the table for names)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions' random draws (default 0)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate MODEL on the chosen split and print the report (or one JSON object)."""
    from mnistlab.assess import evaluate_run, format_robustness, robustness_plan
    from mnistlab.evaluate import format_report

    plan = robustness_plan(args.corruptions, args.robustness_images, args.seed) if args.robustness else None
    result = evaluate_run(args.model, split=args.split, dataset=args.dataset, data_dir=args.data_dir,
                          batch_size=args.batch_size, plots=Path(args.plots) if args.plots else None,
                          progress=not args.json, robustness=plan)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.model}  on {result.dataset} ({result.split})")
        print(format_report(result.report))
        if result.robustness is not None:
            print()
            print(format_robustness(result.robustness))
    return 0
