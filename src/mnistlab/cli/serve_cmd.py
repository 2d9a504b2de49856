"""`mnistlab serve`: serve a model over HTTP with a drawing page (FastAPI on uvicorn)."""

from __future__ import annotations

import argparse
import os

from mnistlab.cli.main import add_common

EXAMPLES = """examples:
  mnistlab serve runs/train-20260101-120000        # then open http://127.0.0.1:8000/ and draw a digit
  mnistlab serve model.onnx --port 9000            # an exported graph on ONNX Runtime
  mnistlab serve runs/my-run --host 0.0.0.0 --workers 2
  curl -F file=@seven.png http://127.0.0.1:8000/predict
  curl -H 'Content-Type: application/json' -d '{"image": "'$(base64 -w0 seven.png)'"}' http://127.0.0.1:8000/predict

endpoints: GET / (drawing page), POST /predict, POST /predict/batch, GET /health, GET /model,
GET /docs (OpenAPI). Concurrent requests are batched into shared forward passes."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `mnistlab serve`."""
    p = sub.add_parser("serve", help="serve a model over HTTP with a drawing page",
                       description="Serve a run directory, model artifact or .onnx file over HTTP.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="a run directory, a folder with model.json, or an .onnx or .ort file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes, each with its own model copy (and, on Linux, its own socket on the port, "
                        "so connections spread evenly); one per core serves the most")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="inference threads per process (default 1: batched small models gain little from more, "
                        "and extra threads contend with the server's own)")
    p.add_argument("--max-body-mb", type=float, default=2.0, metavar="MB", help="larger request bodies get 413 (default 2)")
    p.add_argument("--max-megapixels", type=float, default=16.0, metavar="MP",
                   help="images declaring more pixels get 400 before decoding (default 16)")
    p.add_argument("--max-batch", type=int, default=64, metavar="N", help="most images in one shared forward pass")
    p.add_argument("--batch-wait-ms", type=float, default=0.0, metavar="MS",
                   help="wait this long for more requests before a forward pass (default 0: batch what is queued)")
    p.add_argument("--batch-in-thread", action="store_true",
                   help="run forward passes in a worker thread (overlaps parsing and inference) instead of on the event loop")
    p.add_argument("--read-model", metavar="RUN",
                   help="a sequence-reader run (mnistlab train read-ctc) that POST /read and the page's string mode use "
                        "(default: the served classifier, by segmentation)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level (default warning; info logs every request)")
    add_common(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve MODEL over HTTP until interrupted."""
    from mnistlab.errors import ConfigError

    try:
        import uvicorn
    except ImportError:
        raise ConfigError("serving needs fastapi and uvicorn", hint="pip install 'mnistlab[serve]'") from None
    from mnistlab.serve.settings import ENV_VAR, Settings

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    settings = Settings(model=args.model, threads=args.threads, max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                        max_pixels=int(args.max_megapixels * 1_000_000),
                        max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms, batch_in_thread=args.batch_in_thread,
                        read_model=args.read_model)
    check_port(args.host, args.port)
    print(f"serving {args.model} at http://{args.host}:{args.port}/  (API docs at /docs; Ctrl-C to stop)", flush=True)
    if args.workers == 1:
        from mnistlab.serve.app import create_app

        app = create_app(settings)  # load here, so a bad model fails before the port opens
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
        return 0
    from mnistlab.predict import load_predictor
    from mnistlab.serve.workers import APP, balanced_sockets_available, run_workers

    load_predictor(args.model)  # fail early, in this process, on a bad model
    if balanced_sockets_available():
        return run_workers(settings, args.host, args.port, args.workers, args.log_level)
    os.environ[ENV_VAR] = settings.to_env()
    uvicorn.run(APP, factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level)
    return 0


def check_port(host: str, port: int) -> None:
    """Fail with one clear line when the address cannot be bound (port taken, bad host)."""
    import socket

    from mnistlab.errors import ConfigError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror or err}",
                          hint="choose another --port, or stop the program using it") from None
