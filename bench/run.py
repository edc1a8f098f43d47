"""Run the benchmarks and write BENCHMARKS.md (machine, date, commit, and ratios measured in the same run).

    .venv/bin/python bench/run.py            # everything this machine can hold
    .venv/bin/python bench/run.py --quick    # shorter takes, small shape only
    .venv/bin/python bench/run.py --only daemon   # re-measure one section, keep the others from the last run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import batch_speed  # noqa: E402
import codec_speed  # noqa: E402
import cpu_load  # noqa: E402
import daemon_latency  # noqa: E402
import engine_budget  # noqa: E402
import fuzz as daemon_fuzz  # noqa: E402
import lm_speed  # noqa: E402
import process_speed  # noqa: E402


def machine() -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.0f} GiB"
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    # The benchmark's own outputs do not make the measured code "uncommitted".
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md",
                            ":!bench/last_run.json"], cwd=ROOT, capture_output=True, text=True)
    import transformers

    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit.stdout.strip() + (" (with uncommitted changes)" if dirty.stdout.strip() else ""),
        "cpu": f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, {mem} RAM",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def free_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable"):
            return int(line.split()[1]) / 1024**2
    return 0.0


class CpuShare:
    """Share of the machine's CPU time that other processes used since creation (/proc/stat minus this
    process's own time): how shared the box was while a measurement ran. None where /proc/stat is missing."""

    def __init__(self):
        self.start = self._now()

    @staticmethod
    def _now():
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        t = os.times()  # this process and its waited-for children (the per-shape measurements)
        return time.monotonic(), busy, t.user + t.system + t.children_user + t.children_system

    def others(self) -> float | None:
        now = self._now()
        if self.start is None or now is None or now[0] <= self.start[0]:
            return None
        wall, busy, own = (b - a for a, b in zip(self.start, now))
        return max(0.0, (busy - own) / (wall * (os.cpu_count() or 1)))


def wait_quiet(limit_s: float, busy: float = 0.1, window_s: float = 5.0) -> float | None:
    """Wait (at most `limit_s`) until other processes use less than `busy` of the CPUs over a `window_s` window.

    On a 2-core box torch's two OpenMP threads meet at a barrier in every op; while another process holds a core,
    each barrier waits for a time slice, and a decode step of many small ops gets many times slower (a small-shape
    step went from 55 ms to 2.3 s while a test suite ran). Medians and alternation cannot fix that, so each shape
    starts on a quiet machine where possible. Returns the last window's share (None without /proc/stat)."""
    deadline = time.monotonic() + limit_s
    while True:
        share = CpuShare()
        time.sleep(window_s)
        others = share.others()
        if others is None or others < busy or time.monotonic() >= deadline:
            return others
        print(f"other processes use {100 * others:.0f} % of the CPUs; waiting for a quiet machine", flush=True)


# (shape, dtype, [(take seconds, trials)]), the large shapes last; one shape's weights are held at a time.
# Short takes for the big shapes, but three alternations each: this VM's speed drifts by tens of percent over
# minutes (host-level, invisible to /proc/stat), and a median of three outlives one slow take.
LM_CPU = [
    ("small", torch.float32, [(10, 3), (30, 1)]),
    ("small", torch.bfloat16, [(2, 2)]),
    ("small", "int8", [(10, 3)]),  # segue's LM quantized from the same float32 weights, transformers in float32
    ("stereo-small", torch.float32, [(4, 2)]),
    ("medium", torch.float32, [(1, 3)]),
    ("medium", "int8", [(2, 3)]),
    ("stereo-medium", torch.float32, [(1, 3)]),
    ("audiogen-medium", torch.float32, [(1, 3)]),
    ("melody", torch.float32, [(1, 3)]),
    ("large", torch.float32, [(0.5, 3)]),
    ("stereo-large", torch.float32, [(0.5, 3)]),
    ("melody-large", torch.float32, [(0.5, 3)]),
]
LM_CPU_QUICK = [("small", torch.float32, [(4, 1)])]
LM_CUDA = ([(shape, torch.bfloat16, [(10, 3), (30, 1)]) for shape in ("small", "medium", "large")]
           + [(shape, torch.bfloat16, [(10, 2)]) for shape in ("stereo-small", "stereo-medium", "stereo-large",
                                                               "melody", "melody-large", "audiogen-medium")]
           + [("small", torch.float32, [(10, 2)])])


def lm_compare(shape: str, device: torch.device, dtype: torch.dtype, plan: list[tuple[float, int]]) -> dict:
    """`lm_speed.compare` in a fresh process: every shape starts from the allocator state of a process that has
    just built its model (transformers reallocates its cache every step, and how that is served depends on what the
    process did before), and gives all its memory back when it ends."""
    with tempfile.TemporaryDirectory(prefix="segue-bench-") as tmp:
        out = Path(tmp) / "out.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "lm_speed.py"), shape, str(device),
                        str(dtype).replace("torch.", ""), ",".join(f"{s:g}:{n}" for s, n in plan), str(out)],
                       check=True, cwd=ROOT)
        res = json.loads(out.read_text())
    res["takes"] = [(secs, [lm_speed.Result(**r) for r in mine], [lm_speed.Result(**r) for r in theirs])
                    for secs, mine, theirs in res["takes"]]
    return res


