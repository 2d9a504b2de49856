"""`mnistlab tune`: resumable hyperparameter search (Optuna) over a recipe, then one test run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab tune mnist-fast --trials 20                 # shipped space configs/spaces/mnist-fast.yaml
  mnistlab tune configs/mnist-fast.yaml --trials 50 --space my-space.yaml --out runs/lr-search
  mnistlab tune mnist-fast --sampler grid --space grid.yaml       # every grid point once
  mnistlab tune mnist-fast --trials 100 --timeout 3600 --pruner halving
  mnistlab tune mnist-fast --trials 20 --storage sqlite:///studies.db --study mnist-lr

resuming: the study lives in its storage (default <out>/study.db), so running the same command
again -- after a crash, Ctrl-C or a --timeout -- continues it: finished trials are kept and never
repeated, --trials N is the total, and a trial that was cut off runs again with the same
parameters. --out defaults to runs/tune-<recipe>; an existing --out must hold a study of the
same recipe, overrides and space (else choose a new --out for a fresh study).

a space file maps dotted config keys to distributions (log_uniform, uniform, int, categorical)
and may fix other keys for every trial; see configs/spaces/mnist-fast.yaml. Trials are scored by
validation accuracy only and write their runs under <out>/trials/<number>. At the end: best.yaml
(the best config as a recipe), trials.csv, history.png, importances.png, summary.json, and the
best config trained once into <out>/best-<trial> and evaluated once on the test set."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab tune`."""
    p = sub.add_parser("tune", help="search hyperparameters (Optuna), resumable",
                       description="Search a recipe's hyperparameters on validation accuracy, then test the best once.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]", help="a recipe (path or shipped name) then overrides")
    p.add_argument("--trials", type=int, metavar="N", help="total finished trials wanted (default for --sampler grid: the grid size)")
    p.add_argument("--space", metavar="FILE", help="search space YAML, or a shipped space's name (default: the one named like the recipe)")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe", help="how trials pick values (default tpe)")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop poor trials after an epoch: median rule or successive halving (default median)")
    p.add_argument("--storage", metavar="URL", help="study database, e.g. sqlite:///PATH (default sqlite:///<out>/study.db)")
    p.add_argument("--study", metavar="NAME", help="study name in the storage (default: the --out folder's name)")
    p.add_argument("--timeout", type=float, metavar="S", help="start no new trial after S seconds (run again to continue)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/tune-<recipe>); reused to resume")
    p.add_argument("--no-final", action="store_true", help="skip training the best config and testing it")
    p.add_argument("--quiet", action="store_true", help="no per-trial lines")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run or resume the search the arguments describe; the exit status."""
    from mnistlab.cli.train_cmd import split_items
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.errors import ConfigError

    try:
        from mnistlab.search.space import default_space, load_space, resolve_space
        from mnistlab.search.tune import TuneOptions, run_tune
    except ModuleNotFoundError as err:
        if err.name != "optuna":
            raise
        raise ConfigError("`mnistlab tune` needs Optuna", hint="pip install 'mnistlab[tune]'") from err

    recipe, overrides = split_items(args.items)
    recipe_path = resolve_recipe(recipe)
    cfg = load_config(recipe_path, overrides)
    space = load_space(resolve_space(args.space) if args.space else default_space(recipe_path))
    if args.trials is None and args.sampler != "grid":
        raise ConfigError("--trials is required (except with --sampler grid)", hint="e.g. --trials 20")
    if args.timeout is not None and args.timeout <= 0:
        raise ConfigError("--timeout must be a positive number of seconds")
    out = Path(args.out) if args.out else Path("runs") / f"tune-{recipe_path.stem}"
    opts = TuneOptions(out=out, trials=args.trials, sampler=args.sampler, pruner=args.pruner, storage=args.storage,
                       study=args.study, timeout=args.timeout, final=not args.no_final, quiet=args.quiet)
    try:
        result = run_tune(cfg, space, opts)
    except KeyboardInterrupt:
        print(f"interrupted: finished trials are saved; run the same command again to resume the study in {out}",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.summary))
    return 0
