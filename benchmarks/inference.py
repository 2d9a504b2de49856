"""Inference speed: images/s at batch 1 and batch 1024 for eager PyTorch, torch.compile and ONNX Runtime.

Every backend runs the same computation: uint8 pixels [N, 1, 28, 28] in, normalisation inside,
logits and probabilities out (``mnistlab.export.PixelClassifier``, the graph `mnistlab export`
writes). Each cell is the median of ``--repeats`` timed runs of at least ``--seconds`` each,
after a warm-up; torch.compile's compile time is reported apart. Threads: torch and ONNX Runtime
both use ``--threads`` intra-op threads (default 1).

    python benchmarks/inference.py --model runs/train-20260101-120000
    python benchmarks/inference.py              # the default recipe's model untrained: the same speed

Last run (2026-11-30; 2-core AMD EPYC VM, idle; 1 thread; torch 2.13.0, onnxruntime 1.32.0; the
default fastcnn, untrained): batch 1024 eager 5,781 img/s, channels_last 9,862, BatchNorm folded
+ channels_last (what predict/serve run) 13,554, torch.compile (channels_last) 19,824, ONNX Runtime
46,375; full table in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from mnistlab.artifact import ModelCard, load_artifact
from mnistlab.config import load_config, resolve_recipe
from mnistlab.export import PixelClassifier, export_onnx, quantize_onnx
from mnistlab.models import create_model
from mnistlab.predict import fold_batchnorm


def images_per_s(fn: Callable[[], object], batch: int, seconds: float, repeats: int) -> float:
    """Median images/s over ``repeats`` runs of ``fn`` lasting at least ``seconds`` each."""
    for _ in range(3):
        fn()
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds:
            fn()
            n += 1
        rates.append(n * batch / elapsed)
    return statistics.median(rates)


def load(model: str | None) -> tuple[torch.nn.Module, ModelCard, str]:
    if model:
        net, card = load_artifact(model)
        return net, card, model
    spec = load_config(resolve_recipe(None)).model  # the default recipe's model, untrained: the same speed
    net = create_model(spec.name, **spec.args).eval()
    card = ModelCard(arch=spec.name, arch_args=net.arch_args, classes=[str(i) for i in range(10)])
    return net, card, f"untrained {spec.name}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="run directory or artifact (default: the default recipe's model, untrained)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 1024])
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1; on shared cores more threads can be far slower)")
    p.add_argument("--seconds", type=float, default=1.0, help="minimum length of one timed run")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it needs a C compiler)")
    p.add_argument("--no-int8", action="store_true", help="skip the int8 ONNX model")
    args = p.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    net, card, name = load(args.model)
    wrapper = PixelClassifier(net, card.preprocess.mean, card.preprocess.std).eval()
    rng = np.random.default_rng(0)
    pixels = {b: rng.integers(0, 256, (b, 1, 28, 28), dtype=np.uint8) for b in args.batches}
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    rows: dict[str, dict[int, float]] = {}
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = export_onnx(net, card, Path(tmp) / "m.onnx")
        files = {"ONNX Runtime": onnx_file}
        if not args.no_int8:  # calibrated on random pixels: fine for speed, not for accuracy
            files["ONNX Runtime int8"] = quantize_onnx(onnx_file, Path(tmp) / "q.onnx", pixels[max(args.batches)][:512], card)
        sessions = {label: ort.InferenceSession(str(f), options, providers=["CPUExecutionProvider"]) for label, f in files.items()}
        backends: dict[str, Callable[[np.ndarray], object]] = {}

        def eager(x: np.ndarray):
            with torch.inference_mode():
                return wrapper(torch.from_numpy(x))

        backends["eager PyTorch"] = eager
        last = PixelClassifier(copy.deepcopy(net).to(memory_format=torch.channels_last), card.preprocess.mean,
                               card.preprocess.std).eval()

        def eager_last(x: np.ndarray):
            with torch.inference_mode():
                return last(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        backends["eager PyTorch, channels_last"] = eager_last
        folded = PixelClassifier(fold_batchnorm(copy.deepcopy(net).eval(), card.preprocess.size)
                                 .to(memory_format=torch.channels_last), card.preprocess.mean, card.preprocess.std).eval()

        def eager_folded(x: np.ndarray):  # what `mnistlab predict` / `serve` run for a torch artifact
            with torch.inference_mode():
                return folded(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

        backends["eager PyTorch, BatchNorm folded, channels_last"] = eager_folded
        if not args.no_compile:
            for label, module, layout in (("torch.compile", wrapper, torch.contiguous_format),
                                          ("torch.compile, channels_last", last, torch.channels_last)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    compiled = torch.compile(module, dynamic=False)
                    start = time.perf_counter()
                    with torch.inference_mode():
                        for x in pixels.values():
                            compiled(torch.from_numpy(x).contiguous(memory_format=layout))
                    notes.append(f"{label}: {time.perf_counter() - start:.1f} s to compile for {len(pixels)} batch sizes")

                def run_compiled(x: np.ndarray, compiled=compiled, layout=layout):
                    with torch.inference_mode():
                        return compiled(torch.from_numpy(x).contiguous(memory_format=layout))

                backends[label] = run_compiled
        for label, session in sessions.items():
            backends[label] = lambda x, s=session: s.run(None, {"pixels": x})
        for label, fn in backends.items():
            rows[label] = {b: images_per_s(lambda fn=fn, x=pixels[b]: fn(x), b, args.seconds, args.repeats) for b in args.batches}
            print(f"  {label:<20}" + "".join(f"  batch {b}: {rows[label][b]:>10,.0f} img/s" for b in args.batches), flush=True)

    print(f"\n# {platform.machine()}, {os.cpu_count()} cores, {args.threads} threads, Python {platform.python_version()}, "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}; model: {name} ({card.arch}); "
          f"median of {args.repeats} runs of >= {args.seconds:g} s")
    for note in notes:
        print(f"# {note}")
    print("| backend | " + " | ".join(f"batch {b} (images/s)" for b in args.batches) + " |")
    print("|---|" + "---:|" * len(args.batches))
    for label, by_batch in rows.items():
        print(f"| {label} | " + " | ".join(f"{by_batch[b]:,.0f}" for b in args.batches) + " |")


if __name__ == "__main__":
    main()
