"""`mnistlab cv`: stratified K-fold cross-validation of a recipe on the training set."""

from __future__ import annotations

import argparse
import json
import sys

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab cv mnist-fast --folds 5
  mnistlab cv configs/mnist-fast.yaml model.name=resnet train.epochs=2 --folds 3 --out runs/cv-resnet
  mnistlab cv mnist-fast data.train_limit=10000 --folds 5 --json

the folds are cut from the whole training split (data.val_size is not used; data.train_limit
caps the pool), stratified by class and seeded by the recipe's seed, so the same command gives
the same folds and, on the same machine, the same figures. The test set is never loaded.
Writes <out>/cv.json, <out>/cv.txt and one run per fold in <out>/fold-<i>."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cv", help="stratified K-fold cross-validation on the training set",
                       description="Cross-validate a recipe: per-fold and mean ± std validation accuracy.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]", help="a recipe (path or shipped name) then overrides")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default 5)")
    p.add_argument("--out", metavar="DIR", help="output folder to create (must not exist); default runs/cv-<time>")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mnistlab.cli.train_cmd import split_items
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.cv import format_folds, run_cv

    recipe, overrides = split_items(args.items)
    cfg = load_config(resolve_recipe(recipe), overrides)
    try:
        result = run_cv(cfg, args.folds, out=args.out, quiet=args.quiet or args.json)
    except KeyboardInterrupt:
        print("interrupted: the finished folds' runs are kept; run cv again with a new --out to get the summary",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"out": str(result.out), "folds": args.folds, "mean_val_accuracy": result.mean,
                          "std_val_accuracy": result.std, "per_fold": result.folds}))
    elif args.quiet:
        print(format_folds(result.folds, result.mean, result.std))
    return 0
