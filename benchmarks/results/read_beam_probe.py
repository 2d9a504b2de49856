"""Probe: decode the reader's frames by prefix beam search (the likeliest *labelling*, summing over its
alignments) instead of the best path, and combine two readers by rescoring their candidate strings with
the sum of both models' CTC log-likelihoods. 800 strings of the first run's VALIDATION digits (as
results/read_continue_probe.py draws them; the test set is not read). benchmarks/README.md, "Reading
digit strings".
Usage: MNISTLAB_DATA_DIR=... python benchmarks/results/read_beam_probe.py PER THREADS RUN [RUN ...]
"""
import sys
import time

import numpy as np
import torch
from probe_strings import Tally, digits, strings

from mnistlab.data.segment import StringImage
from mnistlab.models.ctc import beam, greedy, prefixes, restrict
from mnistlab.read_ctc import CtcReader

per, threads, runs = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
torch.set_num_threads(threads)
readers = [CtcReader.load(r) for r in runs]
_, _, vi, vl = digits(runs[0])
allowed = list(range(10))


def ctc_loglik(logp: np.ndarray, labelling: tuple[int, ...]) -> float:
    if not labelling:
        return float(logp[:, 0].sum())
    lp = torch.from_numpy(logp)[:, None, :]
    target = torch.tensor([c + 1 for c in labelling])[None]
    loss = torch.nn.functional.ctc_loss(lp, target, torch.tensor([logp.shape[0]]), torch.tensor([len(labelling)]),
                                        blank=0, reduction="sum", zero_infinity=False)
    return -float(loss)


def text(labelling) -> str:
    return "".join(str(c) for c in labelling)


tally, t0, seconds = Tally(), time.time(), {}
for level, length, img, truth in strings(vi, vl, per):
    line = StringImage.from_image(img.convert("L")).line(readers[0].height)
    logps = [r.frames(line.pixels) for r in readers]
    for k, logp in enumerate(logps):
        tag = f"m{k}"
        g = text(c for c, _, _ in greedy(logp, allowed)[0])
        tally.add(f"{tag}-greedy", level, length, g, truth)
        for width in (4, 8, 16):
            t = time.perf_counter()
            tally.add(f"{tag}-beam{width}", level, length, text(c for c, _, _ in beam(logp, allowed, width)[0]), truth)
            seconds[width] = seconds.get(width, 0.0) + time.perf_counter() - t
    if len(logps) > 1:
        avg = np.log(np.mean([np.exp(lp) for lp in logps], axis=0))
        tally.add("ens-avgframes", level, length, text(c for c, _, _ in greedy(avg, allowed)[0]), truth)
        cands = set()
        for logp in logps:
            cands.add(tuple(c for c, _, _ in greedy(logp, allowed)[0]))
            cands.update(k for k, _ in prefixes(restrict(logp, allowed), allowed, 8)[:4])
        best = max(cands, key=lambda c: sum(ctc_loglik(lp, c) for lp in logps))
        tally.add("ens-rescore", level, length, text(best), truth)
n = 40 * per * len(readers)
print(" ".join(runs), f"{time.time() - t0:.0f}s;", ", ".join(f"beam {w}: {1000 * s / n:.1f} ms a string" for w, s in seconds.items()))
print(tally.table())
