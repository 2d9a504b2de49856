"""`mnistlab eval`: evaluate a trained model on a labelled dataset."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab eval runs/train-20260101-120000          # its test set: accuracy, per-class report, confusion
  mnistlab eval runs/my-run --json                  # one JSON object: accuracy, loss, per_class, ...
  mnistlab eval runs/my-run --split val             # the run's own seeded validation split
  mnistlab eval runs/my-run --dataset folder:scans/ --split train   # any labelled dataset spec
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a dataset", description="Evaluate a run directory or model artifact.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory or a folder holding model.json + model.safetensors")
    p.add_argument("--dataset", metavar="SPEC", help="dataset spec (default: the one the model was trained on)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"], help="which split (default test)")
    p.add_argument("--data-dir", metavar="DIR", help="where to look first for registered datasets")
    p.add_argument("--batch-size", type=int, default=None, help="evaluation batch size")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", help="also write confusion_matrix.png and top_losses.png here")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from mnistlab.artifact import load_artifact, resolve_artifact
    from mnistlab.config import Config, config_from_dict, load_yaml
    from mnistlab.data.dataset import load_dataset, split_train_val
    from mnistlab.errors import MnistlabError
    from mnistlab.evaluate import (
        format_report,
        plot_confusion,
        plot_top_losses,
        predict_logits,
        recipe_tta,
        report_from_logits,
    )

    directory = resolve_artifact(args.model)
    model, card = load_artifact(directory)
    cfg_path = Path(directory) / "config.yaml"
    cfg = config_from_dict(load_yaml(cfg_path)) if cfg_path.is_file() else Config()
    spec = args.dataset or (cfg.data.test_dataset if args.split == "test" and cfg.data.test_dataset else None) or card.dataset
    data_dir = args.data_dir or cfg.data.data_dir
    if args.split == "val":
        if not cfg_path.is_file():
            raise MnistlabError(f"'{args.model}' has no config.yaml, so its validation split is unknown",
                                hint="use --split test, or give a run directory")
        train = load_dataset(spec, "train", data_dir=data_dir, progress=not args.json)
        _, data = split_train_val(train, cfg.data.val_size if cfg.data.val_size < 1 or len(train) >= 4 * cfg.data.val_size else 0.1,
                                  seed=cfg.seed)
    else:
        data = load_dataset(spec, args.split, data_dir=data_dir, progress=not args.json)
    if data.classes != card.classes:
        raise MnistlabError(f"dataset '{spec}' has classes {data.classes[:6]}..., the model {card.classes[:6]}...",
                            hint="evaluate on data with the model's classes, or fine-tune first")
    torch.set_num_threads(cfg.train.threads or torch.get_num_threads())
    logits = predict_logits(model, data.images, mean=card.preprocess.mean, std=card.preprocess.std,
                            batch_size=args.batch_size or cfg.train.eval_batch_size, **recipe_tta(cfg))
    report = report_from_logits(logits, data.labels, data.classes)
    if args.plots:
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(report, out / "confusion_matrix.png")
        plot_top_losses(data.images, logits, data.labels, data.classes, out / "top_losses.png")
    if args.json:
        print(json.dumps({"model": str(directory), "dataset": spec, "split": args.split, **report.to_dict()}))
    else:
        print(f"{directory}  on {spec} ({args.split})")
        print(format_report(report))
    return 0