def lm_rows(shape, device, dtype, plan):
    share = CpuShare()
    out = lm_compare(shape, device, dtype, plan)
    others = share.others()
    rows = []
    for secs, mine, theirs in out["takes"]:
        ratios = [m.steps_per_s / t.steps_per_s for m, t in zip(mine, theirs)]
        rows.append(dict(shape=shape, device=device.type, dtype=str(dtype).replace("torch.", ""), seconds=secs,
                         trials=len(mine), segue=statistics.median(m.ms_per_step for m in mine),
                         segue_rtf=statistics.median(m.rtf for m in mine),
                         segue_mean=statistics.median(m.mean_ms for m in mine),
                         segue_prefill=1000 * statistics.median(m.prefill_s for m in mine),
                         floor=out["floor_ms"], floor_gb=out["floor_bytes"] / 1e9, hf_gb=out["hf_bytes"] / 1e9,
                         hf=statistics.median(t.ms_per_step for t in theirs),
                         hf_mean=statistics.median(t.mean_ms for t in theirs),
                         hf_prefill=1000 * statistics.median(t.prefill_s for t in theirs),
                         prefill_positions=out["prefill_tokens"], text_tokens=out["text_tokens"],
                         ratio=statistics.median(ratios), ratios=ratios, other_cpu=others,
                         per_step="median" if mine[0].step_ms else "mean"))
        print(rows[-1], flush=True)
    return rows


def measure_lm(quick: bool, shapes: list[str] | None = None, note: str | None = None,
               wait_s: float = 900, dtypes: list[str] | None = None) -> dict:
    """The LM section: every shape this machine can hold, each compared with transformers on one weight copy."""
    cpu = torch.device("cpu")
    plans = [(cpu, p) for p in (LM_CPU_QUICK if quick else LM_CPU)]
    if torch.cuda.is_available():
        plans += [(torch.device("cuda"), p) for p in LM_CUDA]
    rows, skipped = [], []
    info, share, bandwidth = machine(), CpuShare(), None
    for device, (shape, dtype, plan) in plans:
        if (shapes and shape not in shapes) or (dtypes and str(dtype).replace("torch.", "") not in dtypes):
            continue
        need = lm_speed.memory_needed(shape, dtype) / 2**30
        free = free_gib() if device.type == "cpu" else torch.cuda.mem_get_info(device)[0] / 2**30
        if free < need:
            skipped.append(f"{shape} ({device.type}, {str(dtype).replace('torch.', '')}): needs ~{need:.0f} GiB "
                           f"(one weight copy shared by both sides, segue's preallocated cache), {free:.0f} GiB free")
            print(skipped[-1], flush=True)
            continue
        if device.type != "cpu":
            rows += lm_rows(shape, device, dtype, plan)
            continue
        # A shape measured while another process was busy is measured again (once), the quieter result kept.
        tries = []
        for _ in range(2):
            if wait_s > 0:
                wait_quiet(wait_s)
            if bandwidth is None:
                bandwidth = lm_speed.copy_bandwidth(cpu)
            tries.append(lm_rows(shape, device, dtype, plan))
            if _busy(tries[-1]) < 0.05:
                break
            print(f"{shape}: other processes used {100 * _busy(tries[-1]):.0f} % of the CPUs; measuring it again",
                  flush=True)
        rows += min(tries, key=_busy)
    if quick:
        skipped.append("the other LM shapes: --quick run")
    if not torch.cuda.is_available():
        skipped.append("the LM on CUDA (bf16 steps, CUDA-graph step time, the 1.5 ms/step target) and the codec on "
                       "CUDA: this machine has no GPU, and none was lent to the issues that measured it")
    skipped.append("musicgen-stereo-melody and -stereo-melody-large: not asked for (a melody LM with 8 codebooks)")
    return dict(info=info, rows=rows, skipped=skipped, copy_gbs=bandwidth, other_cpu=share.others(),
                note=note)


def _busy(rows: list[dict]) -> float:
    return max((r["other_cpu"] or 0.0) for r in rows) if rows else 0.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small shape, short takes")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"), help="the Markdown report (default: BENCHMARKS.md)")
    ap.add_argument("--raw", default=str(ROOT / "bench" / "last_run.json"), help="the measurements, as JSON")
    ap.add_argument("--render", action="store_true", help="rewrite BENCHMARKS.md from bench/last_run.json only")
    ap.add_argument("--only", choices=["lm", "codec", "daemon", "batch", "fuzz", "load", "daemon_int8", "process",
                                       "budget"],
                    default=None,
                    help="measure one section again, the others kept from bench/last_run.json: lm (LM steps against "
                         "transformers), codec (streaming EnCodec), daemon (trigger -> first sound on JACK, demo "
                         "model), batch (streams stepped together), fuzz (malformed requests), load (LM steps while "
                         "other processes hold the CPUs), daemon_int8 (the daemon on small shapes in int8), process (whole `segue generate "
                         "--dtype int8` against a transformers script), budget (LM, codec and resampler per second "
                         "of audio on the daemon's threads)")
    ap.add_argument("--shapes", default=None, help="LM shapes to measure, comma-separated (default: all)")
    ap.add_argument("--dtypes", default=None, help="LM dtypes to measure, comma-separated (default: all)")
    ap.add_argument("--wait-quiet", type=float, default=900, metavar="S",
                    help="before each CPU LM shape, wait up to S seconds for other processes to leave the CPUs")
    ap.add_argument("--note", default=None, help="what else ran on the machine (written next to the LM section's "
                    "measured share of other processes' CPU time)")
    args = ap.parse_args()
    raw = Path(args.raw)
    shapes = args.shapes.split(",") if args.shapes else None
    if shapes and set(shapes) - set(lm_speed.SHAPES):
        ap.error(f"unknown shapes {sorted(set(shapes) - set(lm_speed.SHAPES))}; known: {', '.join(lm_speed.SHAPES)}")
    if args.render or args.only:
        if not raw.is_file():
            ap.error(f"{raw} does not exist: --render and --only keep the other sections from an earlier run's "
                     "measurements (run bench/run.py once without them, or point --raw at bench/last_run.json)")
        data = json.loads(raw.read_text())
        _upgrade(data)
        if args.only == "lm":
            dtypes = args.dtypes.split(",") if args.dtypes else None
            lm = measure_lm(args.quick, shapes, args.note, args.wait_quiet, dtypes)
            data["lm"] = _merge(data.get("lm"), lm) if (shapes or dtypes) and data.get("lm") else lm
        elif args.only == "codec":
            data["codec_cpu"] = codec_speed.measure(torch.device("cpu"), 4.0 if args.quick else 10.0)
            data["codec_info"] = machine()
        elif args.only:
            data[args.only] = dict(info=machine(), result=SECTIONS[args.only](args.quick))
        if args.only:
            raw.write_text(json.dumps(data, indent=1) + "\n")
        Path(args.out).write_text(render(**data))
        print(f"wrote {args.out} from {raw}")
        return
    info = machine()
    print(info, flush=True)
    cpu = torch.device("cpu")
    sections = {name: dict(info=info, result=fn(args.quick)) for name, fn in SECTIONS.items()}
    codec_cpu = codec_speed.measure(cpu, 4.0 if args.quick else 10.0)
    print(codec_cpu, flush=True)
    codec_gpu = codec_speed.measure(torch.device("cuda")) if torch.cuda.is_available() else None
    lm = measure_lm(args.quick, shapes, args.note, args.wait_quiet)
    lm["info"] = info
    data = dict(info=info, codec_cpu=codec_cpu, codec_gpu=codec_gpu, lm=lm, **sections)
    raw.write_text(json.dumps(data, indent=1) + "\n")
    Path(args.out).write_text(render(**data))
    print(f"wrote {args.out} and {raw}")


