"""`segue demo`: the daemon, end to end, with nothing to download.

Starts `segue serve --model demo` (on the default sound card when there is one, otherwise without a device),
sets the tempo, sends a `generate` and a `continue` of the 2-bar loop shipped with segue, prints the events as
they come and where the takes are, then stops the daemon (SIGTERM: takes finalized). The demo model has random
weights: what it plays is noise shaped like audio, not music.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from segue.daemon.client import Client
from segue.daemon.launch import ServeProcess
from segue.models.errors import SegueError

LOOP = Path(__file__).parent / "assets" / "loop_120bpm_2bars.flac"


def run_demo(out: Path, audio_device: str = "auto", say=print) -> list[dict]:
    """Returns the `done` events of the two takes."""
    out.mkdir(parents=True, exist_ok=True)
    takes, loops = out / "takes", out / "loops"
    loops.mkdir(exist_ok=True)
    loop = shutil.copy(LOOP, loops / LOOP.name)
    say(f"demo: starting segue serve --model demo --audio-device {audio_device} (takes in {takes})")
    daemon = ServeProcess(takes, ["--audio-device", audio_device, "--allow", str(loops)],
                          echo=lambda line: say("  " + line.rstrip()))
    done: list[dict] = []
    try:
        client = Client(daemon.endpoint, daemon.pub, timeout=30)
        try:
            client.request("tempo", bpm=120, beats_per_bar=4, beat=0)
            requests = [dict(cmd="generate", prompt="dub techno, deep chords", bars=2, start="next_bar", seed=1),
                        dict(cmd="continue", source="file", path=str(loop), bars=2, start="next_bar", seed=2)]
            for req in requests:
                reply = client.request(**req)
                say(f"demo: sent {json.dumps(req)} -> id {reply['id']}")
                for ev in _events(client, reply["id"]):
                    say(f"  event {json.dumps(ev)}")
                    if ev["event"] == "done":
                        done.append(ev)
            status = client.request("status")["status"]
            say(f"demo: audio {status['audio']['audio_device']}, {status['rate']}x real time, "
                f"underruns {status['audio']['underruns']}")
        finally:
            client.close()
    finally:
        code = daemon.signal()
    if code != 0:
        raise SegueError(f"segue serve exited with {code}:\n{daemon.output[-2000:]}")
    say("demo: takes (WAV, codes, JSON sidecar):")
    for p in sorted(takes.iterdir()):
        if not p.name.startswith("."):  # the daemon's lock on the folder is no take
            say(f"  {p}")
    return done


def _events(client: Client, rid: int):
    for ev in client.events(timeout=120):
        if ev.get("id") != rid:
            continue
        yield ev
        if ev["event"] == "error":
            raise SegueError(f"the daemon refused it: {ev['code']}: {ev['message']}")
        if ev["event"] == "done":
            return
    raise SegueError(f"no event from the daemon for take {rid} within 120 s")
