"""Serving benchmark: requests/s and p50/p99 latency at concurrency 1, 8 and 64.

Side by side, in one run, on 127.0.0.1:
- `mnistlab serve` on eager PyTorch (the run directory) and on ONNX Runtime (its exported .onnx),
  each with 1 and 2 worker processes;
- a baseline written the way tutorials write it: a minimal Flask app (its built-in threaded
  server) that opens the upload, resizes it to 28x28 and runs the model once per request.

Every request is a multipart POST of one real MNIST test digit as a PNG, field `file`. The load
generator is a separate process of raw asyncio HTTP/1.1 clients (keep-alive where the server
allows it), one connection per concurrent client, each sending its next request as soon as the
last answer arrives; a run is 1 s of warm-up then `--duration` seconds of measurement. All servers
run side by side and are measured in turn, `--rounds` times per level in rotating order, so load
from other programs on a shared machine falls on all of them alike; each cell is the median run.
Latency is from sending a request (connecting first if the server closed the connection) to
the last byte of its answer. Non-200 answers count as errors.

    python benchmarks/serve.py --model runs/train-20260101-120000        # about 6 minutes
    python benchmarks/serve.py --model RUN --duration 2 --rounds 1 --concurrency 1 64   # a quick look
    python benchmarks/serve.py --model RUN --soak 600 --concurrency 64 --workers 1 --only torch   # soak

``--soak SECONDS`` instead loads one server (the first of --only and --workers) at the first
concurrency level for that long, in slices of ``--slice`` seconds, and reports req/s, p50/p99
and errors per slice and overall, and the server's resident memory (all its processes) at the
start, after every slice and at the end: whether memory levels off under sustained load.

Last run (2026-11-30; 2-core AMD EPYC VM, otherwise idle; torch 2.13.0, onnxruntime 1.32.0): at
concurrency 64 with 2 workers, `mnistlab serve model.onnx` 6,194 req/s (p50 10.2 ms, p99 17.5 ms),
`mnistlab serve RUN` (torch) 5,489 req/s (p99 18.9 ms), the Flask baseline 384 req/s (p99 265.5
ms); full table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

BOUNDARY = "mnistlabbenchboundary"
REQUEST_TIMEOUT = 10.0  # seconds; a request taking longer counts as an error


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart_body(png: bytes) -> bytes:
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"digit.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()


# ---------------------------------------------------------------------------- load generator


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bool]:
    """Send one request, read its answer: (status, whether the server closes the connection)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:] if h)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    close = headers.get("connection", "").lower() == "close" or lines[0].startswith("HTTP/1.0")
    return int(lines[0].split()[1]), close


