"""`mnistlab runs`: list, show and compare run directories."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab runs                    # every run under ./runs, newest first
  mnistlab runs --root experiments # another folder of runs
  mnistlab runs --sort test_accuracy --reverse --dataset mnist --model fastcnn   # best first
  mnistlab runs show runs/train-20260101-120000
  mnistlab runs compare runs/a runs/b                 # figures, config differences, compare.png
  mnistlab runs compare runs/a runs/b runs/c --plot curves.png --json

compare prints the runs' key figures, the settings of their resolved configs that differ (and
only those), and writes one PNG of their learning curves (train and validation loss and
accuracy) against epoch and against training seconds."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab runs`."""
    p = sub.add_parser("runs", help="list, inspect and compare runs",
                       description="List run directories with their key figures, show one, or compare several.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="list", choices=["list", "show", "compare"])
    p.add_argument("run", nargs="*", metavar="RUN", help="the run to show, or the runs to compare")
    p.add_argument("--root", default="runs", help="folder holding run directories (default runs)")
    p.add_argument("--sort", metavar="KEY", help="sort the list by KEY (test_accuracy, train_seconds, model, ...)")
    p.add_argument("--reverse", action="store_true", help="with --sort: largest first")
    p.add_argument("--dataset", metavar="NAME", help="list only runs on this dataset")
    p.add_argument("--model", metavar="NAME", help="list only runs of this model")
    p.add_argument("--plot", default="compare.png", metavar="PNG", help="compare: the learning-curve plot (default compare.png)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the runs under --root, show one run's figures and summary, or compare runs."""
    from mnistlab.errors import ConfigError
    from mnistlab.runs import filter_runs, list_runs, show_run

    if args.action == "compare":
        return compare(args)
    if args.action == "show":
        if len(args.run) != 1:
            raise ConfigError("`mnistlab runs show` needs one RUN directory")
        print(json.dumps(show_run(Path(args.run[0])), indent=2))
        return 0
    root = Path(args.root)
    rows = filter_runs(list_runs(root), dataset=args.dataset, model=args.model, sort=args.sort, reverse=args.reverse)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print(f"no runs under '{root}'" + (" that match" if args.dataset or args.model else "")
              + " (train one with `mnistlab train`)")
        return 0
    print(table(rows))
    return 0


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    """Runs as aligned text columns: run, status, model, dataset, test accuracy, epochs, seconds."""
    lines = [f"{'run':48s} {'status':11s} {'model':10s} {'dataset':16s} {'test acc':>8s} {'epochs':>6s} {'seconds':>8s}"]
    for r in rows:
        lines.append(f"{r['run']:48s} {r['status']:11s} {str(r['model'] or '-'):10s} {str(r['dataset'] or '-'):16s} "
                     f"{_fmt(r['test_accuracy'], '.4f'):>8s} {_fmt(r['epochs'], 'd'):>6s} {_fmt(r['train_seconds'], '.1f'):>8s}")
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    """Print the comparison of the RUN directories and write its learning-curve plot."""
    from mnistlab.runs import ABSENT, compare_runs, plot_comparison

    def shown(value) -> str:
        return "-" if value == ABSENT else json.dumps(value)

    comparison = compare_runs([Path(r) for r in args.run])
    plot_comparison(comparison, Path(args.plot))
    if args.json:
        print(json.dumps({**comparison.to_dict(), "plot": args.plot}))
        return 0
    print(table(comparison.rows))
    names = [Path(r["run"]).name for r in comparison.rows]
    print("\nconfig differences" + ("" if comparison.config_diff else ": none"))
    if comparison.config_diff:
        width = max(len(k) for k in comparison.config_diff)
        cols = [max(len(n), *(len(shown(v[i])) for v in comparison.config_diff.values())) for i, n in enumerate(names)]
        print(f"  {'setting':{width}s}  " + "  ".join(f"{n:>{c}s}" for n, c in zip(names, cols, strict=True)))
        for key, values in comparison.config_diff.items():
            print(f"  {key:{width}s}  " + "  ".join(f"{shown(v):>{c}s}" for v, c in zip(values, cols, strict=True)))
    if any(ABSENT in v for v in comparison.config_diff.values()):
        print("  (- : the run's config has no such setting; it was written by an earlier version)")
    print(f"\nlearning curves: {args.plot}")
    return 0
