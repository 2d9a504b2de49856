"""Hyperparameter search: trials of a recipe over a search space, resumable, then one test run.

Each trial trains ``recipe + space.fixed + sampled values`` on the training split and is scored
by its best validation accuracy; the test set is never looked at during the search. Trials are
pruned per epoch. The study lives in a database (``<out>/study.db`` by default), so running the
same command again resumes it (rules in :mod:`mnistlab.search.study`). At the end the best
config is written as a recipe, trained once from scratch and evaluated once on the test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from mnistlab.checkpoint import CHECKPOINT
from mnistlab.config import Config, config_to_dict
from mnistlab.errors import ConfigError, MnistlabError
from mnistlab.runner import RunPlan, run_training
from mnistlab.runs import read_json, write_json
from mnistlab.search import report
from mnistlab.search import study as studies
from mnistlab.search.space import SearchSpace, check_space, splits_vary, trial_config, with_fixed
from mnistlab.splits import Splits, make_splits

META = "tune.json"  # what ties an output directory to its study


@dataclass
class TuneOptions:
    out: Path
    trials: int | None = None  # total finished trials wanted; None = the grid's size (grid only)
    sampler: str = "tpe"
    pruner: str = "median"
    storage: str | None = None  # None: sqlite:///<out>/study.db
    study: str | None = None  # None: the output directory's name
    timeout: float | None = None  # seconds after which this session starts no new trial
    final: bool = True  # train the best config once and evaluate it on the test set
    quiet: bool = False


@dataclass
class TuneResult:
    out: Path
    study: optuna.Study
    summary: dict[str, Any]


def _attach_out(opts: TuneOptions, stamp: str) -> tuple[str, str, bool]:
    """(storage URL, study name, out existed): checks a reused --out belongs to this study."""
    out = opts.out
    meta_path = out / META
    default_url = f"sqlite:///{(out / 'study.db').resolve()}"
    if meta_path.is_file():
        meta = read_json(meta_path)
        if opts.storage is not None and opts.storage != (meta["storage"] or default_url):
            raise ConfigError(f"'{out}' belongs to the study in {meta['storage'] or default_url}",
                              hint="drop --storage to resume it, or choose a new --out")
        if opts.study is not None and opts.study != meta["study"]:
            raise ConfigError(f"'{out}' belongs to study '{meta['study']}'", hint="drop --study to resume it, or choose a new --out")
        if meta["fingerprint"] != stamp:
            raise ConfigError(f"'{out}' holds a study of another recipe or search space",
                              hint="run the same recipe and space to resume it, or choose a new --out for a fresh study")
        storage, name = meta["storage"], meta["study"]
        existed = True
    else:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"'{out}' exists and is not a tune directory (no {META})", hint="choose a new --out")
        storage, name, existed = opts.storage, opts.study or out.resolve().name, False
    return storage or default_url, name, existed


def _objective(base: Config, space: SearchSpace, out: Path, shared: Splits | None) -> Callable[[optuna.Trial], float]:
    token = studies.worker_token()

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", token)
        try:
            values = {p.key: p.suggest(trial) for p in space.params}
            cfg = trial_config(base, space, values)
            trial.set_user_attr("seed", cfg.seed)
            splits = shared or _search_splits(cfg)

            def on_epoch(row: dict[str, Any]) -> None:
                trial.set_user_attr("epochs", row["epoch"])
                trial.report(row["val_acc"], row["epoch"])
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")

            result = run_training(cfg, out=out / "trials" / str(trial.number), quiet=True, epoch_callback=on_epoch,
                                  plan=RunPlan(splits=splits))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except MnistlabError as err:
            trial.set_user_attr("error", str(err))
            raise
        return max(row["val_acc"] for row in result.fit.history)

    return objective


def _search_splits(cfg: Config) -> Splits:
    """Train and validation data for trials (the test split is not handed to them)."""
    splits = make_splits(cfg, progress=False)  # loads the test set too, so a bad one fails before the search
    if splits.val is None:
        raise ConfigError("hyperparameter search needs a validation split, but data.val_size is 0",
                          hint="set data.val_size, e.g. data.val_size=5000")
    return splits.without_test()


def _progress(target: int, log: Callable[[str], None]) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
        n = studies.count_states(study)["finished"]
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else 0.0
        state = t.state.name.lower()
        if t.state == TrialState.PRUNED:
            state = f"pruned at epoch {max(t.intermediate_values, default=0)}"
        elif t.state == TrialState.FAIL:
            state = f"failed: {t.user_attrs.get('error', 'see --debug')}"
        acc = t.value if t.value is not None else report.last_value(t)
        acc_text = f"val_acc {acc:.4f}" if acc is not None else "val_acc n/a"
        try:
            best = f"best {study.best_value:.4f} (#{study.best_trial.number})"
        except ValueError:
            best = "best n/a"
        params = " ".join(f"{k}={report.fmt_value(v)}" for k, v in t.params.items())
        log(f"trial {t.number:>3} [{n}/{target}] {acc_text}  {best}  {seconds:5.1f}s  {state}  {params}")

    return callback


def _final_run(cfg: Config, out: Path, number: int, quiet: bool) -> dict[str, Any]:
    """Train the best config once from scratch into ``<out>/best-<trial>`` and evaluate it on test.

    A finished final run is reused; one interrupted after an epoch is resumed.
    """
    for k in range(100):
        run_dir = out / (f"best-{number}" if k == 0 else f"best-{number}-{k}")
        if (run_dir / "summary.json").is_file():
            return read_json(run_dir / "summary.json") | {"run_dir": str(run_dir)}
        if (run_dir / CHECKPOINT).is_file():
            return run_training(cfg, resume_dir=run_dir, quiet=quiet).summary | {"run_dir": str(run_dir)}
        if not run_dir.exists():
            return run_training(cfg, out=run_dir, quiet=quiet).summary | {"run_dir": str(run_dir)}
    raise MnistlabError(f"too many unfinished final runs in '{out}'", hint="remove the best-* folders without summary.json")


def _target_trials(opts: TuneOptions, space: SearchSpace, say: Callable[[str], None]) -> int:
    """The total of finished trials to reach: ``--trials``, at most the grid's size (its size by default)."""
    target = opts.trials
    if opts.sampler == "grid":
        size = space.grid_size()
        if target is not None and target > size:
            say(f"note: the grid has {size} points; running {size} trials, not {target}")
        target = min(target or size, size)
    if target is None or target < 1:
        raise ConfigError("--trials must be a positive number of trials", hint="e.g. --trials 20")
    return target