async def _client(port: int, request: bytes, stop_at: float, measure_from: float, latencies: list, errors: list) -> None:
    reader = writer = None
    while time.perf_counter() < stop_at:
        start = time.perf_counter()
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), REQUEST_TIMEOUT)
            status, close = await asyncio.wait_for(_exchange(reader, writer, request), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as err:
            errors.append(type(err).__name__)
            status, close = 0, True
        end = time.perf_counter()
        if start >= measure_from:
            if status == 200:
                latencies.append(end - start)
            elif status:
                errors.append(status)
        if close and writer is not None:
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


# latency histogram bins (ms, log-spaced, 0.01 ms to 100 s): slices of a soak add up to exact-to-a-bin percentiles
HIST_EDGES = np.logspace(-2, 5, 1401)


def percentile_of_histogram(counts: np.ndarray, q: float) -> float | None:
    """The ``q``-th percentile (ms) of latencies binned on HIST_EDGES (the upper edge of its bin)."""
    total = counts.sum()
    if not total:
        return None
    return float(HIST_EDGES[1:][np.searchsorted(np.cumsum(counts), q / 100 * total)])


async def _load(port: int, request: bytes, concurrency: int, warmup: float, duration: float) -> dict:
    now = time.perf_counter()
    measure_from, stop_at = now + warmup, now + warmup + duration
    latencies: list[float] = []
    errors: list = []
    await asyncio.gather(*[_client(port, request, stop_at, measure_from, latencies, errors) for _ in range(concurrency)])
    lat = np.array(latencies) * 1000
    return {
        "concurrency": concurrency, "requests": len(lat), "errors": len(errors),
        "rps": len(lat) / duration,
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "histogram": np.histogram(lat, bins=HIST_EDGES)[0].tolist(),
    }


def loadgen_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    body = Path(args.body).read_bytes()
    request = (f"POST {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n"
               f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    result = asyncio.run(_load(args.port, request, args.concurrency[0], args.warmup, args.duration))
    if not args.histogram:
        result.pop("histogram")
    print(json.dumps(result))


# ---------------------------------------------------------------------------- the baseline


def flask_main(args: argparse.Namespace) -> None:
    """The tutorial way: Flask's built-in server, one forward pass per request, resize to 28x28."""
    import torch
    from flask import Flask, jsonify, request
    from PIL import Image

    from mnistlab.artifact import load_artifact

    model, card = load_artifact(args.model)
    app = Flask(__name__)

    @app.route("/predict", methods=["POST"])
    def predict():
        img = Image.open(request.files["file"]).convert("L").resize((28, 28))
        x = torch.tensor(np.array(img), dtype=torch.float32).div(255).sub(card.preprocess.mean).div(card.preprocess.std)
        with torch.no_grad():
            probs = model(x.view(1, 1, 28, 28)).softmax(1)[0]  # [28, 28] -> [1, 1, 28, 28]
        return jsonify({"label": card.classes[int(probs.argmax())], "probability": float(probs.max())})

    @app.route("/health")
    def health():
        return jsonify({"status": "ok"})

    app.run(host="127.0.0.1", port=args.port)


# ---------------------------------------------------------------------------- orchestration


def wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not become ready")


class Server:
    """One server process under test, started on its own port, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], workdir: Path) -> None:
        self.name, self.port = name, free_port()
        self.log = workdir / f"server-{self.port}.log"  # a file, not a pipe: a full pipe would stall a chatty server
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd + ["--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_ready(self) -> None:
        try:
            wait_ready(self.port, self.proc)
        except RuntimeError as err:
            raise RuntimeError(f"{self.name}: {err}; its output:\n{self.log.read_text()[-2000:]}") from None

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server's processes (its session: workers included)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid:  # process group id: the session started for this server
                total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory (MB) of the server's processes, summed (its session: workers included)."""
        total = 0
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[3]) != self.proc.pid:
                    continue
                status = (stat.parent / "status").read_text()
            except (OSError, IndexError, ValueError):
                continue
            total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        return total / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)


def load_once(port: int, body_file: Path, concurrency: int, args, *, duration: float | None = None,
              warmup: float | None = None, histogram: bool = False) -> dict:
    """One load-generator run against ``port``: requests/s, p50, p99, errors (and the latency histogram)."""
    duration = args.duration if duration is None else duration
    warmup = args.warmup if warmup is None else warmup
    out = subprocess.run([sys.executable, __file__, "--loadgen", "--port", str(port), "--body", str(body_file),
                          "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", str(warmup)]
                         + ["--histogram"] * histogram, capture_output=True, text=True, timeout=duration + warmup + 60)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout)


def bench(servers: list[Server], body_file: Path, args) -> list[dict]:
    """Every server at every level, interleaved over rounds (so background load hits all alike); medians."""
    rows = []
    for c in args.concurrency:
        runs: dict[str, list[dict]] = {s.name: [] for s in servers}
        for r in range(args.rounds):
            order = servers[r % len(servers):] + servers[:r % len(servers)]
            for server in order:
                before = server.cpu_seconds()
                run = load_once(server.port, body_file, c, args)
                # warm-up requests are included in the CPU time, so count them too (at the measured rate)
                served = run["requests"] * (args.duration + args.warmup) / args.duration
                run["cpu_ms"] = 1000 * (server.cpu_seconds() - before) / max(1, served)
                runs[server.name].append(run)
        for server in servers:
            got = runs[server.name]
            row = {"server": server.name, "concurrency": c, "rounds": len(got),
                   "requests": sum(g["requests"] for g in got), "errors": sum(g["errors"] for g in got),
                   "rps": statistics.median(g["rps"] for g in got),
                   "rps_min": min(g["rps"] for g in got), "rps_max": max(g["rps"] for g in got)}
            for key in ("p50_ms", "p99_ms", "cpu_ms"):
                vals = [g[key] for g in got if g[key] is not None]
                row[key] = statistics.median(vals) if vals else None
            rows.append(row)
            print(f"  {server.name:<28} c={c:<3} {row['rps']:8.0f} req/s (runs {row['rps_min']:.0f}-{row['rps_max']:.0f})"
                  f"  p50 {fmt(row['p50_ms'])} ms  p99 {fmt(row['p99_ms'])} ms  server CPU {row['cpu_ms']:.2f} ms/request"
                  f"  errors {row['errors']}", flush=True)
    return rows


