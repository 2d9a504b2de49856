"""Probe: what one training step of the default recipe costs with its first 0, 1 or 2 stages frozen.

`mnist-fast`'s whole step (its data path on real MNIST images: speckle, shading, contrast stretch;
bf16 forward, backward and fused AdamW at batch 128, channels_last), with the first k stages'
parameters not requiring gradients, as `train.freeze_out` leaves them after each freezing point.
Rounds of 40 steps, the three settings interleaved 15 times; median and best ms a step, and the
median of the paired ratios to the unfrozen step (the machine's noise hits the three alike).
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/freeze_out_step_probe.py [THREADS]
"""

import platform
import statistics as st
import sys
import time

import torch
import torch.nn.functional as F

from mnistlab.config import load_config, resolve_recipe
from mnistlab.data.augment import augment_batch
from mnistlab.data.dataset import load_dataset
from mnistlab.data.imagedata import normalize
from mnistlab.models import create_model
from mnistlab.optim import build_optimizer

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
B, ROUNDS, STEPS = 128, 15, 40
data = load_dataset("mnist", "train")
cfg = load_config(resolve_recipe("mnist-fast"))
torch.manual_seed(0)
model = create_model(cfg.model.name, **cfg.model.args).to(memory_format=torch.channels_last)
optimizer = build_optimizer([{"params": list(model.parameters())}], cfg.optim)
perm = torch.randperm(len(data))


def ms_per_step(frozen: int, start: int, n: int = STEPS) -> float:
    for i, block in enumerate(model.blocks()):
        block.requires_grad_(i >= frozen)
    gen = torch.Generator().manual_seed(1)
    t = time.perf_counter()
    for i in range(start, start + n):
        idx = perm[i * B:(i + 1) * B]
        x = augment_batch(data.images[idx].float().div_(255), cfg.data.augment, generator=gen)
        x = normalize(x, data.mean, data.std, cfg.data.autocontrast).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), data.labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return 1e3 * (time.perf_counter() - t) / n


print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
      f"capability {torch.backends.cpu.get_cpu_capability()}")
for k in range(3):
    ms_per_step(k, 0, 20)  # warm-up
times: dict[int, list[float]] = {k: [] for k in range(3)}
for r in range(ROUNDS):
    for k in range(3):
        times[k].append(ms_per_step(k, (r * STEPS) % 400))
for k, v in times.items():
    ratio = st.median([a / b for a, b in zip(v, times[0], strict=True)])
    print(f"first {k} stages frozen: median {st.median(v):.2f} ms a step, best {min(v):.2f}; paired ratio to none {ratio:.3f}")
