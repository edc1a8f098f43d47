"""LM steps per second while other processes hold the CPUs: thread count x OpenMP wait policy x load.

A musician's DAW uses the CPU too. torch's CPU ops run on OpenMP threads that meet at a barrier after every
parallel op; a thread whose core another process holds reaches it a time slice late, and libgomp's spinning
waiters burn the cores the late thread needs. This measures, in fresh processes (libgomp reads its wait policy at
load), the real stream path (`MusicGenStream.step`: CFG, sampling, the delay pattern) of

- the demo model (tiny: a step of many small ops, where barriers dominate), and
- musicgen-small's shapes in int8 (what a laptop CPU would run live),

with 0, cores - 1 and cores busy processes (`while True: pass`, not pinned: the scheduler places them as it does a
DAW's threads).

    .venv/bin/python bench/cpu_load.py              # prints rows
    .venv/bin/python bench/run.py --only load       # the same, into BENCHMARKS.md
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODELS = ("demo", "small-int8")
# How libgomp's threads wait at a barrier: its default (spin, then sleep) or sleep at once (OMP_WAIT_POLICY=PASSIVE).
# (A first run also tried GOMP_SPINCOUNT=10000, a short spin: it collapsed as the default did, 123 ms against 118
# for small int8 on two threads with one busy process.)
POLICIES = {"default": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def worker(model: str, threads: int, seconds: float, out: str) -> None:
    """In a fresh process: build `model`, step one CFG stream for `seconds` of wall time, write the steps/s."""
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from segue.models.lm.config import SamplingParams

    torch.set_num_threads(threads)
    if model == "demo":
        from segue.models.loading.builder import load_model

        m = load_model("demo")
    else:
        import lm_speed

        m = lm_speed.random_model("small", torch.device("cpu"), torch.float32)
        m.lm.quantize_int8()
    frames = 3000  # 60 s of context: never reached in `seconds`
    with torch.no_grad():
        s = m.stream(1, SamplingParams(seed=0))
        s.start(["dub techno, deep chords"], None, total_frames=frames)
        for _ in range(8):
            s.step()
        steps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds and steps < frames - 16:
            s.step()
            steps += 1
        wall = time.perf_counter() - t0
    Path(out).write_text(json.dumps(dict(steps=steps, wall=wall)))


def _hogs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def run_one(model: str, threads: int, policy: str, hogs: int, seconds: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(POLICIES[policy])
    busy = _hogs(hogs)
    try:
        with tempfile.TemporaryDirectory(prefix="segue-load-") as tmp:
            out = Path(tmp) / "out.json"
            subprocess.run([sys.executable, __file__, "worker", model, str(threads), str(seconds), str(out)],
                           check=True, cwd=ROOT, env=env)
            r = json.loads(out.read_text())
    finally:
        for p in busy:
            p.kill()
            p.wait()
    return dict(model=model, threads=threads, policy=policy, hogs=hogs, steps_per_s=r["steps"] / r["wall"],
                ms_per_step=1000 * r["wall"] / max(r["steps"], 1))


def measure(quick: bool = False) -> list[dict]:
    from segue.daemon.cpu import usable_cpus

    cores = usable_cpus()
    seconds = 2.0 if quick else 3.0
    rows = []
    for model in MODELS[:1] if quick else MODELS:
        for hogs in sorted({0, max(cores - 1, 1), cores}):
            for threads in sorted({1, max(cores // 2, 1), cores}):
                for policy in POLICIES:
                    rows.append(run_one(model, threads, policy, hogs, seconds))
                    print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        measure("--quick" in sys.argv)
