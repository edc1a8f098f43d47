"""The GPU check: one prepared run for a machine with a CUDA GPU, sized to fit 8 minutes.

    bash bench/gpu_check.sh                        # on the GPU machine: CUDA tests, then this; BENCHMARKS.md
    .venv/bin/python bench/gpu_check.py --smoke    # on a CPU, the demo model: the same code paths in a minute

What it measures, in this order (the cheapest first, so a run cut short still reports):
- the LM step of one CFG stream in bfloat16 at the small, medium and large shapes (random weights), with CUDA
  graphs and without (`SEGUE_CUDA_GRAPHS`' switch, per stream), ms per step over a device-synchronized run;
- 1, 4 and 16 streams of the small shape stepped together (`step_streams`: one LM call per round), ms per round;
- int8: segue's int8 LM is fbgemm's, x86 CPUs only; the row says so rather than measuring a fallback;
- the daemon: `segue serve --device cuda --dtype bfloat16 --audio-device none` on a small-shaped random model saved
  in transformers' layout. Each trigger reads the daemon's clock (`status`), sends `generate start=now`, and the
  take's scheduled first sample (its `queued` event) gives trigger -> first sound on the daemon's clock (with a
  sound card the device's output latency comes on top); every take must play whole (`dropped` 0).

The results go into bench/last_run.json under "gpu" and BENCHMARKS.md is rendered again (bench/run.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import lm_speed  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _streams(model, n: int, frames: int, graphs: bool | None) -> list:
    from segue.models.lm.config import SamplingParams

    out = []
    for i in range(n):
        s = model.stream(1, SamplingParams(seed=i), cuda_graphs=graphs)
        s.start(["dub techno, deep chords"], None, total_frames=frames)
        out.append(s)
    return out


@torch.no_grad()
def step_ms(model, graphs: bool, steps: int) -> float:
    """ms per step of one CFG stream (after warm-up: the allocator, the kernels, the graph's capture)."""
    (s,) = _streams(model, 1, steps + 24, graphs)
    for _ in range(8):
        s.step()
    _sync(model.device)
    t = time.perf_counter()
    for _ in range(steps):
        s.step()
    _sync(model.device)
    return 1000 * (time.perf_counter() - t) / steps


@torch.no_grad()
def batched_ms(model, n: int, rounds: int) -> float:
    """ms per round of `n` streams stepped together in one LM call."""
    from segue.models.lm.stream import step_streams

    streams = _streams(model, n, rounds + 24, None)
    for _ in range(6):
        step_streams(streams)
    _sync(model.device)
    t = time.perf_counter()
    for _ in range(rounds):
        step_streams(streams)
    _sync(model.device)
    return 1000 * (time.perf_counter() - t) / rounds


def lm_section(device: torch.device, dtype: torch.dtype, shapes: list[str], smoke: bool) -> tuple[list, list]:
    steps, rows, batch = (20 if smoke else 200), [], []
    for shape in shapes:
        model = _model(shape, device, dtype)
        eager = step_ms(model, False, steps)
        graph = step_ms(model, True, steps) if device.type == "cuda" else None
        rows.append(dict(shape=shape, dtype=str(dtype).removeprefix("torch."), eager_ms=eager, graph_ms=graph))
        print(rows[-1], flush=True)
        if shape == shapes[0]:
            for n in (1, 4, 16):
                batch.append(dict(shape=shape, streams=n, round_ms=batched_ms(model, n, 10 if smoke else 100)))
                print(batch[-1], flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, batch


def _model(shape: str, device: torch.device, dtype: torch.dtype):
    if shape == "demo":
        from segue.models.loading.builder import load_model

        return load_model("demo", device, dtype)
    return lm_speed.random_model(shape, device, dtype)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def daemon_section(device: torch.device, dtype: torch.dtype, model_ref: str, triggers: int) -> dict:
    """Trigger -> scheduled first sample, on the daemon's own clock, over `triggers` one-second takes."""
    from segue.daemon.client import Client
    from segue.daemon.launch import ServeProcess

    with tempfile.TemporaryDirectory(prefix="segue-gpu-check-") as tmp:
        daemon = ServeProcess(Path(tmp) / "takes", ["--device", str(device), "--dtype",
                                                    str(dtype).removeprefix("torch."), "--audio-device", "none",
                                                    "--midi", "none"], model=model_ref, timeout=600)
        client = Client(daemon.endpoint, daemon.pub, timeout=30)
        try:
            rate = client.request("status")["sample_rate"]
            lat, dropped = [], 0
            for k in range(triggers):
                time.sleep(0.25)
                now = client.request("status")["clock"]
                rid = client.request("generate", prompt="dub techno", seconds=1.0, start="now", seed=k)["id"]
                queued = client.wait(rid, "queued", timeout=60)
                lat.append(1000 * (queued["start"] - now) / rate)
                dropped += client.wait(rid, timeout=60)["dropped"]
            ready = daemon.ready_line.strip()
        finally:
            client.close()
            daemon.stop()
    return dict(model=model_ref, triggers=triggers, p50_ms=statistics.median(lat), p99_ms=_percentile(lat, 0.99),
                min_ms=min(lat), max_ms=max(lat), dropped=dropped, ready=ready)


def _small_folder(tmp: Path) -> str:
    """musicgen-small's shape, random weights, saved as transformers does (what `--model FOLDER` loads)."""
    support = lm_speed._support()
    model, tok = lm_speed.build_reference("small")
    return str(support.save_musicgen(model, tok, tmp))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="on the CPU with the demo model: check this script")
    ap.add_argument("--raw", default=str(ROOT / "bench" / "last_run.json"))
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args()
    import run

    if args.smoke:
        device, dtype, shapes = torch.device("cpu"), torch.float32, ["demo"]
    elif not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; run it where the device tool lends a GPU (or --smoke on a CPU)")
    else:
        device, dtype, shapes = torch.device("cuda"), torch.bfloat16, ["small", "medium", "large"]
    info = run.machine()
    t0 = time.monotonic()
    rows, batch = lm_section(device, dtype, shapes, args.smoke)
    with tempfile.TemporaryDirectory(prefix="segue-gpu-model-") as tmp:
        ref = "demo" if args.smoke else _small_folder(Path(tmp))
        daemon = daemon_section(device, dtype, ref, 5 if args.smoke else 25)
    print(daemon, flush=True)
    result = dict(lm=rows, batch=batch, daemon=daemon, smoke=args.smoke, seconds=round(time.monotonic() - t0),
                  int8="not measured: segue's int8 LM runs fbgemm's kernels, on x86 CPUs only (`--dtype int8` on "
                       "CUDA is refused); on a GPU the LM runs in bfloat16")
    if args.smoke:
        print(json.dumps(result, indent=1))
        return
    raw = Path(args.raw)
    data = json.loads(raw.read_text())
    data["gpu"] = dict(info=info, result=result)
    raw.write_text(json.dumps(data, indent=1) + "\n")
    Path(args.out).write_text(run.render(**data))
    print(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
