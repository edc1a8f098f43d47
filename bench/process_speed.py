"""Whole processes, as a user runs them: `segue generate --dtype int8` against a plain transformers script on the
same model folder (musicgen-small's LM and facebook/encodec_32khz's codec at their full shapes, random weights
saved in transformers' layout), each timed from launch to its WAV on disk: interpreter start, imports, loading (and
quantizing), the text encoder, the LM, the codec.

Each side runs with its own defaults: segue on half the CPUs (daemon/cpu.py), transformers on torch's (all cores).

    .venv/bin/python bench/run.py --only process
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

TRANSFORMERS_SCRIPT = """
import sys, torch, soundfile as sf
from transformers import AutoTokenizer, MusicgenForConditionalGeneration
folder, seconds, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
model = MusicgenForConditionalGeneration.from_pretrained(folder).eval()
tok = AutoTokenizer.from_pretrained(folder)
with torch.no_grad():
    audio = model.generate(**tok(["dub techno, deep chords"], return_tensors="pt"), do_sample=True,
                           guidance_scale=3.0, top_k=250, max_new_tokens=int(seconds * 50) + 3)
sf.write(out, audio[0, 0].numpy(), model.config.audio_encoder.sampling_rate)
"""


def _timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    return time.perf_counter() - t


def measure(quick: bool = False) -> dict:
    import lm_speed

    seconds = 2.0 if quick else 5.0
    support = lm_speed._support()
    with tempfile.TemporaryDirectory(prefix="segue-process-") as tmp:
        model, tok = lm_speed.build_reference("small", full_codec=True)
        folder = support.save_musicgen(model, tok, Path(tmp) / "small")
        del model
        segue = [sys.executable, "-m", "segue.daemon.cli", "generate", "--model", str(folder), "--dtype", "int8",
                 "--prompt", "dub techno, deep chords", "--duration", str(seconds), "--seed", "1", "--out",
                 str(Path(tmp) / "segue.wav")]
        theirs = [sys.executable, "-c", TRANSFORMERS_SCRIPT, str(folder), str(seconds), str(Path(tmp) / "hf.wav")]
        _timed(segue[:4] + ["--help"])  # the page cache holds the interpreter and the imports for both sides
        ours_s, theirs_s = _timed(segue), _timed(theirs)
    return dict(seconds=seconds, segue_s=ours_s, transformers_s=theirs_s, ratio=theirs_s / ours_s)


if __name__ == "__main__":
    print(measure("--quick" in sys.argv))
