"""Search spaces: which config keys a hyperparameter search varies, and over what.

A space is a YAML file with two sections::

    fixed:                       # overrides applied to every trial (budget, model, ...)
      train.epochs: 2
    params:                      # what the search varies; keys are dotted config keys
      optim.lr: {type: log_uniform, low: 1.0e-4, high: 1.0e-2}
      optim.weight_decay: {type: log_uniform, low: 1.0e-6, high: 1.0e-2, grid: [1.0e-5, 1.0e-3]}
      model.args.dropout: {type: uniform, low: 0.0, high: 0.5, step: 0.1}
      train.epochs: {type: int, low: 1, high: 4}
      train.batch_size: [64, 128, 256]     # a plain list is a categorical choice

Types: ``log_uniform`` and ``uniform`` (floats in [low, high], optional ``step`` for uniform),
``int`` (integers in [low, high], optional ``step`` or ``log: true``), ``categorical``
(``choices``). The grid sampler enumerates ``choices``, the integers of an ``int`` range, or a
float parameter's explicit ``grid`` list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistlab.config import Config, apply_overrides, config_from_dict, config_to_dict, load_yaml
from mnistlab.errors import ConfigError, MnistlabError

KINDS = ("log_uniform", "uniform", "int", "categorical")
SPACES_DIR = Path(__file__).resolve().parent.parent / "configs" / "spaces"
GRID_LIMIT = 10_000  # more grid points than this is a mistake, not a search


@dataclass(frozen=True)
class Param:
    """One searched config key and its distribution."""

    key: str  # dotted config key, e.g. optim.lr
    kind: str  # one of KINDS
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    grid: tuple[Any, ...] | None = None  # explicit grid points (floats)

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value for an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Any] | None:
        """The values a grid search visits, or None when the parameter is continuous without a grid."""
        if self.grid is not None:
            return list(self.grid)
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int" and not self.log:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "uniform" and self.step:
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None

    def probe_values(self) -> list[Any]:
        """Values that exercise the range's ends and every choice (for checking the space up front)."""
        if self.kind == "categorical":
            return list(self.choices)
        return [self.low, self.high, *(self.grid or ())]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        for name in ("low", "high", "step"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.log and self.kind == "int":
            d["log"] = True
        if self.choices is not None:
            d["choices"] = list(self.choices)
        if self.grid is not None:
            d["grid"] = list(self.grid)
        return d


@dataclass
class SearchSpace:
    params: list[Param]
    fixed: dict[str, Any] = field(default_factory=dict)
    source: str = "<space>"  # where it came from, for messages

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        """Plain data that rebuilds this space (and fingerprints a study)."""
        return {"fixed": dict(self.fixed), "params": {p.key: p.to_dict() for p in self.params}}

    def grid(self) -> dict[str, list[Any]]:
        """Every parameter's grid values; ConfigError naming a parameter that has none."""
        grid = {}
        for p in self.params:
            values = p.grid_values()
            if values is None:
                raise ConfigError(
                    f"{self.source}: parameter '{p.key}' ({p.kind}) has no grid values for --sampler grid",
                    hint=f"add grid: [v1, v2, ...] to '{p.key}', or use --sampler tpe",
                )
            grid[p.key] = values
        if math.prod(len(v) for v in grid.values()) > GRID_LIMIT:
            raise ConfigError(f"{self.source}: the grid has more than {GRID_LIMIT:,} points",
                              hint="use fewer grid values, or --sampler tpe")
        return grid

    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid().values())


def _number(value: Any, where: str, what: str) -> float | int:
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: {what} must be a number, got {value!r}")
    return value