def soak(server: Server, body_file: Path, args) -> dict:
    """Load ``server`` for ``args.soak`` seconds at ``args.concurrency[0]`` connections, in slices; memory over time."""
    c, start_rss, t0 = args.concurrency[0], server.rss_mb(), time.monotonic()
    counts, slices, errors = np.zeros(len(HIST_EDGES) - 1, dtype=np.int64), [], 0
    print(f"  {'t (s)':>6} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'RSS MB':>7}", flush=True)
    print(f"  {0:>6.0f} {'':>8} {'':>7} {'':>7} {'':>6} {start_rss:>7.1f}", flush=True)
    while (left := args.soak - (time.monotonic() - t0)) > 1:
        run = load_once(server.port, body_file, c, args, duration=min(args.slice, left), warmup=0.0 if slices else args.warmup,
                        histogram=True)
        counts += np.asarray(run.pop("histogram"))
        errors += run["errors"]
        run.update(t=round(time.monotonic() - t0, 1), rss_mb=round(server.rss_mb(), 1))
        slices.append(run)
        print(f"  {run['t']:>6.0f} {run['rps']:>8.0f} {fmt(run['p50_ms']):>7} {fmt(run['p99_ms']):>7} {run['errors']:>6} "
              f"{run['rss_mb']:>7.1f}", flush=True)
    seconds = sum(r["requests"] / r["rps"] for r in slices if r["rps"])
    result = {"server": server.name, "concurrency": c, "seconds": round(seconds, 1), "requests": int(counts.sum()),
              "errors": errors, "rps": counts.sum() / max(seconds, 1e-9), "p50_ms": percentile_of_histogram(counts, 50),
              "p99_ms": percentile_of_histogram(counts, 99), "rss_start_mb": round(start_rss, 1),
              "rss_end_mb": round(server.rss_mb(), 1), "rss_max_mb": max(r["rss_mb"] for r in slices), "slices": slices}
    print(f"\n  {server.name}, {c} connections, {result['seconds']:.0f} s measured: {result['rps']:,.0f} req/s, "
          f"p50 {fmt(result['p50_ms'])} ms, p99 {fmt(result['p99_ms'])} ms, {errors} errors; server RSS "
          f"{result['rss_start_mb']:.1f} MB at the start, {result['rss_end_mb']:.1f} MB at the end "
          f"(max {result['rss_max_mb']:.1f})")
    return result


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def digit_png(data_dir: str | None) -> tuple[bytes, str]:
    """A real MNIST test digit as PNG bytes (a drawn one when the dataset is not available)."""
    import io

    from PIL import Image, ImageDraw

    try:
        from mnistlab.data.dataset import load_dataset

        img = Image.fromarray(load_dataset("mnist", "test", data_dir=data_dir, download=False, progress=False).images[0, 0].numpy())
        source = "MNIST test image 0 (28x28 PNG)"
    except Exception:
        img = Image.new("L", (28, 28))
        ImageDraw.Draw(img).line([(7, 6), (21, 6), (12, 23)], fill=255, width=3)
        source = "a drawn 7 (28x28 PNG; MNIST not found)"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), source


