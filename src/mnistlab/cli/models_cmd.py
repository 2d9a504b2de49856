"""`mnistlab models`: the model registry."""

from __future__ import annotations

import argparse

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab models                 # name, parameters (1 channel, 10 classes), description
  mnistlab models --args vit      # the knobs of one model, with their defaults
  mnistlab train model.name=vit model.args.depth=6
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab models`."""
    p = sub.add_parser("models", help="list the registered models", description="List the registered models.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--args", metavar="NAME", help="show the arguments of one model")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """List the registered models and their sizes."""
    from mnistlab.models import count_params, create_model, list_models, model_args

    if args.args:
        create_model(args.args)  # unknown name -> a clear error listing the known ones
        for key, default in model_args(args.args).items():
            print(f"{key:16s} {default!r}")
        return 0
    entries = list_models()
    print(f"{'name':14s} {'params':>12s}  description")
    for e in entries:
        print(f"{e.name:14s} {count_params(create_model(e.name)):>12,d}  {e.description}")
    return 0
