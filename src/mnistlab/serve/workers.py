"""`mnistlab serve --workers N`: N server processes, each with its own listening socket.

In uvicorn's multi-worker mode the workers share one socket, and whichever worker's event loop
wakes first accepts every pending connection: in measured runs a burst of 64 keep-alive clients
landed 64/0, 63/1 or 7/57 on two workers, so one core idled while the other queued. Here each
worker binds its own socket with SO_REUSEPORT and the kernel spreads new connections over them
by address hash (30/34, 28/36, 32/32, ... in the same measurements). Where SO_REUSEPORT does not spread connections (outside
Linux), ``serve`` uses uvicorn's mode instead.

The parent process only supervises: it restarts a worker that dies after it has started serving,
stops with an error when one dies while starting, and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import sys
import time
from typing import Any

from mnistlab.errors import ConfigError
from mnistlab.serve.settings import ENV_VAR, Settings

APP = "mnistlab.serve.app:create_app_from_env"


def balanced_sockets_available() -> bool:
    """Whether SO_REUSEPORT spreads connections across sockets here (Linux) rather than picking one."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listen_socket(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on (host, port) that shares the port with the other workers'."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


def _worker(settings_env: str, host: str, port: int, log_level: str, ready: Any) -> None:
    """One worker process: load the model (through the app factory) and serve on its own socket."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                ready.set()

    os.environ[ENV_VAR] = settings_env
    config = uvicorn.Config(APP, factory=True, host=host, port=port, log_level=log_level)
    Server(config).run(sockets=[listen_socket(host, port)])


def run_workers(settings: Settings, host: str, port: int, workers: int, log_level: str) -> int:
    """Start ``workers`` server processes and supervise them until Ctrl-C or SIGTERM."""
    ctx = multiprocessing.get_context("spawn")  # a clean interpreter: no torch state forked from here
    args = (settings.to_env(), host, port, log_level)

    def start() -> tuple[multiprocessing.process.BaseProcess, Any]:
        ready = ctx.Event()
        proc = ctx.Process(target=_worker, args=(*args, ready), name="mnistlab-serve-worker")
        proc.start()
        return proc, ready

    # Ctrl-C and SIGTERM stop the supervisor whatever handler it inherited: a parent that ignores
    # SIGINT (a shell's background job, some test runners) would otherwise leave it restarting the
    # workers that uvicorn's own handler has just shut down.
    stopping = []
    previous = {sig: signal.signal(sig, lambda *_: stopping.append(True)) for sig in (signal.SIGINT, signal.SIGTERM)}
    procs = [start() for _ in range(workers)]
    try:
        while not stopping:
            time.sleep(0.25)
            for i, (proc, ready) in enumerate(procs):
                if proc.is_alive() or stopping:
                    continue
                if not ready.is_set():  # it never served: restarting would fail the same way
                    raise ConfigError(f"a server worker exited with code {proc.exitcode} while starting",
                                      hint="its error is printed above; fix it and start again")
                print(f"server worker {proc.pid} exited with code {proc.exitcode}; starting another", flush=True)
                procs[i] = start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for proc, _ in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
        for proc, _ in procs:
            proc.join(15)
            if proc.is_alive():
                proc.kill()
    return 0