def parse_param(key: str, spec: Any, source: str) -> Param:
    """One ``params`` entry of a space file as a Param; ConfigError naming what is wrong."""
    where = f"{source}: '{key}'"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping such as {{type: log_uniform, low: 1.0e-4, high: 1.0e-2}} or a list of choices")
    allowed = {"type", "low", "high", "step", "log", "choices", "grid"}
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{where} has unknown field '{extra[0]}'", hint=f"fields: {', '.join(sorted(allowed))}")
    kind = spec.get("type", "categorical" if "choices" in spec else None)
    if kind not in KINDS:
        raise ConfigError(f"{where} has type {kind!r}", hint=f"use one of {', '.join(KINDS)}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices")
        bad = [c for c in choices if not (c is None or isinstance(c, (bool, int, float, str)))]
        if bad:
            raise ConfigError(f"{where}: choice {bad[0]!r} is not a single value",
                              hint="choices must be numbers, strings, booleans or null")
        return Param(key, kind, choices=tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {kind} needs low and high")
    low, high = _number(spec["low"], where, "low"), _number(spec["high"], where, "high")
    step = _number(spec["step"], where, "step") if spec.get("step") is not None else None
    log = bool(spec.get("log", kind == "log_uniform"))
    if kind == "int":
        if not all(float(v).is_integer() for v in (low, high, step or 1)):
            raise ConfigError(f"{where}: int needs whole-number low, high and step")
        low, high, step = int(low), int(high), int(step) if step is not None else None
    if not low < high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scaled range needs low > 0, got {low}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be positive and cannot combine with a log scale")
    grid = spec.get("grid")
    if grid is not None:
        if not isinstance(grid, list) or not grid:
            raise ConfigError(f"{where}: grid must be a non-empty list of values")
        grid = tuple(_number(g, where, "a grid value") for g in grid)
        outside = [g for g in grid if not low <= g <= high]
        if outside:
            raise ConfigError(f"{where}: grid value {outside[0]} lies outside [{low}, {high}]")
    return Param(key, kind, low=low, high=high, step=step, log=log, grid=grid)


def parse_space(data: Any, source: str = "<space>") -> SearchSpace:
    """A SearchSpace from the mapping a space file holds (syntax only; see :func:`check_space`)."""
    if not isinstance(data, dict) or "params" not in data:
        raise ConfigError(f"{source}: a search space needs a 'params' mapping",
                          hint="see configs/spaces/mnist-fast.yaml for an example")
    extra = sorted(set(data) - {"params", "fixed"})
    if extra:
        raise ConfigError(f"{source}: unknown section '{extra[0]}'", hint="a space has 'params' and optionally 'fixed'")
    params, fixed = data["params"], data.get("fixed") or {}
    if not isinstance(params, dict) or not params:
        raise ConfigError(f"{source}: 'params' must map dotted config keys to distributions")
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: 'fixed' must map dotted config keys to values")
    both = sorted(set(params) & set(fixed))
    if both:
        raise ConfigError(f"{source}: '{both[0]}' is both fixed and searched", hint="keep it in one section")
    return SearchSpace([parse_param(str(k), v, source) for k, v in params.items()], dict(fixed), source)


def resolve_space(name_or_path: str) -> Path:
    """A space file from a path, or a shipped space's name (``mnist-fast``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = SPACES_DIR / (p.name if p.suffix == ".yaml" else p.name + ".yaml")
    if shipped.is_file() and len(p.parts) == 1:
        return shipped
    names = ", ".join(sorted(s.stem for s in SPACES_DIR.glob("*.yaml")))
    raise ConfigError(f"search space '{name_or_path}' not found", hint=f"give a YAML path or a shipped space: {names}")


def default_space(recipe: Path) -> Path:
    """The shipped space named like the recipe (``configs/spaces/<recipe>.yaml``)."""
    shipped = SPACES_DIR / f"{recipe.stem}.yaml"
    if not shipped.is_file():
        names = ", ".join(sorted(s.stem for s in SPACES_DIR.glob("*.yaml")))
        raise ConfigError(f"no shipped search space for recipe '{recipe.stem}'",
                          hint=f"pass --space FILE (shipped spaces: {names})")
    return shipped


def load_space(path: str | Path) -> SearchSpace:
    """Read and parse a space file."""
    return parse_space(load_yaml(path), str(path))


def _scalar(value: Any) -> str:
    """``value`` as YAML text that reads back as the same value (1e-05 stays a float)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def overrides_for(values: dict[str, Any]) -> list[str]:
    """``key=value`` override strings for a mapping of dotted keys to values."""
    return [f"{k}={_scalar(v)}" for k, v in values.items()]


def apply_values(base: Config, values: dict[str, Any]) -> Config:
    """``base`` with dotted-key ``values`` set, checked like command-line overrides."""
    return config_from_dict(apply_overrides(config_to_dict(base), overrides_for(values)))


def with_fixed(base: Config, space: SearchSpace) -> Config:
    """The config every trial starts from: the recipe plus the space's fixed overrides."""
    try:
        return apply_values(base, space.fixed)
    except MnistlabError as err:
        raise ConfigError(f"{space.source}: fixed: {err}") from err


def _check_model_args(cfg: Config, source: str, key: str) -> None:
    from mnistlab.models import create_model, model_args, recipe_args

    knobs = list(recipe_args(dict.fromkeys(model_args(cfg.model.name))))  # the data's arguments are never searched
    arg = key.removeprefix("model.args.")
    if "." in arg or arg not in knobs:
        raise ConfigError(f"{source}: model '{cfg.model.name}' has no argument '{arg}' (key '{key}')",
                          hint=f"its arguments: {', '.join(knobs) or 'none'}")
    try:
        create_model(cfg.model.name, **cfg.model.args)
    except MnistlabError as err:
        raise ConfigError(f"{source}: '{key}': {err}") from err


def check_space(base: Config, space: SearchSpace) -> None:
    """Fail up front, with one clear line, if a key or a value of the space does not fit the config.

    Every parameter is set to its range's ends (and each choice) on top of the fixed config.
    """
    start = with_fixed(base, space)
    names = [start.model.name]
    model_param = next((p for p in space.params if p.key == "model.name"), None)
    if model_param is not None and model_param.choices:
        names = [str(c) for c in model_param.choices]
    for p in space.params:
        for value in p.probe_values():
            try:
                cfg = apply_values(start, {p.key: value})
            except MnistlabError as err:
                raise ConfigError(f"{space.source}: '{p.key}' = {value!r}: {err.message}", hint=err.hint) from err
            if p.key.startswith("model.args."):
                for name in names:
                    cfg.model.name = name
                    _check_model_args(cfg, space.source, p.key)
    for key in space.fixed:
        if key.startswith("model.args."):
            for name in names:
                cfg = apply_values(start, {"model.name": name})
                _check_model_args(cfg, space.source, key)


def trial_config(base: Config, space: SearchSpace, values: dict[str, Any]) -> Config:
    """The config of one trial: recipe, then the fixed overrides, then the sampled values."""
    return apply_values(with_fixed(base, space), values)


def splits_vary(space: SearchSpace) -> bool:
    """Whether the space changes the data split (so each trial must load its own)."""
    return any(k == "seed" or (k.startswith("data.") and not k.startswith("data.augment.")) for k in space.keys)
