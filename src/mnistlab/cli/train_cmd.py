"""`mnistlab train`: train a model from a recipe into a new run directory."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab train                                   # default recipe: configs/mnist-fast.yaml
  mnistlab train mnist-best                        # a shipped recipe by name
  mnistlab train configs/fashion-fast.yaml --out runs/fashion
  mnistlab train model.name=resnet optim.lr=3e-3 train.epochs=10
  mnistlab train --dry-run                         # a few steps on a slice: checks the pipeline
  mnistlab train --seeds 5 --quiet                 # 5 seeds, mean and standard deviation
  mnistlab train --resume runs/train-20260101-120000   # continue an interrupted run exactly
  mnistlab train --nproc 2                         # data-parallel on 2 local processes (torchrun)
  torchrun --nproc-per-node 4 -m mnistlab train    # the same, started by hand (GPUs, several machines)

overrides are dotted key=value pairs checked against the config's types
(sections: seed, device, data.*, model.*, optim.*, schedule.*, train.*)."""


def add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and finetune."""
    p.add_argument("--out", metavar="DIR", help="run directory to create (must not exist); default runs/<verb>-<time>")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a small slice, to check the pipeline")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="train N seeds (seed, seed+1, ...) and report mean and std")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    p.add_argument("--json", action="store_true", help="print the final summary as one JSON object")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab train`."""
    p = sub.add_parser("train", help="train a model from a recipe", description="Train a model from a YAML recipe with key=value overrides.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]", help="a recipe (path or shipped name) then overrides")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run directory where it stopped")
    p.add_argument("--nproc", type=int, default=1, metavar="N", help="data-parallel training on N local processes (torchrun)")
    add_run_options(p)
    add_common(p)
    p.set_defaults(func=run)


def split_items(items: list[str]) -> tuple[str | None, list[str]]:
    """(recipe or None, overrides) from the positional arguments."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    bad = [i for i in items if "=" not in i]
    if bad:
        from mnistlab.errors import ConfigError

        raise ConfigError(f"'{bad[0]}' is not key=value", hint="the recipe comes first, then key=value overrides")
    return None, items


def run_seeds(args: argparse.Namespace, cfg, train_one) -> int:
    """Run ``train_one(cfg, out)`` for each seed; print mean and std when more than one."""
    from mnistlab.runner import result_line
    from mnistlab.seeds import summarize_runs

    if args.seeds < 1:
        from mnistlab.errors import ConfigError

        raise ConfigError("--seeds must be at least 1")
    results = []
    base_seed = cfg.seed
    for k in range(args.seeds):
        cfg.seed = base_seed + k
        out = args.out if args.seeds == 1 or args.out is None else str(Path(args.out) / f"seed-{cfg.seed}")
        results.append(train_one(cfg, out))
    summaries = [r.summary for r in results if r.summary]
    if args.json and summaries:
        print(json.dumps(summaries[0] if len(summaries) == 1 else {"runs": summaries}))
    elif args.quiet:  # no bars or report, but still each run's line of result
        for r in results:
            if r.summary:
                print(result_line(r.summary, r.run_dir))
    if len(summaries) > 1:
        stats = summarize_runs(summaries)
        acc = stats.test_accuracy
        if acc is not None:
            print(f"{acc.n} seeds: test accuracy {acc.mean:.4f} ± {acc.std:.4f} (min {acc.min:.4f}, max {acc.max:.4f})")
        print(f"train seconds {stats.train_seconds.mean:.1f} ± {stats.train_seconds.std:.1f}")
    return 0


def resume_run(args: argparse.Namespace, verb_resume) -> int:
    """``--resume RUN`` for train and finetune: say so when RUN is complete, else continue it exactly."""
    from mnistlab.config import started_dry
    from mnistlab.runner import completed_summary, result_line, resume_config

    run_dir = Path(args.resume)
    cfg = resume_config(run_dir)
    done = completed_summary(run_dir)
    if done is not None:  # nothing left to train: no silent re-evaluation
        print(json.dumps(done) if args.json else f"{run_dir} is already complete ({done.get('epochs')} epochs), "
              f"nothing to resume: {result_line(done, run_dir)}")
        return 0
    dry = started_dry(run_dir)
    if dry and not args.quiet:
        print(f"{run_dir} was started with --dry-run: resuming it on the same small slice")
    result = verb_resume(cfg, run_dir, dry)
    if args.json:
        print(json.dumps(result.summary))
    return 0


def run(args: argparse.Namespace) -> int:
    """Train one recipe (several seeds, or N processes with --nproc), or resume a run."""
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.runner import run_training

    if args.nproc < 1:
        from mnistlab.errors import ConfigError

        raise ConfigError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1:
        from mnistlab.cli.main import worker_argv
        from mnistlab.distributed import launch_local

        return launch_local(args.nproc, worker_argv(args), verb=args.verb, run=args.resume or args.out,
                            debug=bool(args.debug or args.debug_verb))
    if args.resume:
        if args.items:
            from mnistlab.errors import ConfigError

            raise ConfigError("--resume takes no recipe or overrides", hint="a resumed run keeps its saved config.yaml")
        return resume_run(args, lambda cfg, run_dir, dry: run_training(cfg, resume_dir=run_dir, quiet=args.quiet,
                                                                      dry_run=dry))
    recipe, overrides = split_items(args.items)
    cfg = load_config(resolve_recipe(recipe), overrides)
    return run_seeds(args, cfg, lambda c, out: run_training(c, out=out, quiet=args.quiet, dry_run=args.dry_run))
