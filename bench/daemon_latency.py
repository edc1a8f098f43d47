"""The daemon as a musician meets it: trigger -> first sound at the JACK output, and headroom.

- Latency: a real `jackd -d dummy` (48 kHz, 256-frame periods), `segue serve --model demo` on it through PortAudio,
  a JACK client recording the daemon's output ports. Each trigger reads JACK's frame clock, sends
  `generate start=now`, and the first non-silent recorded frame gives the latency (in the JACK graph; the sound
  card adds JACK's playback latency, reported alongside).
- Headroom: `segue serve --pace asap` renders N takes of S seconds at once (their steps batched into one LM call);
  headroom = N * S / wall time (1 = just real time).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from jack_rig import Daemon, JackServer, Recorder  # noqa: E402
from segue.daemon.client import Client  # noqa: E402

RATE, PERIOD = 48000, 256


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def latency(triggers: int = 25, model: str = "demo", extra: tuple[str, ...] = (), take_s: float = 0.25,
            long_bars: int = 0) -> dict:
    """Trigger -> first sound over `triggers` takes of `take_s` seconds; with `long_bars`, then one take of that
    many bars (120 bpm) that must play whole: its trigger -> first sound, underruns and dropped samples."""
    server = JackServer(RATE, PERIOD)
    server.start()
    daemon = recorder = client = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            daemon = Daemon(Path(tmp), ["--audio-device", "system", "--sample-rate", str(RATE), "--block-size",
                                        str(PERIOD), *extra], env=server.env, model=model)
            # On a CPU slower than real time a take is held back several times its length: the recording must
            # outlast that (it held 113 s, and an 8-bar take paced for its context sounded after the end).
            recorder = Recorder(server, seconds=60 + triggers * (1.5 + 8 * take_s) + 14 * long_bars)
            recorder.connect(server.ports("PortAudio:out"))
            client = Client(daemon.endpoint, daemon.pub, timeout=30)
            status = client.request("status")["status"]
            lat, leads = [], []
            for i in range(triggers):
                t0 = recorder.client.frame_time
                rid = client.request("generate", seconds=take_s, start="now", seed=i)["id"]
                leads.append(client.wait(rid, "queued")["lead_s"])
                client.wait(rid)
                recorder.wait_for(recorder.client.frame_time + 2 * PERIOD)
                first, _ = recorder.loud_span(t0, recorder.last_frame)
                lat.append(1000 * (first - t0) / RATE)
                time.sleep(0.2)
            long = None
            if long_bars:
                client.request("tempo", bpm=120, beats_per_bar=4)
                before = client.request("status")["status"]["audio"]
                t0 = recorder.client.frame_time
                rid = client.request("generate", bars=long_bars, start="now", seed=99)["id"]
                queued = client.wait(rid, "queued")
                done = client.wait(rid, timeout=600)
                recorder.wait_for(recorder.client.frame_time + 2 * PERIOD)
                first, _ = recorder.loud_span(t0, recorder.last_frame)
                end = client.request("status")["status"]["audio"]
                long = dict(bars=long_bars, seconds=done["samples"] / RATE, first_sound_ms=1000 * (first - t0) / RATE,
                            held_back_s=queued["held_back_s"], lead_s=queued["lead_s"], dropped=done["dropped"],
                            underruns=end["underruns"] - before["underruns"], xruns=end["xruns"] - before["xruns"])
            after = client.request("status")["status"]["audio"]
            return dict(triggers=triggers, take_s=take_s, ready=daemon.ready_line.strip(), long=long, all_ms=[round(x, 1) for x in lat], p50_ms=statistics.median(lat), p99_ms=_percentile(lat, 0.99),
                        min_ms=min(lat), max_ms=max(lat), lead_ms=1000 * statistics.median(leads),
                        playback_latency_ms=1000 * server.playback_latency() / RATE,
                        first_chunk_ms=1000 * status["first_chunk_s"], horizon_ms=status["horizon_ms"],
                        underruns=after["underruns"] - status["audio"]["underruns"],
                        xruns=after["xruns"] - status["audio"]["xruns"], period=PERIOD, rate=RATE)
    finally:
        for c in (client, recorder):
            if c is not None:
                c.close()
        if daemon is not None:
            daemon.stop()
        server.stop()


def headroom(seconds: float = 10.0, counts: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp), ["--pace", "asap"])
        client = Client(daemon.endpoint, daemon.pub, timeout=30)
        try:
            for n in counts:
                t = time.monotonic()
                ids = [client.request("generate", prompt="dub techno", seconds=seconds, start="now", seed=k,
                                      lane=k)["id"] for k in range(n)]
                for rid in ids:
                    client.wait(rid, timeout=600)
                wall = time.monotonic() - t
                rows.append(dict(takes=n, seconds=seconds, wall_s=wall, headroom=n * seconds / wall))
        finally:
            client.close()
            daemon.stop()
    return rows


def realtime_int8(quick: bool = False) -> dict:
    """The daemon on musicgen-small's shapes and the full-width 32 kHz EnCodec (random weights, transformers'
    layout) with the LM in int8 on the CPU: trigger -> first sound over 1 s takes, then an 8-bar take that must
    play whole."""
    sys.path.insert(0, str(ROOT / "bench"))
    import lm_speed

    support = lm_speed._support()
    with tempfile.TemporaryDirectory(prefix="segue-small-") as tmp:
        model, tok = lm_speed.build_reference("small", full_codec=True)
        folder = support.save_musicgen(model, tok, Path(tmp))
        del model
        return latency(4 if quick else 10, str(folder), ("--dtype", "int8"), take_s=1.0, long_bars=2 if quick else 8)


def measure(quick: bool = False) -> dict:
    return dict(latency=latency(10 if quick else 25), headroom=headroom(4.0 if quick else 10.0))


if __name__ == "__main__":
    import json

    print(json.dumps(measure("--quick" in sys.argv), indent=1))
