"""Server settings: one typed object, built by the CLI (or from the environment in worker processes)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields

from mnistlab.errors import ConfigError

ENV_VAR = "MNISTLAB_SERVE_SETTINGS"  # how `serve --workers N` hands the settings to each worker


@dataclass
class Settings:
    """What ``create_app`` needs: the model and the limits."""

    model: str  # a run directory, an artifact folder, or an .onnx or .ort file
    device: str = "cpu"
    threads: int | None = None  # inference threads per process; None: the backend's default
    max_body_bytes: int = 2 * 1024 * 1024  # larger request bodies get 413
    max_images: int = 64  # images per /predict/batch request
    max_pixels: int = 16_000_000  # images declaring more pixels get 400 before decoding (a 12 MP photo passes)
    max_batch: int = 64  # images per forward pass when batching concurrent requests
    batch_wait_ms: float = 0.0  # extra wait for more requests before a forward pass (0: only those queued)
    batch_in_thread: bool = False  # run forward passes in a worker thread instead of on the event loop
    top_k: int = 3  # default length of the top_k list
    read_model: str | None = None  # a sequence-reader run (train read-ctc) for POST /read; None: the classifier, by segmentation

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_images", "max_pixels", "max_batch", "top_k"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"serve setting {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"serve setting batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"serve setting threads must be at least 1, got {self.threads}")

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls) -> Settings:
        """The settings a parent `mnistlab serve` process put in ``$MNISTLAB_SERVE_SETTINGS``."""
        raw = os.environ.get(ENV_VAR)
        if not raw:
            raise ConfigError(f"${ENV_VAR} is not set", hint="start the server with `mnistlab serve MODEL`")
        data = json.loads(raw)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