def prepare_model(model: str | None, tmp: Path) -> tuple[Path, Path, str]:
    """(artifact dir, exported .onnx, description); an untrained default model when none is given."""
    from mnistlab.artifact import ModelCard, load_artifact, save_artifact
    from mnistlab.config import load_config, resolve_recipe
    from mnistlab.export import export_onnx
    from mnistlab.models import create_model

    if model is None:  # the default recipe's model, untrained: the same speed
        spec = load_config(resolve_recipe(None)).model
        m = create_model(spec.name, **spec.args)
        save_artifact(tmp / "model", m, ModelCard(arch=spec.name, arch_args=m.arch_args, classes=[str(i) for i in range(10)]))
        model, note = str(tmp / "model"), f"untrained {spec.name} (same speed as a trained one)"
    else:
        note = model
    net, card = load_artifact(model)
    onnx_file = export_onnx(net, card, tmp / "model.onnx")
    return Path(model), onnx_file, f"{note} ({card.arch})"


def markdown(rows: list[dict], levels: list[int]) -> str:
    head = "| server | " + " | ".join(f"c={c} req/s | p50 ms | p99 ms" for c in levels) + " | server CPU ms/request |"
    sep = "|---|" + "---:|---:|---:|" * len(levels) + "---:|"
    lines = [head, sep]
    for name in dict.fromkeys(r["server"] for r in rows):
        cells = []
        for c in levels:
            r = next((r for r in rows if r["server"] == name and r["concurrency"] == c), None)
            cells.append("- | - | -" if r is None else f"{r['rps']:,.0f} | {fmt(r['p50_ms'])} | {fmt(r['p99_ms'])}"
                         + (f" ({r['errors']} errors)" if r["errors"] else ""))
        cpu = statistics.median(r["cpu_ms"] for r in rows if r["server"] == name)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cpu:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="run directory or artifact (default: the default recipe's model, untrained)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="mnistlab worker counts to try")
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    p.add_argument("--rounds", type=int, default=3, help="runs per server and level, interleaved; medians reported")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--only", nargs="+", choices=["torch", "onnx", "flask"], default=["torch", "onnx", "flask"])
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--soak", type=float, metavar="SECONDS", help="load one server this long; report memory over time")
    p.add_argument("--slice", type=float, default=30.0, help="soak: seconds per reported slice")
    # internal: the load generator and the baseline run as their own processes
    p.add_argument("--loadgen", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flask", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--body", help=argparse.SUPPRESS)
    p.add_argument("--path", default="/predict", help=argparse.SUPPRESS)
    p.add_argument("--histogram", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.loadgen:
        return loadgen_main(args)
    if args.flask:
        return flask_main(args)

    import torch

    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmpdir:
        tmp = Path(tmpdir)
        artifact, onnx_file, note = prepare_model(args.model, tmp)
        png, source = digit_png(os.environ.get("MNISTLAB_DATA_DIR"))
        body_file = tmp / "body.bin"
        body_file.write_bytes(multipart_body(png))
        import onnxruntime

        print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
        length = f"soak of {args.soak:g} s in {args.slice:g} s slices" if args.soak else f"{args.duration:g} s per level"
        print(f"# model: {note}; request: {source}, {len(png)} bytes, multipart; {length}")
        serve = [sys.executable, "-m", "mnistlab", "serve"]
        servers = []
        for w in args.workers:
            if "torch" in args.only:
                servers.append((f"mnistlab torch, {w} worker{'s' * (w > 1)}", serve + [str(artifact), "--workers", str(w)]))
            if "onnx" in args.only:
                servers.append((f"mnistlab onnx, {w} worker{'s' * (w > 1)}", serve + [str(onnx_file), "--workers", str(w)]))
        if args.soak:
            servers = servers[:1]
        elif "flask" in args.only:
            servers.append(("Flask baseline (tutorial)", [sys.executable, __file__, "--flask", "--model", str(artifact)]))
        started = [Server(name, cmd, tmp) for name, cmd in servers]
        try:
            for server in started:
                server.wait_ready()
            if args.soak:
                result = soak(started[0], body_file, args)
                if args.json:
                    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
                return
            rows = bench(started, body_file, args)
        finally:
            for server in started:
                server.stop()
        print()
        print(markdown(rows, args.concurrency))
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