def run_tune(base: Config, space: SearchSpace, opts: TuneOptions, *, log: Callable[[str], None] = print) -> TuneResult:
    """Run (or resume) the search described by ``base``, ``space`` and ``opts``; see the module docstring."""
    t0 = time.perf_counter()
    if opts.sampler not in studies.SAMPLERS:
        raise ConfigError(f"unknown sampler '{opts.sampler}'", hint=f"use one of {', '.join(studies.SAMPLERS)}")
    check_space(base, space)
    say = (lambda _: None) if opts.quiet else log
    target = _target_trials(opts, space, say)

    stamp = studies.fingerprint(config_to_dict(base), space)
    url, name, existed = _attach_out(opts, stamp)
    # load the data before anything is written, so a missing dataset leaves no half-made study
    shared = None if splits_vary(space) else _search_splits(with_fixed(base, space))
    storage = studies.open_storage(url)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, resumed = studies.load_or_create(storage, name, stamp, {"config": config_to_dict(base), "space": space.to_dict()})
    if not existed:
        write_json(opts.out / META, {"study": name, "storage": opts.storage, "fingerprint": stamp,
                                     "space": space.source, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    rec = studies.recover_interrupted(study, storage)
    counts = studies.count_states(study)
    if rec.failed or rec.requeued:
        say(f"interrupted trials {rec.requeued} will run again with the same parameters")
    if rec.elsewhere:
        say(f"note: trials {rec.elsewhere} are marked running by another machine; they are left alone")
    remaining = max(0, target - counts["finished"])
    n_before = len(study.trials)
    seed = studies.sampler_seed(opts.sampler, base.seed, n_before)
    sessions = studies.record_session(study, {"sampler": opts.sampler, "sampler_seed": seed, "pruner": opts.pruner,
                                              "target": target, "trials_before": n_before})
    say(f"study '{name}' ({'resumed' if resumed else 'new'}, {url}): {counts['finished']} of {target} trials "
        f"finished, {remaining} to run; sampler {opts.sampler} (seed {seed}), pruner {opts.pruner}")

    interrupted = False
    search_t0 = time.perf_counter()
    if remaining > 0:
        study.sampler = studies.make_sampler(opts.sampler, space, seed)
        study.pruner = studies.make_pruner(opts.pruner)
        done = optuna.study.MaxTrialsCallback(target, states=studies.FINISHED)
        try:
            study.optimize(_objective(base, space, opts.out, shared), n_trials=remaining, timeout=opts.timeout,
                           catch=(MnistlabError,), callbacks=[done, _progress(target, say)], gc_after_trial=False)
        except KeyboardInterrupt:
            interrupted = True
    search_seconds = time.perf_counter() - search_t0

    counts = studies.count_states(study)
    rows = report.trial_rows(study)
    report.write_trials_csv(rows, opts.out / "trials.csv")
    plots = report.write_plots(study, opts.out)
    summary: dict[str, Any] = {
        "study": name, "storage": url, "target_trials": target, "trials": counts,
        "search_seconds_this_session": round(search_seconds, 1), "sessions": sessions, "config_seed": base.seed,
        "plots": plots, "best_trial": None, "test_accuracy": None,
    }
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        best_cfg = trial_config(base, space, best.params)
        report.write_best_recipe(best_cfg, best, opts.out / "best.yaml", study=name)
        summary.update(best_trial=best.number, best_val_accuracy=best.value, best_params=best.params,
                       best_recipe=str(opts.out / "best.yaml"))
        say(report.format_trials(rows))
        say(f"best trial {best.number}: val_acc {best.value:.4f} -> {opts.out / 'best.yaml'}")
        if opts.final and not interrupted:
            final = _final_run(best_cfg, opts.out, best.number, opts.quiet)
            summary.update(test_accuracy=final.get("test_accuracy"), final_run=final["run_dir"],
                           final_val_accuracy=final.get("val_accuracy"), final_train_seconds=final.get("train_seconds"))
    elif not interrupted:
        say("no trial completed: nothing to report as best")
    summary["wall_seconds_this_session"] = round(time.perf_counter() - t0, 1)
    summary["interrupted"] = interrupted
    write_json(opts.out / "summary.json", summary)
    if interrupted:
        raise KeyboardInterrupt
    acc = summary["test_accuracy"]
    say(f"{counts['finished']} trials finished ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['fail']} failed) in {search_seconds:.1f}s this session"
        + (f"; test accuracy of the best config {acc:.4f}" if acc is not None else ""))
    return TuneResult(opts.out, study, summary)
