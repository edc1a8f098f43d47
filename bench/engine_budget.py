"""Where a second of live audio goes on this CPU: the LM, the codec and the resampler, measured in one run, on the
threads the daemon uses (daemon/cpu.py), at musicgen-small's shapes with the LM in int8 and the full-width 32 kHz
EnCodec (random weights).

The daemon's engine thread does all three in turn for every chunk: 50 LM steps (CFG's two rows), a streaming decode
of 50 frames pushed `chunk_frames` at a time (5: the daemon's default), and soxr's streaming resampler from 32 kHz
to the device rate (48 kHz here). Seconds of work per second of audio, each part and their sum; the real-time factor
is 1 / that sum. The LM's step slows as its context grows, so it is timed at 1, 5, 10 and 20 s of context.

Two choices for the rest of the step are measured in the same run: self-attention over a bfloat16 KV cache against
float32 (half the bytes to read), and `torch.compile` (inductor) of the int8 step against eager.

    .venv/bin/python bench/engine_budget.py          # prints the rows
    .venv/bin/python bench/run.py --only budget      # the same, into BENCHMARKS.md
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import soxr
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

CONTEXTS_S = (1, 5, 10, 20)
DEVICE_RATE = 48000


def resample_s_per_s(seconds: float, chunk_frames: int, channels: int = 1) -> float:
    """Wall seconds soxr's streaming resampler takes per second of 32 kHz audio, fed as the daemon feeds it."""
    chunk = chunk_frames * 640
    x = (np.random.default_rng(0).standard_normal((int(seconds * 32000), channels)) * 0.1).astype(np.float32)
    rs = soxr.ResampleStream(32000, DEVICE_RATE, channels, dtype="float32", quality="HQ")
    t = time.perf_counter()
    for i in range(0, len(x), chunk):
        rs.resample_chunk(x[i : i + chunk], last=i + chunk >= len(x))
    return (time.perf_counter() - t) / seconds


def attention_ms(positions: int, dtype: torch.dtype, reps: int = 50) -> float:
    """ms of one layer's self-attention at a step (CFG's 2 rows, small's 16 heads of 64) over `positions` cached
    keys and values held in `dtype`: what a bf16 KV cache would cost instead of float32's."""
    import torch.nn.functional as F

    q = torch.randn(2, 16, 1, 64, dtype=dtype)
    k, v = torch.randn(2, 16, positions, 64, dtype=dtype), torch.randn(2, 16, positions, 64, dtype=dtype)
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v)
    t = time.perf_counter()
    for _ in range(reps):
        F.scaled_dot_product_attention(q, k, v)
    return (time.perf_counter() - t) / reps * 1000


def compiled_step_ms(lm, position: int, steps: int = 20) -> dict:
    """The int8 step eager against `torch.compile` (inductor) of the same forward, at one context: whether compiling
    pays on this CPU, and what it costs at warm-up."""
    from segue.models.lm.quant import scratch_state

    def run(fn) -> tuple[float, float]:
        state, tokens = scratch_state(lm, position, steps)
        times = []
        for _ in range(steps):
            t = time.perf_counter()
            fn(tokens, state)
            times.append(1000 * (time.perf_counter() - t))
        return times[0], sorted(times[5:])[len(times[5:]) // 2]

    with torch.no_grad():
        _, eager = run(lm)
        try:
            with warnings.catch_warnings():  # dynamo's graph-break and recompile-limit notices: the finding is the time
                warnings.simplefilter("ignore")
                logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
                first, compiled = run(torch.compile(lm.forward, dynamic=True))
        except Exception as exc:  # noqa: BLE001 - a compiler that cannot build here is a finding, not a crash
            return dict(eager_ms=eager, error=f"{type(exc).__name__}: {str(exc)[:200]}")
    return dict(eager_ms=eager, compiled_ms=compiled, first_call_ms=first)


def measure(quick: bool = False) -> dict:
    import codec_speed
    import lm_speed

    from segue.daemon.cpu import default_threads
    from segue.models.codec.config import ENCODEC_32KHZ
    from segue.models.lm.quant import step_ms
    from segue.models.loading.demo import random_codec

    threads = default_threads()
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    model = lm_speed.random_model("small", cpu, torch.float32)
    lm = model.lm.quantize_int8()
    codec = random_codec(ENCODEC_32KHZ, 0)
    seconds = 4.0 if quick else 10.0
    codes = torch.randint(0, codec.cfg.bins, (1, codec.cfg.n_q, int(seconds * codec.cfg.frame_rate)))
    codec_speed.stream_decode_rtf(codec, codes[..., :50], 5)  # warm-up
    decode = {chunk: 1.0 / codec_speed.stream_decode_rtf(codec, codes, chunk) for chunk in (1, 5, 25)}
    resample = resample_s_per_s(seconds, 5)
    rows = []
    with torch.no_grad():
        for ctx in CONTEXTS_S:
            ms = step_ms(lm, int(ctx * 50), warm=3, timed=7 if quick else 15)
            lm_s = ms * 50 / 1000
            total = lm_s + decode[5] + resample
            rows.append(dict(context_s=ctx, step_ms=ms, lm_s=lm_s, codec_s=decode[5], resample_s=resample,
                             total_s=total, rtf=1.0 / total, codec_share=decode[5] / total))
            print(f"{ctx:g} s of context: LM {lm_s:.3f} s + codec {decode[5]:.3f} s + resampler {resample:.4f} s "
                  f"per second of audio = {1 / total:.2f}x real time", file=sys.stderr, flush=True)
    attention = [dict(positions=p, float32_ms=attention_ms(p, torch.float32),
                      bfloat16_ms=attention_ms(p, torch.bfloat16)) for p in (250, 500, 1000)]
    compiled = compiled_step_ms(lm, 250)
    print(f"attention {attention}, compile {compiled}", file=sys.stderr, flush=True)
    return dict(threads=threads, decode_s_per_s={str(k): v for k, v in decode.items()}, rows=rows,
                attention=attention, compile=compiled)


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter codec clip, fewer timed steps")
    print(json.dumps(measure(ap.parse_args().quick), indent=1))