def _merge(old: dict, new: dict) -> dict:
    """`--only lm --shapes ...`: the new rows replace the old rows of their shapes (dtype and device alike) and say
    when they were measured; the rest of the section is kept."""
    key = lambda r: (r["shape"], r["device"], r["dtype"])  # noqa: E731
    fresh = {key(r) for r in new["rows"]}
    for r in new["rows"]:
        r["remeasured"] = new["info"]["date"] + (f", {new['info']['commit']}"
                                                 if new["info"]["commit"] != old["info"]["commit"] else "")
    order = {(shape, "cpu", str(dt).replace("torch.", "")): i for i, (shape, dt, _) in enumerate(LM_CPU)}
    rows = [r for r in old["rows"] if key(r) not in fresh] + new["rows"]
    rows.sort(key=lambda r: (r["device"] != "cpu", order.get(key(r), len(order))))
    skipped = [s for s in old["skipped"] if not any(s.startswith(f"{shape} (") for shape, _, _ in fresh)]
    return dict(old, rows=rows, skipped=skipped + [s for s in new["skipped"] if s not in skipped])


def _upgrade(data: dict) -> None:
    """A last_run.json from before the LM section had its own record: its rows become that section."""
    if "rows" in data:
        data["lm"] = dict(info=data["info"], rows=data.pop("rows"), skipped=data.pop("skipped", []), copy_gbs=None,
                          other_cpu=None)
    data.pop("skipped", None)


def _batch(quick: bool) -> list[dict]:
    cpu = torch.device("cpu")
    rows = batch_speed.measure("small", cpu, torch.float32, rounds=5 if quick else 10)
    if torch.cuda.is_available():
        rows += batch_speed.measure("small", torch.device("cuda"), torch.bfloat16, counts=(1, 2, 4, 8))
    return rows


SECTIONS = {"daemon": daemon_latency.measure, "batch": _batch, "fuzz": daemon_fuzz.measure, "load": cpu_load.measure,
            "daemon_int8": daemon_latency.realtime_int8, "process": process_speed.measure,
            "budget": engine_budget.measure}


def _section_info(sec: dict, info: dict) -> str:
    i = sec["info"]
    if (i["commit"], i["date"]) == (info["commit"], info["date"]):
        return ""
    return f"Measured separately: {i['date']}, commit {i['commit']}, {i['cpu']}, gpu {i['gpu']}.\n\n"


def render_daemon(sec: dict, info: dict) -> list[str]:
    lat, head = sec["result"]["latency"], sec["result"]["headroom"]
    lines = ["", "## The daemon: trigger -> first sound, and headroom (demo model, CPU)", "",
             _section_info(sec, info) +
             f"`bench/daemon_latency.py`: a real `jackd -d dummy` ({lat['rate']} Hz, {lat['period']}-frame periods), "
             "`segue serve --model demo` on it through PortAudio (audio worker process; the model on half the CPUs, one here), "
             "a JACK client recording "
             "its output. Each trigger reads JACK's frame clock and sends `generate start=now`; latency is the "
             "first non-silent recorded frame, in the JACK graph (the sound card adds JACK's playback latency, "
             f"{lat['playback_latency_ms']:.1f} ms here).", "",
             "| triggers | p50 ms | p99 ms | min ms | max ms | pacing lead ms (median) | first chunk at warm-up ms | "
             "mix horizon ms | underruns | xruns |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| {lat['triggers']} | **{lat['p50_ms']:.1f}** | **{lat['p99_ms']:.1f}** | {lat['min_ms']:.1f} | "
             f"{lat['max_ms']:.1f} | {lat['lead_ms']:.0f} | {lat['first_chunk_ms']:.0f} | {lat['horizon_ms']:.0f} | "
             f"{lat['underruns']} | {lat['xruns']} |", "",
             "Headroom: `segue serve --pace asap` renders N takes at once (their steps batched into one LM call); "
             "headroom = N x take seconds / wall seconds (1 = just real time).", "",
             "| takes at once | take s | wall s | headroom |", "|---|---|---|---|"]
    lines += [f"| {h['takes']} | {h['seconds']:g} | {h['wall_s']:.2f} | {h['headroom']:.1f}x |" for h in head]
    lines += ["", "GPU target (small, trigger -> first sound p50 <= 150 ms): not measured, no GPU was lent to "
              "this issue."]
    return lines


