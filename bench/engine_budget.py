"""Where a second of live audio goes on this CPU: the LM, the codec and the resampler, measured in one run, on the
threads the daemon uses (daemon/cpu.py), at musicgen-small's shapes with the LM in int8 and the full-width 32 kHz
EnCodec (random weights).

The daemon's engine thread does all three in turn for every chunk: 50 LM steps (CFG's two rows), a streaming decode
of 50 frames pushed `chunk_frames` at a time (5: the daemon's default), and soxr's streaming resampler from 32 kHz
to the device rate (48 kHz here). Seconds of work per second of audio, each part and their sum; the real-time factor
is 1 / that sum. The LM's step slows as its context grows, so it is timed at 1, 5, 10 and 20 s of context.

    .venv/bin/python bench/engine_budget.py          # prints the rows
    .venv/bin/python bench/run.py --only budget      # the same, into BENCHMARKS.md
"""

from __future__ import annotations

import sys
import time
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
            print(rows[-1], flush=True)
    return dict(threads=threads, decode_s_per_s={str(k): v for k, v in decode.items()}, rows=rows)


if __name__ == "__main__":
    import json

    print(json.dumps(measure("--quick" in sys.argv), indent=1))
