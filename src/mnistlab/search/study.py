"""An Optuna study kept in a database, so a killed search resumes where it stopped.

Resume rules:
- finished trials (COMPLETE, PRUNED) are kept and never run again; ``--trials N`` is the total;
- a trial left RUNNING by a process that no longer exists on this machine (killed, crashed,
  rebooted; or that never recorded its process within UNCLAIMED_S) is marked FAIL with ``interrupted`` set, and a copy with the same parameters is
  queued, so the interrupted configuration is trained again from its start; a trial stopped
  by Ctrl-C is treated the same way;
- a RUNNING trial of a live process, or of another machine sharing the database, is left alone;
- random and TPE samplers are reseeded from (seed, trials so far) on every start, so a resumed
  search does not replay the parameter draws of the first session.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from mnistlab.errors import ConfigError
from mnistlab.search.space import SearchSpace

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SQLITE_TIMEOUT_S = 60  # wait this long for a lock held by another reader or writer
UNCLAIMED_S = 30  # a RUNNING trial whose worker never recorded itself this long is orphaned


def fingerprint(config: dict[str, Any], space: SearchSpace) -> str:
    """A short hash of what defines a study: the base config and the search space."""
    blob = json.dumps({"config": config, "space": space.to_dict()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The database a study lives in (``sqlite:///PATH`` or any SQLAlchemy URL)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as err:  # bad URL, missing driver, unreadable file
        raise ConfigError(f"cannot open study storage '{url}': {err}".splitlines()[0],
                          hint="use --storage sqlite:///PATH/study.db") from err


def load_or_create(storage: optuna.storages.RDBStorage, name: str, stamp: str,
                   meta: dict[str, Any]) -> tuple[optuna.Study, bool]:
    """(study, existed): the study ``name``, created if missing; refuses one made for another config."""
    try:
        storage.get_study_id_from_name(name)
        existed = True
    except KeyError:
        existed = False
    if not existed:
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        study.set_user_attr("fingerprint", stamp)
        for key, value in meta.items():
            study.set_user_attr(key, value)
        return study, False
    study = optuna.load_study(study_name=name, storage=storage)
    if study.user_attrs.get("fingerprint") != stamp:
        raise ConfigError(
            f"study '{name}' in {storage.url} was made for another recipe or search space",
            hint="resume it with the same recipe and space, or start a fresh study with a new --out or --study",
        )
    return study, True


def sampler_seed(kind: str, seed: int, n_trials_so_far: int) -> int:
    """The sampler's seed for this session (see the module docstring)."""
    if kind == "grid":  # grid ids index a shuffled grid: the shuffle must not change on resume
        return seed
    return (seed * 1_000_003 + n_trials_so_far * 7919 + 1) % 2**32


def make_sampler(kind: str, space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler(space.grid(), seed=seed)
    raise ConfigError(f"unknown sampler '{kind}'", hint=f"use one of {', '.join(SAMPLERS)}")


def make_pruner(kind: str) -> optuna.pruners.BasePruner:
    """Per-epoch pruning on validation accuracy: median rule or successive halving."""
    if kind == "median":  # the first 5 trials always finish; later ones stop below the median
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if kind == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"unknown pruner '{kind}'", hint=f"use one of {', '.join(PRUNERS)}")


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22 of proc(5), counted after "(comm)"


def worker_token() -> str:
    """Who runs a trial: host, boot, pid and process start time."""
    pid = os.getpid()
    return f"{socket.gethostname()}|{_boot_id()}|{pid}|{_start_time(pid)}"


def worker_alive(token: str) -> bool | None:
    """True/False for a worker of this machine; None when it ran elsewhere (cannot tell)."""
    try:
        host, boot, pid_text, start = token.split("|")
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    if boot != _boot_id():
        return False  # the machine rebooted since
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    return not start or _start_time(pid) == start


@dataclass
class Recovery:
    failed: list[int] = field(default_factory=list)  # RUNNING trials of dead processes, now FAIL
    requeued: list[int] = field(default_factory=list)  # interrupted trials given a fresh copy
    elsewhere: list[int] = field(default_factory=list)  # RUNNING on another machine: left alone


def _requeue(study: optuna.Study, trial: FrozenTrial) -> None:
    """Queue a copy of ``trial`` with the same parameters (and grid point)."""
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k in ("grid_id", "search_space")}
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
        user_attrs={"retry_of": trial.number}, system_attrs=system_attrs,
    ))


def recover_interrupted(study: optuna.Study, storage: optuna.storages.RDBStorage) -> Recovery:
    """Fail the RUNNING trials of dead local processes and requeue every interrupted trial once."""
    rec = Recovery()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "worker" in t.user_attrs:
            alive = worker_alive(str(t.user_attrs["worker"]))
        else:  # killed between creating the trial and recording who runs it
            age = (datetime.now() - t.datetime_start).total_seconds() if t.datetime_start else UNCLAIMED_S
            alive = age < UNCLAIMED_S
        if alive is None:
            rec.elsewhere.append(t.number)
        elif not alive:
            try:
                storage.set_trial_user_attr(t._trial_id, "interrupted", True)
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
                rec.failed.append(t.number)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker got there first
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and t.number not in retried:
            _requeue(study, t)
            rec.requeued.append(t.number)
    return rec


def count_states(study: optuna.Study) -> dict[str, int]:
    """Trials per state (complete, pruned, fail, running, waiting) and finished = complete + pruned."""
    counts = {s.name.lower(): 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] += 1
    counts["finished"] = counts["complete"] + counts["pruned"]
    return counts


def record_session(study: optuna.Study, session: dict[str, Any]) -> list[dict[str, Any]]:
    """Append this run's sampler, seed and target to the study's ``sessions`` list."""
    sessions = list(study.user_attrs.get("sessions", [])) + [{"started": time.strftime("%Y-%m-%dT%H:%M:%S"), **session}]
    study.set_user_attr("sessions", sessions)
    return sessions