def render_batch(sec: dict, info: dict) -> list[str]:
    lines = ["", "## Several takes at once: one LM call per step", "",
             _section_info(sec, info) +
             "`bench/batch_speed.py`: N streams of the small shape (random weights, CFG), stepped one after "
             "another vs batched into one call (`step_streams`: the weight GEMMs are shared, attention stays per "
             "stream). ms per round of N steps, medians of alternating trials.", "",
             "| shape | device | dtype | takes | one after another ms | batched ms | speed-up |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['device']} | {r['dtype']} | {r['takes']} | {r['one_by_one_ms']:.1f} | "
              f"{r['batched_ms']:.1f} | **{r['ratio']:.2f}x** |" for r in sec["result"]]
    return lines


def render_daemon_int8(sec: dict, info: dict) -> list[str]:
    r = sec["result"]
    lines = ["", "## The daemon at musicgen-small's shapes, LM in int8, on the CPU", "",
             _section_info(sec, info) +
             f"`bench/daemon_latency.py` (`realtime_int8`): the JACK rig of the section above, `segue serve --dtype "
             f"int8` on musicgen-small's LM and facebook/encodec_32khz's codec at their full shapes (random weights "
             f"saved in transformers' layout). Ready line: "
             f"`{r['ready'][:150]}`.", "",
             f"Trigger -> first sound over {r['triggers']} takes of {r['take_s']:g} s: p50 **{r['p50_ms']:.0f} ms**, "
             f"p99 **{r['p99_ms']:.0f} ms** (min {r['min_ms']:.0f}, max {r['max_ms']:.0f}; pacing lead "
             f"{r['lead_ms']:.0f} ms median); underruns {r['underruns']}, xruns {r['xruns']}."]
    long = r.get("long")
    if long:
        lines += ["", f"One {long['bars']}-bar take at 120 bpm ({long['seconds']:.1f} s): first sound after "
                      f"{long['first_sound_ms'] / 1000:.2f} s (held back {long['held_back_s']:.2f} s so that it never "
                      f"runs dry, lead {long['lead_s']:.2f} s), dropped samples {long['dropped']}, underruns "
                      f"{long['underruns']}, xruns {long['xruns']}."]
    return lines


def render_budget(sec: dict, info: dict) -> list[str]:
    r = sec["result"]
    d = r["decode_s_per_s"]
    lines = ["", "## Where a second of live audio goes on this CPU (LM int8, codec, resampler)", "",
             _section_info(sec, info) +
             f"`bench/engine_budget.py`: in one process on the daemon's {r['threads']} torch thread(s), "
             "musicgen-small's LM shapes in int8 (50 CFG steps per second of audio, `quant.step_ms`) and the "
             "full-width 32 kHz EnCodec decoder streamed 5 frames (100 ms) per push as the daemon does, then soxr "
             "from 32 to 48 kHz. Wall seconds of work per second of audio; real time needs a sum of 1 or less. The "
             f"decoder alone, per push size: 1 frame {d['1']:.3f} s, 5 frames {d['5']:.3f} s, 25 frames "
             f"{d['25']:.3f} s per second of audio.", "",
             "| context s | LM ms/step | LM s | codec s | resampler s | sum s | real time | codec share |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        lines.append(f"| {x['context_s']:g} | {x['step_ms']:.1f} | {x['lm_s']:.3f} | {x['codec_s']:.3f} | "
                     f"{x['resample_s']:.4f} | {x['total_s']:.3f} | {x['rtf']:.2f}x | {100 * x['codec_share']:.0f} % |")
    att, c = r.get("attention"), r.get("compile")
    if att:
        lines += ["", "Self-attention of one layer at a step (2 rows, 16 heads of 64), ms, KV cache in float32 / "
                      "bfloat16: " + ", ".join(f"{a['positions']} positions {a['float32_ms']:.2f} / "
                                              f"{a['bfloat16_ms']:.2f}" for a in att)
                  + (". PyTorch's CPU kernels for bfloat16 attention are slower here than reading twice the bytes "
                     "in float32, so the KV cache stays float32."
                     if all(a["bfloat16_ms"] > a["float32_ms"] for a in att) else
                     ". bfloat16 was faster at some lengths in this run: worth a bfloat16 KV cache here.")]
    if c:
        lines += ["", "`torch.compile` (inductor, dynamic shapes) of the int8 step at 250 positions: "
                  + (f"failed ({c['error']})" if "error" in c else
                     f"eager {c['eager_ms']:.1f} ms, compiled {c['compiled_ms']:.1f} ms, first call "
                     f"{c['first_call_ms'] / 1000:.1f} s")
                  + (". Dynamo cannot trace fbgemm's packed int8 weights, so the graph breaks at every projection "
                     "and recompiles per layer (past its recompile limit some layers run eager): compiling does not "
                     "pay on CPU, and segue does not compile there."
                     if "error" in c or c["compiled_ms"] >= 0.95 * c["eager_ms"] else
                     ". Compiled was faster in this run, though dynamo breaks the graph at every fbgemm projection: "
                     "measure again on a quiet machine before acting on it.")]
    return lines


