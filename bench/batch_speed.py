"""Several takes at once: N LM streams stepped one after another vs batched into one call (`step_streams`).

Alternating trials in one process on the same weights, so machine noise hits both sides alike.
"""

from __future__ import annotations

import statistics
import time

import torch

import lm_speed
from segue.models.lm.config import SamplingParams
from segue.models.lm.stream import step_streams


def _streams(model, n: int, frames: int) -> list:
    out = []
    for i in range(n):
        s = model.stream(1, SamplingParams(seed=i))
        s.start(["dub techno, deep chords"], None, total_frames=frames)
        for _ in range(5):  # past the forced columns at the start
            s.step()
        out.append(s)
    return out


def _ms_per_round(fn, rounds: int) -> float:
    t = time.perf_counter()
    for _ in range(rounds):
        fn()
    return 1000 * (time.perf_counter() - t) / rounds


@torch.no_grad()
def measure(shape: str, device: torch.device, dtype: torch.dtype, counts=(1, 2, 4), rounds: int = 20,
            trials: int = 3) -> list[dict]:
    model = lm_speed.random_model(shape, device, dtype)
    frames = 5 + 3 + (rounds + 3) * (2 * trials + 1)  # enough for warm-up and every trial, within the context
    rows = []
    for n in counts:
        alone, batched = _streams(model, n, frames), _streams(model, n, frames)
        one_by_one = lambda: [s.step() for s in alone]  # noqa: E731
        together = lambda: step_streams(batched)  # noqa: E731
        _ms_per_round(one_by_one, 3)
        _ms_per_round(together, 3)
        a, b = [], []
        for _ in range(trials):
            a.append(_ms_per_round(one_by_one, rounds))
            b.append(_ms_per_round(together, rounds))
        ma, mb = statistics.median(a), statistics.median(b)
        rows.append(dict(shape=shape, device=str(device), dtype=str(dtype).replace("torch.", ""), takes=n,
                         one_by_one_ms=ma, batched_ms=mb, ratio=ma / mb))
        print(rows[-1], flush=True)
    return rows
