"""What a search leaves behind: the trial table, the best recipe and the plots."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mnistlab.config import Config, config_to_dict
from mnistlab.fileio import atomic_write_text


def fmt_value(value: Any) -> str:
    """A parameter value as short text (4 significant digits for floats)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, objective, epochs, seconds, then the parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name.lower(),
            "val_acc": t.value if t.state == TrialState.COMPLETE else last_value(t),
            "epochs": t.user_attrs.get("epochs"),
            "seconds": round(seconds, 1) if seconds is not None else None,
            "retry_of": t.user_attrs.get("retry_of"),
        }
        row.update(t.params)
        rows.append(row)
    return rows


def last_value(t: FrozenTrial) -> float | None:
    """The last reported validation accuracy of an unfinished or pruned trial."""
    if not t.intermediate_values:
        return None
    return t.intermediate_values[max(t.intermediate_values)]


def write_trials_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """All trials as CSV (one column per parameter)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def format_trials(rows: list[dict[str, Any]], limit: int = 10) -> str:
    """The best ``limit`` trials by validation accuracy, as an aligned text table."""
    ranked = sorted((r for r in rows if r["val_acc"] is not None), key=lambda r: -r["val_acc"])[:limit]
    if not ranked:
        return "no finished trials"
    params = [k for k in ranked[0] if k not in ("number", "state", "val_acc", "epochs", "seconds", "retry_of")]
    header = ["trial", "state", "val_acc", "epochs", "seconds", *params]
    body = [[str(r["number"]), r["state"], f"{r['val_acc']:.4f}", fmt_value(r["epochs"]), fmt_value(r["seconds"]),
             *[fmt_value(r.get(p)) for p in params]] for r in ranked]
    widths = [max(len(h), *(len(line[i]) for line in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in body]
    return "\n".join(lines)


def write_best_recipe(cfg: Config, trial: FrozenTrial, path: Path, *, study: str) -> None:
    """The best trial's full config as a recipe that `mnistlab train` runs as is."""
    params = ", ".join(f"{k}={fmt_value(v)}" for k, v in trial.params.items())
    header = (f"# best trial {trial.number} of study '{study}': validation accuracy {trial.value:.4f}\n"
              f"# searched values: {params}\n"
              f"# reproduce: mnistlab train {path}\n")
    atomic_write_text(path, header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def write_plots(study: optuna.Study, out: Path) -> dict[str, str]:
    """Optimisation history and parameter importances as PNGs; {file or plot name: result}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    done: dict[str, str] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
        for name, draw in (("history.png", lambda: ovm.plot_optimization_history(study, target_name="val_acc")),
                           ("importances.png", lambda: _importances(study, ovm))):
            try:
                ax = draw()
                fig = ax.figure
                fig.set_size_inches(7, 4)
                fig.tight_layout()
                fig.savefig(out / name, dpi=100)
                plt.close(fig)
                done[name] = "written"
            except Exception as err:  # too few trials, a single value per parameter, ...
                plt.close("all")
                done[name] = f"skipped: {err}".splitlines()[0]
    return done


def _importances(study: optuna.Study, ovm: Any) -> Any:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        raise ValueError(f"needs at least 2 complete trials, have {len(complete)}")
    evaluator = None
    try:  # needs no scikit-learn, unlike fANOVA (the default before Optuna 4)
        from optuna.importance import PedAnovaImportanceEvaluator

        evaluator = PedAnovaImportanceEvaluator()
    except ImportError:
        pass
    return ovm.plot_param_importances(study, evaluator=evaluator, target_name="val_acc")