def render_targets(lm: dict, gpu: dict | None, daemon_int8: dict | None, process: dict | None) -> list[str]:
    """Issue 13's targets next to what this file measured, and why a missed one was missed."""
    rows = {(r["shape"], r["device"], r["dtype"]): r for r in lm["rows"]}
    lines = ["", "## Real time without a GPU: the targets (issue 13)", "",
             "| target | measured | reached |", "|---|---|---|"]
    for shape, want in (("small", 1.0), ("medium", 0.3)):
        r = rows.get((shape, "cpu", "int8"))
        got = "not measured" if r is None else (f"{r['segue_rtf']:.2f}x real time ({r['segue']:.1f} ms/step, "
                                                f"{r['ratio']:.1f}x transformers float32)")
        lines.append(f"| {shape}, int8, CPU, CFG, 10 s context: {want:g}x real time | {got} | "
                     f"{'-' if r is None else 'yes' if r['segue_rtf'] >= want else '**no**'} |")
    p = process["result"] if process else None
    lines.append("| whole `segue generate --dtype int8` process: 3x transformers float32 | "
                 + ("not measured" if p is None else
                    f"{p['ratio']:.2f}x ({p['seconds']:g} s of audio: segue {p['segue_s']:.1f} s, transformers "
                    f"{p['transformers_s']:.1f} s, launch to WAV; `bench/process_speed.py`, measured "
                    f"{process['info']['date']})") + " | "
                 + ("-" if p is None else "yes" if p["ratio"] >= 3 else "**no**") + " |")
    d = daemon_int8["result"] if daemon_int8 else None
    lines.append("| the daemon, small int8: an 8-bar take in real time, no underruns | "
                 + ("not measured" if not d or not d.get("long") else
                    f"plays whole ({d['long']['dropped']} samples dropped, {d['long']['underruns']} underruns) after "
                    f"{d['long']['held_back_s']:.0f} s held back: not in real time") + " | "
                 + ("-" if not d or not d.get("long") else "**no**") + " |")
    g = next((x for x in gpu["result"]["lm"] if x["shape"] == "small"), None) if gpu else None
    lines.append("| GPU, small, bf16 graph step: 1.5 ms | "
                 + ("not measured: no GPU lent yet (bench/gpu_check.sh)" if g is None else f"{g['graph_ms']:.2f} ms")
                 + " | " + ("-" if g is None else "yes" if g["graph_ms"] <= 1.5 else "**no**") + " |")
    lines += ["", "Why: an int8 step reads 0.36 GB of weights, and one core of this box reads about 20-30 GB/s (fbgemm's "
              "products take 12-16 ms a step on one thread); the attention over the float32 KV cache grows with the "
              "context (about 1 ms a step per second of context at small's shape: the section on where a second "
              "goes), and PyTorch's bfloat16 attention, which would read half the bytes, is slower here; "
              "`torch.compile` does not pay either (same section). In the daemon the codec's decoder and the JACK "
              "clients share the same two cores: the decoder takes 0.34 s per second of audio on one thread since "
              "its 1024-channel transposed convolution and LSTM left oneDNN's slow paths (0.76 s before). Two "
              "threads make the step about a fifth faster on an idle machine but collapse when anything else runs "
              "(section above), so segue uses one here. An Intel Xeon of the same size ran float32 about 3x faster "
              "than this AMD EPYC (its rows above)."]
    return lines


def render_load(sec: dict, info: dict) -> list[str]:
    rows = sec["result"]
    loads = sorted({r["hogs"] for r in rows})
    lines = ["", "## A busy machine: LM steps while other processes hold the CPUs", "",
             _section_info(sec, info) +
             "`bench/cpu_load.py`: one CFG stream stepped for a few seconds (`MusicGenStream.step`: sampling and "
             "the delay pattern included) in a fresh process, while N processes spin (`while True: pass`, not "
             "pinned, as a DAW's threads are not). ms per step; libgomp's default wait policy (spin, then sleep) "
             "and `OMP_WAIT_POLICY=PASSIVE` (sleep at once). segue's default is half the CPUs, at least one "
             "thread (daemon/cpu.py).", "",
             "| model | threads | wait policy | " + " | ".join(f"{n} busy" for n in loads) + " |",
             "|---|---|---|" + "---|" * len(loads)]
    keys = sorted({(r["model"], r["threads"], r["policy"]) for r in rows},
                  key=lambda k: (cpu_load.MODELS.index(k[0]), k[1], list(cpu_load.POLICIES).index(k[2])))
    for model, threads, policy in keys:
        cells = []
        for n in loads:
            r = next((r for r in rows if (r["model"], r["threads"], r["policy"], r["hogs"]) == (model, threads,
                                                                                                policy, n)), None)
            cells.append("-" if r is None else f"{r['ms_per_step']:.1f}")
        lines.append(f"| {model} | {threads} | {policy} | " + " | ".join(cells) + " |")
    return lines


def _f(x, fmt: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, fmt)


def _shapes_text(rows: list[dict]) -> str:
    names = {"small": "small", "medium": "medium", "large": "large"}
    mono = ", ".join(f"{names[n]} {s.dim}/{s.heads}/{s.layers}" for n, s in lm_speed.SHAPES.items() if n in names)
    tokens = rows[0].get("text_tokens", 11) if rows else 11
    return (f"Random weights with the published MusicGen decoder shapes (dim/heads/layers: {mono}; `stereo-*` the "
            "same with 8 codebooks, delays [0, 0, 1, 1, 2, 2, 3, 3], 8 embedding tables and 8 heads; `melody` "
            "(musicgen-melody, medium scale) and `melody-large` with no cross-attention and the 235 chroma frames "
            "plus the text prepended, compared with transformers' `MusicgenMelodyForConditionalGeneration` given "
            "the same one-hot chroma; `audiogen-medium`: MusicGen's medium LM with a 10 s context, T5-large-wide "
            "text and a 16 kHz codec; transformers has no AudioGen, so its reference is transformers' MusicGen with "
            "the identical LM shape). CFG 3 (batch of 2 rows), top-k 250 sampling, "
            f"a {tokens}-token text prompt (T5 gives 12 for 'dub techno, deep chords, 120 bpm'). A step is one column of 4 tokens (8 in stereo); real "
            "time needs 50 steps/s (RTF >= 1).")


