"""`segue demo` (what `make demo` runs): a real daemon, a generate and a continue of the shipped loop, files out."""

import json

import pytest
import soundfile as sf

from segue.daemon.demo import run_demo

pytestmark = pytest.mark.slow


def test_demo_makes_a_generate_and_a_continue_of_the_shipped_loop(tmp_path):
    said = []
    done = run_demo(tmp_path, audio_device="none", say=said.append)
    assert [d["state"] for d in done] == ["done", "done"]
    for d in done:
        pcm, sr = sf.read(d["path"], dtype="float32")
        assert sr == 48000 and len(pcm) == 4 * 48000  # 2 bars at 120 bpm
    meta = json.loads((tmp_path / "takes" / "0003-continue.json").read_text())
    assert meta["source"] == "file" and meta["path"].endswith("loop_120bpm_2bars.flac") and meta["prompt_frames"] > 0
    assert any(str(tmp_path / "takes") in line for line in said)
