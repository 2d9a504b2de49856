"""The model registry: models by name, with checked, typed arguments that are saved with the model.

A builder is a function with keyword-only, defaulted, type-hinted arguments that returns a
``Classifier``::

    @register_model("cnn", "the classic Keras/PyTorch tutorial convnet")
    def cnn(*, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.0) -> Classifier:
        ...

Calling a registered builder (directly or through ``create_model``) checks the arguments
against the signature, then records ``model.arch_name`` and ``model.arch_args`` (every argument
as resolved, JSON-ready) so the artifact can rebuild the model with nothing else.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from mnistlab.errors import ModelError
from mnistlab.models.base import Classifier

Builder = Callable[..., Classifier]


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its name, a one-line description and its (checking) builder."""

    name: str
    description: str
    builder: Builder


_REGISTRY: dict[str, ModelEntry] = {}
# Every builder takes these; they come from the data (channels, class count), never from a recipe.
DATA_ARGS = ("in_channels", "num_classes")


def recipe_args(args: dict[str, Any]) -> dict[str, Any]:
    """A model's arguments without the ones the data sets (what a recipe's ``model.args`` may hold)."""
    return {k: v for k, v in args.items() if k not in DATA_ARGS}


def register_model(name: str, description: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name``; the returned function checks args and records them."""

    def decorate(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        params = inspect.signature(fn).parameters
        for required in DATA_ARGS:
            if required not in params:
                raise TypeError(f"builder {fn.__name__} for {name!r} lacks the '{required}' argument")
        for p in params.values():
            if p.kind is not p.KEYWORD_ONLY or p.default is p.empty:
                raise TypeError(
                    f"builder {fn.__name__}: argument '{p.name}' must be keyword-only with a default"
                )

        @functools.wraps(fn)
        def build(**kwargs: Any) -> Classifier:
            args = _resolve(name, fn, kwargs)
            try:
                model = fn(**args)
            except ModelError as err:  # a knob the builder rejected: say which model
                if err.message.startswith("model '"):
                    raise
                raise ModelError(f"model '{name}': {err.message}", hint=err.hint) from None
            model.arch_name = name
            model.arch_args = {k: _jsonable(v) for k, v in args.items()}
            return model

        _REGISTRY[name] = ModelEntry(name, description, build)
        return build

    return decorate


def create_model(name: str, *, in_channels: int = 1, num_classes: int = 10, **kwargs: Any) -> Classifier:
    """Build the model registered as ``name``; unknown names and arguments raise ``ModelError``."""
    return _entry(name).builder(in_channels=in_channels, num_classes=num_classes, **kwargs)


def list_models() -> list[ModelEntry]:
    """Every registered model, sorted by name."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def model_args(name: str) -> dict[str, Any]:
    """The arguments of model ``name`` with their defaults, in signature order."""
    params = inspect.signature(_entry(name).builder).parameters
    return {p.name: p.default for p in params.values()}


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values in ``model`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise ModelError(
            f"unknown model '{name}'",
            hint=f"{guess}known models: {', '.join(sorted(_REGISTRY))}",
        )
    return _REGISTRY[name]


def _resolve(name: str, fn: Builder, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in, unknown names rejected, values checked and coerced to their hints."""
    params = inspect.signature(fn).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        close = difflib.get_close_matches(unknown[0], params, n=1)
        guess = f"did you mean '{close[0]}'? " if close else ""
        raise ModelError(
            f"model '{name}' has no argument '{unknown[0]}'",
            hint=f"{guess}valid arguments: {', '.join(params)}",
        )
    hints = typing.get_type_hints(fn)
    args = {}
    for arg, p in params.items():
        value = kwargs.get(arg, p.default)
        args[arg] = _coerce(value, hints.get(arg, Any), name, arg, p.default)
    for arg in DATA_ARGS:
        if args[arg] < 1:
            raise ModelError(
                f"model '{name}': {arg} must be at least 1, got {args[arg]}", hint=f"e.g. {arg}=1"
            )
    return args


def _coerce(value: Any, hint: Any, name: str, arg: str, default: Any) -> Any:
    """``value`` checked against a simple type hint; JSON lists become tuples, ints become floats."""
    origin, members = typing.get_origin(hint), typing.get_args(hint)
    where, fix = f"model '{name}': {arg}", f"e.g. {arg}={_jsonable(default)!r}"
    if origin is Literal:
        if value not in members:
            raise ModelError(
                f"{where} must be one of {', '.join(map(repr, members))}, got {value!r}", hint=fix
            )
        return value
    if origin is tuple and len(members) == 2 and members[1] is Ellipsis:
        if not isinstance(value, (list, tuple)):
            raise ModelError(f"{where} must be a list of values, got {value!r}", hint=fix)
        return tuple(_coerce(v, members[0], name, arg, default) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelError(f"{where} must be a number, got {value!r}", hint=fix)
        return float(value)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ModelError(f"{where} must be an integer, got {value!r}", hint=fix)
    if hint in (str, bool) and not isinstance(value, hint):
        raise ModelError(f"{where} must be a {hint.__name__}, got {value!r}", hint=fix)
    return value


def _jsonable(value: Any) -> Any:
    """Tuples to lists, recursively (what ``json.dumps`` would write anyway)."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