def render_lm(lm: dict, info: dict) -> list[str]:
    rows = lm["rows"]
    lines = ["", "## LM decode: segue vs transformers `generate`", "", _section_info(lm, info) + _shapes_text(rows), "",
             "Both sides read ONE copy of the weights: segue's LM is made from the transformers model's state dict by "
             "segue's own loader mapping, and transformers' q/k/v projections, embeddings and heads are then pointed "
             "at segue's packed tensors (the rest is shared as it is). So the large shapes fit on a machine that "
             "holds them once, and both read the same bytes. Takes alternate between the two, in one process. Each "
             "take is timed in two parts: the prefill (the first forward: conditioning and prompt, for melody the "
             "chroma and text prefix; transformers' MusicGen `generate` runs that first forward twice, see below) "
             "and the decode steps after it. On CPU every step is timed and ms/step is the median step of the take "
             "(a burst of another process's load moves it little; the means are in `bench/last_run.json`); on CUDA "
             "it is the take's decode time over its steps. Medians over the trials; the ratio is the median of the "
             "per-trial ratios.", "",
             "Weights read per step: what one decode step streams from memory, counted from the shape (q/k/v/o and "
             "the FFN of each layer, 12·dim² per layer, and the K heads; the embedding tables are only gathered). "
             "segue folds the cross-attention query/output projections into the conditioning, so a MusicGen or "
             "AudioGen step reads no cross-attention weights; transformers reads `q_proj` and `out_proj` of every "
             "`encoder_attn` (2·dim² more per layer, its cross keys/values are cached). A melody LM has no "
             "cross-attention: both read the same bytes. The weight floor is the bare GEMMs of segue's step over "
             "those weights, measured per shape in the same run (each layer's best of 5, before and after the "
             "takes, summed): what reading them costs here; the GB/s next to it is the bandwidth those GEMMs "
             "reached."]
    if lm.get("copy_gbs"):
        lines[-1] += (f" For scale: copying a 1 GiB tensor ran at {lm['copy_gbs']:.1f} GB/s (bytes read + bytes "
                      "written) in this run.")
    shared = lm.get("other_cpu")
    if shared is not None:
        per = [r["other_cpu"] for r in rows if r.get("other_cpu") is not None]
        spread = (f" ({100 * min(per):.0f} to {100 * max(per):.0f} % while one shape or another was measured)"
                  if len(per) > 1 else "")
        lines += ["", f"Other processes used {100 * shared:.0f} % of the machine's CPU time while this section ran"
                  f"{spread}." + (" **The box was shared**" + (f" ({lm['note']})" if lm.get("note") else "") +
                                  ": absolute times are inflated by it; the ratios and the time above the floor "
                                  "are what to read." if shared >= 0.05 else "")]
    lines += ["",
              "| shape | device | dtype | take | trials | prefill ms (positions): segue / transformers | "
              "segue ms/step | segue RTF | weights read per step GB: segue / transformers | weight floor ms/step "
              "(GB/s) | transformers ms/step | above the floor: segue / transformers ms | "
              "segue / transformers steps/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        hf = r.get("hf")
        prefill = (f"{_f(r.get('segue_prefill'), '.0f')} / {_f(r.get('hf_prefill'), '.0f')} "
                   f"({r.get('prefill_positions', '-')})")
        gb = f"{_f(r.get('floor_gb'), '.2f')} / {_f(r.get('hf_gb'), '.2f')}"
        floor = r["floor"]
        floor_s = f"{floor:.1f}" + (f" ({r['floor_gb'] / floor * 1000:.0f})" if r.get("floor_gb") else "")
        above = f"{r['segue'] - floor:.1f} / " + (f"{hf - floor:.1f}" if hf is not None else "-")
        ratio = (f"**{r['ratio']:.2f}x** ({', '.join(f'{x:.2f}' for x in r['ratios'])})"
                 if r["ratio"] is not None else "n/a")
        busy = r.get("other_cpu") is not None and r["other_cpu"] >= 0.1
        note = (" (busy)" if busy else "") + (f" (re-measured {r['remeasured']})" if r.get("remeasured") else "")
        lines.append(f"| {r['shape']}{note} | {r['device']} | {r['dtype']} | {r['seconds']:g} s | {r['trials']} | "
                     f"{prefill} | {r['segue']:.1f} | {r['segue_rtf']:.3f} | {gb} | {floor_s} | "
                     f"{_f(hf, '.1f', 'not run')} | {above} | {ratio} |")
    if any(r.get("other_cpu") is not None and r["other_cpu"] >= 0.1 for r in rows):
        lines += ["", "(busy): other processes used 10 % or more of the CPUs while this shape was measured (after "
                  "waiting for a quiet machine as long as `--wait-quiet` allows): its times are inflated."]
    target = [r for r in rows if r["shape"] == "small" and r["device"] == "cpu" and r["dtype"] == "float32"
              and r["ratio"] is not None]
    if target:
        verdicts = ", ".join(f"{r['seconds']:g} s takes {r['ratio']:.2f}x ({'met' if r['ratio'] >= 1.5 else 'not met'})"
                             for r in target)
        lines += ["", f"Target (2-core CPU, small, float32: segue >= 1.5x transformers' steps/s): {verdicts}."]
    return lines


def _reading(rows: list[dict]) -> list[str]:
    """'Reading the numbers': what the LM rows show, with the figures computed from the shapes and the rows."""
    by: dict[tuple, dict] = {}
    for r in rows:  # a shape's first (shortest-take) row
        by.setdefault((r["shape"], r["device"], r["dtype"]), r)
    cpu = [r for r in rows if r["device"] == "cpu" and r["dtype"] == "float32"]
    out = []
    if cpu:
        gbs = [r["floor_gb"] for r in cpu if r.get("floor_gb")]
        if gbs:
            out.append(f"- On CPU a float32 step is bound by reading the weights: {min(gbs):.2f} GB (small) to "
                       f"{max(gbs):.2f} GB (stereo-large) per step. The floor is measured per shape in the same run "
                       "because this VM's bandwidth drifts by tens of percent within an hour, unseen by its load "
                       "figures (three quiet runs of this section on one afternoon put the small floor at 44, 47 and "
                       "58 ms). What an implementation controls is the time above the floor: that column, and the "
                       "ratio, are the comparisons that survive a noisy machine.")
    extra = {s: lm_speed.SHAPES[s].step_bytes(4, True) - lm_speed.SHAPES[s].step_bytes(4, False)
             for s in ("small", "medium", "large")}
    out.append("- segue's time above the floor is self-attention over the cache (it grows with the take: about 6 ms "
               "at position 250, 17 ms at 750 for small on a quiet run), the folded cross-attention, and per-op "
               "dispatch (about 4 ms for 24 layers, twice that for 48). transformers adds `torch.cat` growth of the "
               "whole cache every step, mask and position rebuilding and its logits-processor chain, so its step "
               "time grows faster with the take; for the text-conditioned shapes it also reads the cross-attention "
               "query and output weights: " + ", ".join(f"{extra[s] / 1e9:.2f} GB more per step for {s}"
                                                        for s in extra) + " at float32.")
    mel = [by.get((s, "cpu", "float32")) for s in ("melody", "melody-large")]
    text = [by.get((s, "cpu", "float32")) for s in ("medium", "stereo-medium", "audiogen-medium", "large",
                                                     "stereo-large")]
    if all(mel) and all(text):
        m, ml = lm_speed.SHAPES["melody"], lm_speed.SHAPES["melody-large"]
        prefix = lm_speed.CHROMA_LENGTH + mel[0]["text_tokens"]
        kv = [2 * s.layers * 2 * prefix * s.dim * 4 / 1e9 for s in (m, ml)]
        room = [2 * s.layers * 2 * lm_speed.CHROMA_LENGTH * s.dim * 4 / 1e9 for s in (m, ml)]
        ratios = [r["ratio"] for r in text]
        out.append(
            f"- MusicGen-Melody has no cross-attention, so transformers reads no more weight bytes than segue and "
            f"segue's lead is its overhead alone: {mel[0]['ratio']:.2f}x (melody) and {mel[1]['ratio']:.2f}x "
            f"(melody-large), against {min(ratios):.2f}x to {max(ratios):.2f}x for the medium and large "
            f"text-conditioned rows. Its conditioning is {prefix} positions of the sequence ({lm_speed.CHROMA_LENGTH} "
            f"chroma frames, {mel[0]['text_tokens']} text tokens) that stay in the KV cache for the whole take: "
            f"every step attends over them, {kv[0]:.2f} GB (melody) and {kv[1]:.2f} GB (melody-large) more keys and "
            f"values read per float32 step for the two CFG rows ({100 * kv[0] / mel[0]['floor_gb']:.0f} % and "
            f"{100 * kv[1] / mel[1]['floor_gb']:.0f} % of the weights), and segue's "
            f"preallocated cache is {room[0]:.2f} / {room[1]:.2f} GB larger than a text model's (it holds the "
            f"chroma besides the room for 256 text positions). The prefill pushes {prefix + 1} positions x 2 rows "
            f"through all 48 layers: GEMM-bound, {mel[0]['segue_prefill'] / 1000:.1f} s / "
            f"{mel[0]['hf_prefill'] / 1000:.1f} s (segue / transformers) for melody and "
            f"{mel[1]['segue_prefill'] / 1000:.1f} s / {mel[1]['hf_prefill'] / 1000:.1f} s for melody-large here, "
            f"against {text[0]['segue_prefill'] / 1000:.2f} s for medium: on this CPU a melody take's first sound "
            "comes seconds after the trigger. The unconditional CFG row's prefix (null chroma, no text) is the same "
            "for every take and could be computed once per model; segue computes it again for each take.")
    st = [(by.get((s, "cpu", "float32")), by.get((f"stereo-{s}", "cpu", "float32"))) for s in ("small", "medium",
                                                                                              "large")]
    heads = [(lm_speed.SHAPES[f"stereo-{s}"].step_bytes(4, False) - lm_speed.SHAPES[s].step_bytes(4, False)) / 1e6
             for s in ("small", "medium", "large")]
    out.append(f"- Stereo's 8 codebooks add 4 heads to the output GEMM ({heads[0]:.0f} / {heads[1]:.0f} / "
               f"{heads[2]:.0f} MB more per float32 step for small / medium / large, 1 to 3 %) and gather 8 "
               "embedding rows instead of 4; the step is otherwise mono's."
               + (" Mono / stereo ratios here: " + ", ".join(f"{a['ratio']:.2f}x / {b['ratio']:.2f}x"
                                                              for a, b in st if a and b) + "." if all(a and b for a, b in st)
                  else ""))
    ag, md = by.get(("audiogen-medium", "cpu", "float32")), by.get(("medium", "cpu", "float32"))
    out.append("- AudioGen-medium's step is the medium LM's step: its 10 s context only shrinks segue's "
               "preallocated cache and its T5-large width only changes the once-per-prompt projection"
               + (f"; the two rows ({md['ratio']:.2f}x and {ag['ratio']:.2f}x) differ by the machine's noise only."
                  if ag and md else "."))
    out.append("- transformers 5.x's MusicGen `generate` runs the first forward twice (its own `_prefill`, whose "
               "result `_sample` does not use, then `_sample`'s): for the text-conditioned shapes its prefill column "
               "is two forwards. MusicGen-Melody's `generate` runs it once.")
    out.append("- transformers grows its cache with `torch.cat` every step (for melody-large: 48 layers x keys and "
               "values x [2, 32, ~250, 64] float32, about 0.4 GB allocated and freed per step). Whether glibc serves "
               "that from reused heap or from fresh zeroed pages depends on what the process did before: with the "
               "heap trimmed between shapes, transformers' melody-large step took 776 ms instead of ~465 ms, and a "
               "medium-scale one went from 0 to ~4000 page faults per step. So each shape runs in a fresh process, "
               "as a user's would after loading its model. segue preallocates its cache and does not allocate per "
               "step.")
    out.append("- Two OpenMP threads on two cores meet at a barrier in every op; while another process holds a core "
               "each barrier waits for a time slice, and a small step went from 55 ms to 2.3 s while a test suite "
               "ran. Each shape therefore waits for a quiet machine (`--wait-quiet`) and is measured again if other "
               "processes were busy; the section records how much CPU they used.")
    out.append("- Cross-attention folding reads fewer bytes only for prompts shorter than head_dim (64) tokens; "
               "longer prompts use the published form and lose that part of the gain.")
    out.append("- On a GPU the same step is captured in a CUDA graph, which removes the per-op dispatch that makes up "
               "much of segue's CPU overhead; the same code measures every shape there in bf16 (not run: no GPU).")
    return out


def render_fuzz(sec: dict, info: dict) -> list[str]:
    r = sec["result"]
    codes = ", ".join(f"{k} {n}" for k, n in sorted(r["codes"].items(), key=lambda kv: -kv[1]))
    return ["", "## The daemon under a fuzz (demo model, no sound card, loopback)", "",
            _section_info(sec, info) +
            f"`bench/fuzz.py`: {r['zmq']:,} malformed ZeroMQ requests, then {r['osc']:,} malformed OSC datagrams "
            "(tests/fuzz_inputs.py: bad JSON, deep nesting, 4000-digit integers, nulls, wrong types, paths outside, "
            "negative bundle sizes, unknown type tags, cut arguments, bad UTF-8, deep bundles), to `segue serve` "
            "while an endless take plays and another client polls `status` every 20 ms.", "",
            "| ZeroMQ requests | answered in s | OSC datagrams | answered | in s | status p50 ms | status p99 ms | "
            "take still playing | take dropped samples |", "|---|---|---|---|---|---|---|---|---|",
            f"| {r['zmq']:,} | {r['zmq_s']:.1f} | {r['osc']:,} | {r['osc_answered']:,} | {r['osc_s']:.1f} | "
            f"{r['status_p50_ms']:.1f} | **{r['status_p99_ms']:.1f}** | {'yes' if r['still_playing'] else 'NO'} | "
            f"**{r['dropped']}** |", "",
            f"ZeroMQ answers by code: {codes} (none `internal`)."]


def render_gpu(sec: dict | None, info: dict) -> list[str]:
    lines = ["", "## GPU check (bench/gpu_check.sh)", ""]
    if sec is None:
        return lines + ["Not run yet: no GPU has been lent to a session since the check was written. "
                        "`bash bench/gpu_check.sh` on a CUDA machine runs the CUDA tests and fills this section."]
    r = sec["result"]
    lines += [_section_info(sec, info) + f"One run, {r['seconds']} s. LM: one CFG stream, random weights, ms per "
              "step over a device-synchronized run; CUDA graphs on and off.", "",
              "| shape | dtype | eager ms/step | graph ms/step | real time (graph) |", "|---|---|---|---|---|"]
    for x in r["lm"]:
        g = x["graph_ms"]
        lines.append(f"| {x['shape']} | {x['dtype']} | {x['eager_ms']:.2f} | {_f(g, '.2f')} | "
                     f"{'-' if g is None else f'{20.0 / g:.1f}x'} |")
    lines += ["", "Streams stepped together (`step_streams`, one LM call per round):", "",
              "| shape | streams | ms per round | ms per stream-step |", "|---|---|---|---|"]
    lines += [f"| {b['shape']} | {b['streams']} | {b['round_ms']:.2f} | {b['round_ms'] / b['streams']:.2f} |"
              for b in r["batch"]]
    d = r["daemon"]
    lines += ["", f"int8: {r['int8']}.", "",
              f"The daemon (`{d['ready'][:160]}`): trigger -> first sound on the daemon's clock (its scheduled first "
              f"sample; a sound card adds its output latency) over {d['triggers']} one-second takes: p50 "
              f"**{d['p50_ms']:.1f} ms**, p99 **{d['p99_ms']:.1f} ms** (min {d['min_ms']:.1f}, max "
              f"{d['max_ms']:.1f}); samples dropped: {d['dropped']}."]
    return lines


def render(info, codec_cpu, codec_gpu, lm, daemon=None, batch=None, fuzz=None, load=None, gpu=None,
           daemon_int8=None, process=None, budget=None, codec_info=None) -> str:
    lines = ["# Benchmarks", "",
             "Written by `bench/run.py` (`make bench`). Ratios compare runs made in the same process on the same "
             "weights, alternating, so machine noise hits both sides; absolute times on shared CPUs drift between "
             "runs.", "",
             "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in info.items()]
    lines += render_lm(lm, info)
    lines += ["", "## Streaming EnCodec (32 kHz, real shape, random weights)", "",
              (_section_info(dict(info=codec_info), info) if codec_info else "") +
              "Real-time factor = audio seconds per wall second, PCM copied to the host on every push, on torch's "
              "default threads.", "",
              "| measurement | CPU |" + (" GPU |" if codec_gpu else ""),
              "|---|---|" + ("---|" if codec_gpu else "")]
    for k, v in codec_cpu.items():
        lines.append(f"| {k} | {v:.2f} |" + (f" {codec_gpu[k]:.2f} |" if codec_gpu else ""))
    if daemon:
        lines += render_daemon(daemon, info)
    if batch:
        lines += render_batch(batch, info)
    if fuzz:
        lines += render_fuzz(fuzz, info)
    if daemon_int8:
        lines += render_daemon_int8(daemon_int8, info)
    if budget:
        lines += render_budget(budget, info)
    if load:
        lines += render_load(load, info)
    lines += render_gpu(gpu, info)
    lines += render_targets(lm, gpu, daemon_int8, process)
    lines += ["", "## Not measured", ""] + [f"- {s}" for s in lm["skipped"]]
    lines += ["", "## Reading the numbers", ""] + _reading(lm["rows"])
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
