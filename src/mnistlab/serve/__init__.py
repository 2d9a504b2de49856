"""Serve a model over HTTP: ``create_app(Settings(model="runs/my-run"))`` gives a FastAPI app.

Importing this package loads neither the model nor the web framework; ``create_app`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnistlab.serve.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def create_app(settings: Settings) -> FastAPI:
    """The app serving ``settings.model``: the drawing page, /predict, /predict/batch, /health, /model."""
    from mnistlab.serve.app import create_app as build

    return build(settings)


__all__ = ["Settings", "create_app"]
