"""Data-parallel training on PyTorch's own engine: torchrun, a process group, DistributedDataParallel.

A worker learns its place from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). :func:`init_distributed` joins the process group
(NCCL for CUDA devices, gloo otherwise) and gives each process its own GPU;
:func:`launch_local` starts torchrun on this machine for ``mnistlab train --nproc N`` and
turns a dead worker into one line naming its rank.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from mnistlab.errors import MnistlabError

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 900  # a collective waits this long for a silent peer before failing (MNISTLAB_DIST_TIMEOUT)
TORCHRUN_LOGS_PREFIX = "mnistlab-torchrun-"
_LOST_PEER = re.compile(r"connection (closed|reset)|broken pipe|by peer|timed out|timeout", re.IGNORECASE)


class PeerLostError(MnistlabError):
    """This rank lost contact with another one: a consequence of a failure elsewhere."""

    exit_code = 3


def env_world_size() -> int:
    """WORLD_SIZE as torchrun set it for this process; 1 outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes started on this machine (LOCAL_WORLD_SIZE); 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def default_threads() -> int:
    """Intra-op threads for one process: this machine's cores shared among its workers."""
    return max(1, (os.cpu_count() or 1) // local_world_size())


def init_distributed(device: torch.device, timeout_s: float | None = None) -> torch.device:
    """Join torchrun's process group (once) and return this process's device.

    NCCL when training on CUDA, gloo otherwise. On CUDA each process takes the GPU of its
    LOCAL_RANK (choose GPUs with CUDA_VISIBLE_DEVICES). Outside torchrun this returns
    ``device`` unchanged. The group is destroyed when the process exits.
    """
    if env_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise MnistlabError(
                f"{local_world_size()} processes on this machine but only {visible} GPU(s) visible",
                hint="use --nproc-per-node at most the GPU count, or device=cpu",
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get("MNISTLAB_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), **kwargs)
        atexit.register(destroy)
    return device


def destroy() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its result (or its MnistlabError) to every rank.

    Used for what must happen once, such as creating the run directory, whose path the
    other ranks then learn. The result must be picklable.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return fn()
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = ("ok", fn())
        except MnistlabError as err:
            box[0] = ("error", err)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def average_grads(grads: list[torch.Tensor]) -> None:
    """Average ``grads`` over all ranks in place (those DistributedDataParallel does not manage)."""
    if not grads or not (dist.is_available() and dist.is_initialized()):
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # every gradient, one all-reduce
    dist.all_reduce(flat)
    flat.div_(dist.get_world_size())
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))  # [numel] -> the gradient's shape
        offset += g.numel()


@contextlib.contextmanager
def peer_errors() -> Iterator[None]:
    """Turn a collective that failed because a peer went away into a PeerLostError naming this rank."""
    try:
        yield
    except RuntimeError as err:
        found = _LOST_PEER.search(str(err))
        if not (dist.is_available() and dist.is_initialized() and found):
            raise
        raise PeerLostError(
            f"rank {dist.get_rank()} lost contact with another rank ({found.group(0)}): a peer process died or hung",
            hint="the launcher names the rank that failed; the last complete checkpoint is intact for --resume",
        ) from err


def launch_local(nproc: int, argv: list[str], *, verb: str = "train", run: str | None = None,
                 debug: bool = False) -> int:
    """Run ``mnistlab ARGV`` under torchrun as ``nproc`` processes on this machine.

    ``argv`` is the command each worker runs (without ``--nproc``); ``verb`` and ``run`` (the
    run directory, if known) name the command to continue with after a failure. Rank 0 prints
    to the console; the other ranks' output goes to log files that are kept only when
    something fails. A failed worker becomes one MnistlabError naming its rank.
    """
    if nproc < 1:
        raise MnistlabError(f"--nproc must be at least 1, got {nproc}")
    hint = (f"the last complete checkpoint is intact: continue with "
            f"`mnistlab {verb} --resume {run or 'RUN'} --nproc {nproc}`")
    return torchrun(nproc, ["-m", "mnistlab", *argv], resume_hint=hint, debug=debug)


def torchrun(nproc: int, program: list[str], *, resume_hint: str = "", debug: bool = False) -> int:
    """``torchrun --standalone --nproc-per-node nproc PROGRAM`` in this process; the exit status.

    ``program`` is a script and its arguments, or ``-m MODULE ...``. Threads per worker
    default to this machine's cores divided among the workers (OMP_NUM_THREADS).
    """
    from torch.distributed import run as torch_run
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log_dir = Path(tempfile.mkdtemp(prefix=TORCHRUN_LOGS_PREFIX))
    redirects = ",".join(f"{r}:3" for r in range(1, nproc)) or "0"  # rank 0 stays on the console
    argv = ["--standalone", "--nproc-per-node", str(nproc), "--log-dir", str(log_dir), "--redirects", redirects, *program]
    if not debug:
        logging.disable(logging.CRITICAL)  # torchrun's own log lines; the failure is reported below
    try:
        torch_run.run(torch_run.parse_args(argv))
    except ChildFailedError as err:
        code, message = describe_failure(err.failures, log_dir)
        if message is None:
            shutil.rmtree(log_dir, ignore_errors=True)
            return code  # rank 0's own error line is already on the console
        raise MnistlabError(message, hint=resume_hint or None) from None
    except SignalException as err:
        print(f"interrupted ({err.sigval.name}): workers stopped; {resume_hint}", file=sys.stderr)
        return 128 + int(err.sigval)
    finally:
        logging.disable(logging.NOTSET)
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


def describe_failure(failures: dict[int, Any], log_dir: Path) -> tuple[int, str | None]:
    """(exit code, one line naming the rank that failed first) from torchrun's failure records.

    The cause is, in order: a rank killed by a signal other than the SIGTERM torchrun sends
    to the survivors; rank 0 failing on a user error (every rank meets the same one); another
    rank's own error; rank 0's crash. Ranks that only lost contact with a peer come last.
    The line is None when the cause is local rank 0, whose error is already on the console.
    """
    logs = {f.local_rank: next(iter(sorted(log_dir.glob(f"**/{f.local_rank}/stderr.log"))), None)
            for f in failures.values()}

    def last_error(local_rank: int) -> str:
        path = logs.get(local_rank)
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path else []
        errors = [ln for ln in lines if ln.startswith("error:") or "Error:" in ln]
        return (errors or lines or [""])[-1]

    def order(rank: int) -> tuple[int, int, int]:
        f = failures[rank]
        if f.exitcode < 0:
            kind = 4 if f.exitcode == -signal.SIGTERM else 0
        elif f.exitcode == PeerLostError.exit_code or _LOST_PEER.search(last_error(f.local_rank)):
            kind = 4
        elif f.local_rank == 0:
            kind = 1 if f.exitcode == MnistlabError.exit_code else 3
        else:
            kind = 2
        return (kind, f.timestamp, rank)

    rank = min(failures, key=order)
    f = failures[rank]
    where = f"; its log: {logs[f.local_rank]}" if logs.get(f.local_rank) is not None else ""
    if f.exitcode < 0:
        return 128 - f.exitcode, (f"rank {rank} (local rank {f.local_rank}, pid {f.pid}) died: killed by "
                                  f"{f.signal_name()}; the other ranks were stopped{where}")
    if f.local_rank == 0:
        return f.exitcode, None
    detail = last_error(f.local_rank).removeprefix("error: ")
    return f.exitcode, f"rank {rank} (local rank {f.local_rank}) failed with exit code {f.exitcode}: {detail}{where}"
