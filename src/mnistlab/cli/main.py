"""Entry point of the `mnistlab` program.

Each verb lives in its own module exposing ``add_parser(subparsers)``, which
registers the verb and sets ``func`` to a ``run(args) -> int``. Heavy imports
(torch, the data and model code) happen inside ``run``, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from mnistlab import __version__
from mnistlab.errors import MnistlabError

# verb modules in the order `mnistlab --help` lists them
VERBS = [
    "data_cmd",
    "models_cmd",
    "train_cmd",
    "eval_cmd",
    "finetune_cmd",
    "pretrain_cmd",
    "predict_cmd",
    "read_cmd",
    "export_cmd",
    "serve_cmd",
    "tune_cmd",
    "cv_cmd",
    "runs_cmd",
    "explain_cmd",
]

EPILOG = """examples:
  mnistlab train                           # the default recipe (configs/mnist-fast.yaml) on MNIST
  mnistlab train configs/mnist-best.yaml optim.lr=0.002 --out runs/best
  mnistlab eval runs/best --json
  mnistlab data info fashion-mnist
  mnistlab models

every verb has --help with examples; add --debug to see a traceback on errors."""


def build_parser() -> argparse.ArgumentParser:
    """The `mnistlab` parser with every installed verb registered."""
    parser = argparse.ArgumentParser(
        prog="mnistlab",
        description="Develop, train, fine-tune, evaluate, export and serve image classifiers on MNIST and its family.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show a full traceback on errors")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERBS:
        try:
            module = importlib.import_module(f"mnistlab.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"mnistlab.cli.{name}":
                continue  # verb not part of this install
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command in ``argv`` (default: this process's arguments); the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # positionals after options (VERB FROM --flag X CONFIG key=value) go to the verb's items
        if not hasattr(args, "items") or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.items = list(args.items or []) + extra
    debug = args.debug or getattr(args, "debug_verb", False)
    if not args.verb or not hasattr(args, "func"):
        parser.print_help()
        return 0 if not args.verb else 2
    try:
        return int(args.func(args) or 0)
    except MnistlabError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        verb = "finetune" if args.verb == "finetune" else "train"
        print(f"interrupted: the last complete epoch is checkpointed; continue with `mnistlab {verb} --resume RUN`",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # `mnistlab models | head`: the reader left; exit quietly like other tools
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except Exception as err:  # a bug: say so plainly, traceback with --debug
        if debug:
            traceback.print_exc()
        else:
            print(f"error: {type(err).__name__}: {err} (run again with --debug for a traceback)", file=sys.stderr)
        return 1


def add_common(p: argparse.ArgumentParser) -> None:
    """Options every verb accepts."""
    p.add_argument("--debug", dest="debug_verb", action="store_true", help="show a full traceback on errors")


def worker_argv(args: argparse.Namespace) -> list[str]:
    """The mnistlab command line that produced ``args``, without ``--nproc``: what each worker runs."""
    parser = build_parser()  # the CLI's own parser, so workers get the exact command
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    verb_parser = sub.choices[args.verb]
    argv = ["--debug"] if getattr(args, "debug", False) else []
    argv.append(args.verb)
    positionals: list[str] = []
    for action in verb_parser._actions:
        if action.dest in ("help", "nproc") or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if not action.option_strings:
            positionals += [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value == action.default:
            continue
        elif isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            argv.append(action.option_strings[0])
        elif isinstance(value, list):
            argv += [action.option_strings[0], *map(str, value)]
        else:
            argv += [action.option_strings[0], str(value)]
    return argv + positionals


if __name__ == "__main__":
    raise SystemExit(main())
