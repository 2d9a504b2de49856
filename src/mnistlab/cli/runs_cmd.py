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
    p = sub.add_parser("runs", help="list and inspect runs", description="List run directories with their key figures.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", nargs="?", default="list", choices=["list", "show"])
    p.add_argument("run", nargs="?", metavar="RUN", help="the run to show")
    p.add_argument("--root", default="runs", help="folder holding run directories (default runs)")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_common(p)
    p.set_defaults(func=run)


def _row(d: Path) -> dict:
    summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
    status = "done" if summary else ("interrupted" if (d / "checkpoint.pt").is_file() else "empty")
    return {"run": str(d), "status": status, "model": summary.get("model"), "dataset": summary.get("dataset"),
            "test_accuracy": summary.get("test_accuracy"), "epochs": summary.get("epochs"),
            "train_seconds": summary.get("train_seconds"), "parent": _parent(d)}


def _parent(d: Path) -> str | None:
    meta = d / "model.json"
    if not meta.is_file():
        return None
    parent = json.loads(meta.read_text()).get("parent")
    return parent.get("path") if isinstance(parent, dict) else None


def run(args: argparse.Namespace) -> int:
    from mnistlab.errors import MnistlabError

    if args.action == "show":
        if not args.run:
            raise MnistlabError("`mnistlab runs show` needs a RUN directory")
        d = Path(args.run)
        if not (d / "config.yaml").is_file():
            raise MnistlabError(f"'{d}' is not a run directory (no config.yaml)")
        print(json.dumps({**_row(d), "summary": json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else None}, indent=2))
        return 0
    root = Path(args.root)
    dirs = sorted((p for p in root.rglob("config.yaml")), key=lambda p: p.stat().st_mtime, reverse=True) if root.is_dir() else []
    rows = [_row(p.parent) for p in dirs]
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
