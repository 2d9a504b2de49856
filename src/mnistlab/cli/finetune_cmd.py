"""`mnistlab finetune`: adapt a pretrained run or artifact to new data, new classes or one's own images."""

from __future__ import annotations

import argparse

from mnistlab.cli.main import add_common
from mnistlab.cli.train_cmd import add_run_options, resume_run, run_seeds, split_items

DEFAULT_RECIPE = "finetune-default"

DESCRIPTION = """Fine-tune a pretrained model (a run directory or an artifact) on another dataset.

The new run records its parent in model.json; when the classes match, summary.json holds the
parent's accuracy on the new test set (parent_test_accuracy) beside the fine-tuned one.
The head is kept when the classes are the same (names and order) and replaced otherwise.
The data is normalised with the parent's mean and std, which eval, predict and serve reuse.

strategies:
  full      every weight trains; finetune.layer_lr_decay=0.5 halves the lr per block going down
  head      the backbone is frozen and only the head trains (a linear probe)
  partial   the head and the last finetune.partial_blocks blocks train;
            finetune.gradual_unfreeze=E unfreezes one more block every E epochs, head first
  lora      low-rank adapters (finetune.lora_rank, finetune.lora_alpha, finetune.lora_targets)
            and the head train; --merge folds the adapters into plain weights when saving

small training sets (fewer than finetune.small.below = 2000 images, e.g. after --shots)
need no tuning; these replace the recipe's settings (all are finetune.small.* keys):
  - 300 optimizer steps of 32 images; the epochs follow from the steps;
  - from 100 images per class, 20% held out for early stopping on the validation loss after
    30% of the epochs without improvement, best weights kept (finetune.small.val_size,
    .min_val_per_class, .patience, .early_stop_metric); with fewer, every image trains, since
    fewer than 20 held-out images per class pick worse weights than the last ones
    (benchmarks/transfer.py measured it);
  - augmentation: rotate 10 degrees, translate 10%, scale 10% (unless data.augment is set).
finetune.small.below=0 turns this off; finetune.steps=N sets the steps for any size.

semi-supervised (--unlabelled SPEC), finetune.semi.method:
  - fixmatch (the default): each step also takes finetune.semi.ratio = 7 unlabelled images per
    labelled one; a weakly augmented view (data.augment) whose softmax reaches
    finetune.semi.threshold = 0.95 gives a pseudo-label that a strongly augmented view
    (finetune.semi.strong) is trained on;
  - self-training (finetune-few-labels): the fine-tune on the labelled images is round 0; each of
    finetune.semi.self_training.rounds = 5 rounds labels every unlabelled image with the last
    round's model and fine-tunes the parent afresh on them plus the labelled images, each round
    resumable in RUN/rounds/<k>/.
The unlabelled labels are never read, and any unlabelled image equal to a labelled one is
dropped; summary.json records both sets."""

