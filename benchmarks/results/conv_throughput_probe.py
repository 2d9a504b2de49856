"""Probe: how fast the default model's convolutions run against what this CPU's bf16 matmul reaches.

For each conv of `mnist-fast`'s fastcnn (batch 128, bf16, channels_last, as trained), the forward,
input-gradient and weight-gradient times (best of 5 x 200 calls) and their GFLOP/s (2 x
multiply-adds / time); then a 2048 x 2048 bf16 matmul's GFLOP/s as the practical ceiling.
Usage: python benchmarks/results/conv_throughput_probe.py [THREADS]
"""

import platform
import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
B = 128
CONVS = {"stage 1 (stride-2 stem)": (1, 16, 2, 28), "stage 2 (14 x 14)": (16, 32, 1, 14), "stage 3 (7 x 7)": (32, 64, 1, 7)}


def best_ms(f, n: int = 200) -> float:
    for _ in range(20):
        f()
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            f()
        times.append((time.perf_counter() - t) / n)
    return 1e3 * min(times)


print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, batch {B}, bf16, channels_last")
print(f"{'conv':26s} {'MACs/batch':>12s} {'fwd ms':>8s} {'dgrad ms':>9s} {'wgrad ms':>9s} {'fwd GFLOP/s':>12s} {'wgrad GFLOP/s':>14s}")


def conv_times(c_in: int, c_out: int, stride: int, side: int) -> tuple[int, float, float, float]:
    """Multiply-adds a batch, and forward, input-gradient and weight-gradient ms of one conv."""
    cl = torch.channels_last
    x = torch.randn(B, c_in, side, side, dtype=torch.bfloat16).contiguous(memory_format=cl)
    w = torch.randn(c_out, c_in, 3, 3, dtype=torch.bfloat16).contiguous(memory_format=cl)
    y = F.conv2d(x, w, stride=stride, padding=1)
    g = torch.randn_like(y).contiguous(memory_format=cl)

    def grad(mask: list[bool]) -> None:
        torch.ops.aten.convolution_backward(g, x, w, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, mask)

    fwd = best_ms(lambda: F.conv2d(x, w, stride=stride, padding=1))
    return y.numel() * c_in * 9, fwd, best_ms(lambda: grad([True, False, False])), best_ms(lambda: grad([False, True, False]))


for name, shape in CONVS.items():
    macs, fwd, dgrad, wgrad = conv_times(*shape)
    print(f"{name:26s} {macs / 1e6:10.1f} M {fwd:8.3f} {dgrad:9.3f} {wgrad:9.3f} {2 * macs / fwd / 1e6:12.0f} {2 * macs / wgrad / 1e6:14.0f}")
a = torch.randn(2048, 2048, dtype=torch.bfloat16)
b = torch.randn(2048, 2048, dtype=torch.bfloat16)
mm = best_ms(lambda: a @ b, n=10)
print(f"2048^3 bf16 matmul: {mm:.2f} ms, {2 * 2048 ** 3 / mm / 1e6:.0f} GFLOP/s")
