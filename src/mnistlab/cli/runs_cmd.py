"""`mnistlab runs`: list and compare run directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab runs                    # every run under ./runs, newest first
  mnistlab runs --root experiments # another folder of runs
  mnistlab runs show runs/train-20260101-120000
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab runs`."""
    p = sub.add_parser("runs", help="list and inspect runs", description="List run directories with their key figures.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="list", choices=["list", "show"])
    p.add_argument("run", nargs="?", metavar="RUN", help="the run to show")
    p.add_argument("--root", default="runs", help="folder holding run directories (default runs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the runs under --root, or show one run's figures and summary."""
    from mnistlab.errors import MnistlabError
    from mnistlab.runs import list_runs, show_run

    if args.action == "show":
        if not args.run:
            raise MnistlabError("`mnistlab runs show` needs a RUN directory")
        print(json.dumps(show_run(Path(args.run)), indent=2))
        return 0
    root = Path(args.root)
    rows = list_runs(root)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no runs under '{root}' (train one with `mnistlab train`)")
        return 0
    print(f"{'run':48s} {'status':11s} {'model':10s} {'dataset':16s} {'test acc':>8s} {'epochs':>6s} {'seconds':>8s}")
    for r in rows:
        acc = f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "-"
        secs = f"{r['train_seconds']:.1f}" if r["train_seconds"] is not None else "-"
        print(f"{r['run']:48s} {r['status']:11s} {str(r['model'] or '-'):10s} {str(r['dataset'] or '-'):16s} "
              f"{acc:>8s} {str(r['epochs'] or '-'):>6s} {secs:>8s}")
    return 0
