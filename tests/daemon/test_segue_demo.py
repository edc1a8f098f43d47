"""`segue demo` as `make demo` runs it: the command in a process, from the user's folder, with a relative `--out`;
a real daemon, a generate and a continue of the shipped loop, files out."""

import json
import subprocess
import sys

import pytest
import soundfile as sf

pytestmark = pytest.mark.slow


def test_demo_makes_a_generate_and_a_continue_of_the_shipped_loop(tmp_path):
    r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "demo", "--out", "out", "--audio-device", "none"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    events = [json.loads(line.split("event ", 1)[1]) for line in r.stdout.splitlines()
              if line.startswith("  event ")]
    done = [ev for ev in events if ev["event"] == "done"]
    assert [d["state"] for d in done] == ["done", "done"]
    for d in done:
        assert d["path"].startswith(str(tmp_path / "out" / "takes"))  # absolute: the daemon resolved --takes
        pcm, sr = sf.read(d["path"], dtype="float32")
        assert sr == 48000 and len(pcm) == 4 * 48000  # 2 bars at 120 bpm
    out = (tmp_path / "out").resolve()
    (sidecar,) = (out / "takes").glob("*-continue.json")
    meta = json.loads(sidecar.read_text())
    # the loop copied to out/loops, sent as a path relative to the demo's folder, read from there by the daemon
    assert meta["source"] == "file" and meta["path"] == str(out / "loops" / "loop_120bpm_2bars.flac")
    assert meta["prompt_frames"] > 0
    assert "out/takes" in r.stdout
