"""User-facing errors: one clear line that says what is wrong and how to fix it."""

from __future__ import annotations


class MnistlabError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The CLI prints ``str(err)`` on one line (no traceback unless ``--debug``)
    and exits with ``err.exit_code``. Messages name the problem and the fix.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class DataError(MnistlabError):
    """A dataset cannot be found, read or verified."""


class ConfigError(MnistlabError):
    """A recipe or override is invalid."""


class ModelError(MnistlabError):
    """An unknown model, or an artifact that cannot be loaded."""