EXAMPLES = """examples:
  mnistlab train --out runs/mnist                                        # pretrain on MNIST
  mnistlab finetune runs/mnist --dataset fashion-mnist --strategy lora   # new data, same class count
  mnistlab finetune runs/mnist finetune-fashion-head --shots 10          # a shipped recipe, 10 per class
  mnistlab finetune runs/mnist finetune-letters                          # EMNIST letters: a new 26-class head
  mnistlab finetune runs/mnist --dataset folder:my_digits                # my_digits/{train,test}/<class>/*.png
  mnistlab finetune runs/mnist --dataset folder:scans --test-dataset folder:scans_test --strategy partial \\
      finetune.partial_blocks=2 finetune.gradual_unfreeze=1
  mnistlab finetune runs/mnist --dataset fashion-mnist --strategy lora --merge --out runs/fashion-lora
  mnistlab finetune runs/mnist --dataset fashion-mnist --shots 10 --seeds 3 --quiet   # mean and std
  mnistlab finetune --resume runs/finetune-20260101-120000             # continue an interrupted run
  mnistlab finetune runs/pretrain-cnn --dataset mnist --shots 10 --unlabelled mnist finetune-few-labels
                                                    # self-training: 100 labels, the other images unlabelled

shipped recipes: finetune-default (used when none is given), finetune-fashion-{head,lora,full,partial},
finetune-letters, finetune-digits. Overrides are dotted key=value pairs (finetune.*, optim.*, train.*, ...).
Flags override the recipe: --dataset -> data.dataset, --strategy -> finetune.strategy,
--shots -> finetune.shots, --merge -> finetune.merge, --steps -> finetune.steps."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab finetune`."""
    p = sub.add_parser("finetune", help="fine-tune a pretrained model on new data", description=DESCRIPTION,
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="FROM", nargs="?", help="a run directory or a folder holding model.json + model.safetensors")
    p.add_argument("items", nargs="*", metavar="[CONFIG] [key=value ...]",
                   help=f"a recipe (path or shipped name; default {DEFAULT_RECIPE}) then overrides")
    p.add_argument("--dataset", metavar="SPEC", help="data to fine-tune on: a registered name, folder:PATH or csv:PATH")
    p.add_argument("--test-dataset", metavar="SPEC", help="test data (default: the test split of --dataset)")
    p.add_argument("--strategy", choices=["full", "head", "partial", "lora"], help="what trains (default: the recipe's)")
    p.add_argument("--shots", type=int, metavar="K", help="train on K images per class (class-balanced, seeded)")
    p.add_argument("--steps", type=int, metavar="N", help="optimizer steps in all, instead of the recipe's epochs")
    p.add_argument("--merge", action="store_true", help="lora: save plain weights with the adapters folded in")
    p.add_argument("--reset-head", action="store_true", help="re-initialise the head even when the classes match")
    p.add_argument("--unlabelled", metavar="SPEC",
                   help="also learn from these images, labels ignored (FixMatch or self-training; finetune.semi.*)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted fine-tuning run where it stopped")
    add_run_options(p)
    add_common(p)
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    """The resolved Config from FROM, the recipe, the overrides and the flags (flags win)."""
    from mnistlab.config import apply_overrides, config_from_dict, load_yaml, resolve_recipe
    from mnistlab.errors import ConfigError

    recipe, overrides = split_items(args.items)
    data = apply_overrides(load_yaml(resolve_recipe(recipe or DEFAULT_RECIPE)), overrides)
    flags = {"data.dataset": args.dataset, "data.test_dataset": args.test_dataset, "finetune.strategy": args.strategy,
             "finetune.shots": args.shots, "finetune.steps": args.steps, "finetune.merge": args.merge or None,
             "finetune.reset_head": args.reset_head or None, "finetune.parent": args.source}
    for key, value in flags.items():
        if value is not None:
            section, name = key.split(".")
            data.setdefault(section, {})[name] = value
    if args.unlabelled:
        data.setdefault("finetune", {}).setdefault("semi", {})["unlabelled"] = args.unlabelled
    if not data.get("data", {}).get("dataset"):
        raise ConfigError("no dataset to fine-tune on", hint="pass --dataset SPEC, e.g. --dataset fashion-mnist or folder:PATH")
    return config_from_dict(data)


def run(args: argparse.Namespace) -> int:
    """Fine-tune (or resume) as the arguments say; the exit status."""
    from mnistlab.errors import ConfigError
    from mnistlab.finetune.run import finetune

    if args.resume:
        if args.source or args.items or args.dataset or args.strategy or args.shots or args.merge or args.unlabelled:
            raise ConfigError("--resume takes no FROM, recipe, overrides or flags",
                              hint="a resumed run keeps its saved config.yaml, parent included")
        return resume_run(args, lambda cfg, run_dir, dry: finetune(cfg, resume_dir=run_dir, quiet=args.quiet, dry_run=dry))
    if not args.source:
        raise ConfigError("no model to fine-tune from", hint="give a run directory or artifact: mnistlab finetune FROM ...")
    cfg = build_config(args)
    return run_seeds(args, cfg, lambda c, out: finetune(c, out=out, quiet=args.quiet, dry_run=args.dry_run))

