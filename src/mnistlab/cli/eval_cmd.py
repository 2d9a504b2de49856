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
    p.add_argument("--plots", metavar="DIR", help="also write confusion_matrix.png and top_losses.png here")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate MODEL on the chosen split and print the report (or one JSON object)."""
    from mnistlab.assess import evaluate_run
    from mnistlab.evaluate import format_report

    result = evaluate_run(args.model, split=args.split, dataset=args.dataset, data_dir=args.data_dir,
                          batch_size=args.batch_size, plots=Path(args.plots) if args.plots else None,
                          progress=not args.json)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.model}  on {result.dataset} ({result.split})")
        print(format_report(result.report))
    return 0
