"""`mnistlab pretrain`: self-supervised pretraining on images alone, a backbone for `mnistlab finetune`."""

from __future__ import annotations

import argparse

from mnistlab.cli.main import add_common

DEFAULT_RECIPE = "pretrain-cnn"

DESCRIPTION = """Pretrain a backbone on a dataset's images with their labels ignored (self-supervised).

objective (pretrain.objective):
  simclr   two views of each image (batched on-device augmentation, pretrain.augment.*); the
           NT-Xent loss (pretrain.temperature) pulls the views of one image together through a
           projection head that is dropped afterwards

The run's artifact holds the backbone with no classes (its head zeroed); `mnistlab finetune RUN`
attaches a fresh head. After training, off the clock, a linear probe fitted on frozen features of
pretrain.probe_images labelled training images reports its test accuracy (when there are labels).
It prints one line per epoch, then: pretrain loss L  linear probe A  train Ss  -> RUN"""

EXAMPLES = """examples:
  mnistlab pretrain                                        # configs/pretrain-cnn.yaml: fastcnn on MNIST
  mnistlab pretrain pretrain-cnn train.epochs=10 --out runs/ssl
  mnistlab pretrain data.dataset=csv:unlabelled.csv pretrain.probe_images=0
  mnistlab pretrain --dry-run                              # a few steps on a slice
  mnistlab pretrain --resume runs/pretrain-20260101-120000 # continue an interrupted run exactly
  mnistlab finetune runs/ssl --dataset mnist --shots 10 --unlabelled mnist finetune-few-labels

overrides are dotted key=value pairs (pretrain.*, data.*, model.*, optim.*, schedule.*, train.*)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab pretrain`."""
    p = sub.add_parser("pretrain", help="self-supervised pretraining on unlabelled images", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help=f"a recipe (path or shipped name; default {DEFAULT_RECIPE}) then overrides")
    p.add_argument("--out", metavar="DIR", help="run directory to create (must not exist); default runs/pretrain-<time>")
    p.add_argument("--dry-run", action="store_true", help="a few steps on a small slice, to check the pipeline")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted pretraining run where it stopped")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Pretrain as the arguments say, or resume a run; the exit status."""
    from mnistlab.cli.train_cmd import split_items
    from mnistlab.config import load_config, resolve_recipe, started_dry
    from mnistlab.errors import ConfigError
    from mnistlab.pretrain import pretrain, result_line
    from mnistlab.runner import completed_summary, resume_config

    if args.resume:
        if args.items:
            raise ConfigError("--resume takes no recipe or overrides", hint="a resumed run keeps its saved config.yaml")
        done = completed_summary(args.resume)
        if done is not None:
            print(f"{args.resume} is already complete, nothing to resume: {result_line(done, args.resume)}")
            return 0
        pretrain(resume_config(args.resume), resume_dir=args.resume, quiet=args.quiet, dry_run=started_dry(args.resume))
        return 0
    recipe, overrides = split_items(args.items)
    pretrain(load_config(resolve_recipe(recipe or DEFAULT_RECIPE), overrides), out=args.out, quiet=args.quiet,
             dry_run=args.dry_run)
    return 0
