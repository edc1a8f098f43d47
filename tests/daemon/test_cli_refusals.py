"""What a newcomer tried: sidecars that lie, outputs that would overwrite inputs, outputs of the wrong kind, and
argparse's own errors. Every one is ONE line `... error: ...` saying what to do, exit status 2, no traceback, and
nothing the user owns is changed. Real files; the cases that once raised a traceback or destroyed a file run in a
real `segue` process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

import support
from segue.daemon.cli import main

SEGUE = [sys.executable, "-m", "segue.daemon.cli"]
SR, HOP = 32000, 640


def run(*args):
    return subprocess.run(SEGUE + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def _refused(argv, words, capsys=None, process=False, prefix="segue: error: "):
    """Run `segue argv` (in this process, or a real one): exit 2 and one line starting with `prefix` holding
    `words`. Returns the line."""
    argv = [str(a) for a in argv]
    if process:
        r = run(*argv)
        code, err = r.returncode, r.stderr
    else:
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own errors
            code = exc.code
        err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(prefix) and words in lines[0], lines[0]
    return lines[0]


def _digest(folder):
    """Every file in `folder` -> its bytes: what must not change."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# -- 1. --from-take with a sidecar that lies ---------------------------------------------------------------------------
def _take(folder, prompt=3, frames=10, fill=0, **over):
    """A take's files as the daemon writes them (demo model): codes [4, prompt + frames] int16 and the sidecar, with
    `over` replacing top-level keys, or `codes_file.KEY` / `sampling.KEY` entries."""
    meta = dict(model="demo", dtype="float32", device="cpu", threads=1, seed=1, prefill_seed=1,
                sampling=dict(temperature=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, seed=1), chunk_frames=5,
                prompt=None, lm_frames=frames, prompt_frames=prompt, frames=frames, codes="0001-continue.codes.npy",
                wav="0001-continue.wav", changes=[], stepped_with=[],
                codes_file=dict(model="demo", sample_rate=SR, hop_length=HOP, channels=1, codebooks=4,
                                frames=prompt + frames, prompt_frames=prompt, length=frames * HOP - 200))
    for key, value in over.items():
        if "." in key:
            outer, inner = key.split(".")
            meta[outer][inner] = value
        else:
            meta[key] = value
    np.save(folder / "0001-continue.codes.npy", np.full((4, prompt + frames), fill, np.int16))
    side = folder / "0001-continue.json"
    side.write_text(json.dumps(meta))
    return side


LIES = {  # case -> (sidecar changes, words of the one line, run in a real process)
    "cfg 1e39": ({"sampling.cfg_coef": 1e39}, "'sampling.cfg_coef' must be at least 0 and at most 100", True),
    "temperature text": ({"sampling.temperature": "hot"}, "'sampling.temperature' must be a number, got str", False),
    "top_k 2049": ({"sampling.top_k": 2049}, "'sampling.top_k' must be at least 0 and at most 2048", False),
    "sampling key": ({"sampling.volume": 3}, "'sampling' has unknown keys volume", False),
    "seed 2^64": ({"seed": 2**64}, "'seed' must be at least 0 and at most 9223372036854775807, got "
                                   "18446744073709551616", True),
    "prefill_seed 2^64": ({"prefill_seed": 2**64}, "'prefill_seed' must be at least 0", False),
    "threads 0": ({"threads": 0}, "'threads' must be at least 1 and at most 1024", False),
    "change text": ({"changes": [{"temperature": "hot", "column": 3}]},
                    "'changes.temperature' must be a number, got str", True),
    "change key": ({"changes": [{"temperature": 0.5, "column": 3, "volume": 2}]}, "a change has unknown keys volume",
                   False),
    "change column -1": ({"changes": [{"top_k": 5, "column": -1}]}, "'column' must be a whole number >= 0, got -1",
                         False),
    "change column 2.5": ({"changes": [{"top_k": 5, "column": 2.5}]}, "'column' must be a whole number >= 0, got 2.5",
                          False),
    "changes not a list": ({"changes": {"column": 3}}, "'changes' must be a list", False),
    "stepped_with text": ({"stepped_with": ["x"]}, "'stepped_with' must be a number", False),
    "codes path up": ({"codes": "../../../etc/passwd"}, "'codes' must be the bare name of a file beside it", True),
    "codes path absolute": ({"codes": "/tmp/x.npy"}, "'codes' must be the bare name of a file beside it", False),
    "melody path": ({"melody_wav": "../tune.wav"}, "'melody_wav' must be the bare name of a file beside it", False),
    "prompt_frames 0": ({"prompt_frames": 0}, "'prompt_frames' 0 and 'frames' 10 contradict 'codes_file' (3 prompt "
                                              "frames of 13)", True),
    "length 1e9": ({"codes_file.length": 10**9}, "'codes_file.length' is 1000000000 samples, but 10 new frame(s) of "
                                                 "640 samples hold 5120 to 6400", False),
}


@pytest.mark.parametrize("case", list(LIES))
def test_a_lying_take_sidecar_is_one_line(case, tmp_path, capsys):
    over, words, process = LIES[case]
    side = _take(tmp_path, **over)
    before = _digest(tmp_path)
    _refused(["generate", "--from-take", side, "--out", tmp_path / "o.wav"], words, capsys, process)
    assert _digest(tmp_path) == before


def test_codes_outside_the_codebooks_are_refused_by_the_codec(tmp_path):
    side = _take(tmp_path, fill=4000)
    _refused(["generate", "--from-take", side, "--out", tmp_path / "o.wav"],
             "0001-continue.codes.npy: codes must lie in [0, 2047], got values outside it ([4000, 4000])",
             process=True)
    assert not (tmp_path / "o.wav").exists()


def test_a_truthful_take_sidecar_renders_its_length(tmp_path):
    """The control: the same files, not lying, render; OUT.wav has the take's recorded length (10 frames hold
    6400 samples, the take was 6200), and its codes keep the prompt's 3 frames first."""
    side = _take(tmp_path)
    r = run("generate", "--from-take", side, "--out", tmp_path / "o.wav", "--codes-out", tmp_path / "o.npy")
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "o.wav")).frames == 10 * HOP - 200
    assert np.array_equal(np.load(tmp_path / "o.npy")[:, :3], np.zeros((4, 3)))
    assert "(float32, 1 thread, seed 1)" in r.stderr  # one thread, not "1 threads"


# -- 2. outputs that would overwrite an input or each other ------------------------------------------------------------
@pytest.fixture
def owned(tmp_path):
    """Files the user owns: a recording, a melody, codes with their sidecar, a WAV-content file named .json, codes
    named .wav, and a take."""
    audio = (0.1 * np.random.default_rng(0).standard_normal((1, 6400))).astype(np.float32)
    support.write_wav(tmp_path / "in.wav", audio, SR)
    support.write_wav(tmp_path / "tune.wav", audio, SR)
    sf.write(str(tmp_path / "rec.json"), audio.T, SR, format="WAV", subtype="FLOAT")  # audio, oddly named
    np.save(tmp_path / "y.npy", np.zeros((4, 10), np.int64))
    with open(tmp_path / "codes.wav", "wb") as f:
        np.save(f, np.zeros((4, 10), np.int64))
    os.link(tmp_path / "in.wav", tmp_path / "link.wav")
    (tmp_path / "takes").mkdir()
    _take(tmp_path / "takes")
    return tmp_path


GEN = ["generate", "--model", "demo", "--duration", "0.1"]
OVERWRITES = {
    "--out is --continue": (GEN + ["--continue", "{d}/in.wav", "--out", "{d}/in.wav"],
                            "--out {d}/in.wav is --continue {d}/in.wav: writing it would destroy it"),
    "--out is --continue, spelled otherwise": (GEN + ["--continue", "{d}/in.wav", "--out", "{d}/takes/../in.wav"],
                                               "writing it would destroy it"),
    "--out is a hard link to --continue": (GEN + ["--continue", "{d}/in.wav", "--out", "{d}/link.wav"],
                                           "--out {d}/link.wav is --continue {d}/in.wav"),
    "--out is --melody": (GEN + ["--melody", "{d}/tune.wav", "--out", "{d}/tune.wav"], "is --melody"),
    "--codes-out a.wav": (GEN + ["--out", "{d}/a.wav", "--codes-out", "{d}/a.wav"],
                          "--codes-out {d}/a.wav does not end in .npy: segue writes a numpy array of codes there"),
    "encode --codes-out is the input": (["codec", "encode", "--model", "demo", "{d}/in.wav", "--codes-out",
                                         "{d}/in.wav"], "--codes-out {d}/in.wav does not end in .npy"),
    "encode sidecar is the input": (["codec", "encode", "--model", "demo", "{d}/rec.json", "--codes-out",
                                     "{d}/rec.npy"], "the sidecar of --codes-out {d}/rec.json is the input"),
    "decode --out is the input": (["codec", "decode", "--model", "demo", "{d}/y.npy", "--out", "{d}/y.npy"],
                                  "--out {d}/y.npy does not end in .wav"),
    "decode --out is the input, both .wav": (["codec", "decode", "--model", "demo", "{d}/codes.wav", "--out",
                                              "{d}/codes.wav"], "--out {d}/codes.wav is the input"),
    "--from-take --codes-out is the take's codes": (
        ["generate", "--from-take", "{d}/takes/0001-continue.json", "--out", "{d}/o.wav", "--codes-out",
         "{d}/takes/0001-continue.codes.npy"], "--codes-out {d}/takes/0001-continue.codes.npy is a file of the daemon's "
                                               "take 0001-continue"),
    "--from-take sidecar of --codes-out is the take's": (
        ["generate", "--from-take", "{d}/takes/0001-continue.json", "--out", "{d}/o.wav", "--codes-out",
         "{d}/takes/0001-continue.npy"], "is a file of the daemon's take 0001-continue"),
    "--from-take --out is the take's WAV": (
        ["generate", "--from-take", "{d}/takes/0001-continue.json", "--out", "{d}/takes/0001-continue.wav"],
        "--out {d}/takes/0001-continue.wav is a file of the daemon's take 0001-continue (its sidecar is beside it)"),
    "decode --out is a take's WAV": (
        ["codec", "decode", "--model", "demo", "{d}/takes/0001-continue.codes.npy", "--out",
         "{d}/takes/0001-continue.wav"], "writing it would destroy the take"),
}


@pytest.mark.parametrize("case", list(OVERWRITES))
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(case, owned):
    argv, words = OVERWRITES[case]
    before, takes = _digest(owned), _digest(owned / "takes")
    _refused([a.format(d=owned) for a in argv], words.format(d=owned), process=True)
    assert _digest(owned) == before and _digest(owned / "takes") == takes  # nothing changed, nothing added


# -- 3. outputs of the wrong kind --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (GEN + ["--out", "{d}/a.mp3"], "--out {d}/a.mp3 does not end in .wav: segue writes 32-bit float WAV there; name "
                                   "it a.wav"),
    (GEN + ["--out", "{d}/adir/"], "--out {d}/adir/ ends in a path separator, so it names a folder"),
    (GEN + ["--out", "{d}/takes/"], "--out {d}/takes/ ends in a path separator"),
    (GEN + ["--out", "{d}/takes"], "--out {d}/takes is a folder; give a file name"),
    (GEN + ["--out", "{d}/o.wav", "--codes-out", "{d}/c.txt"], "--codes-out {d}/c.txt does not end in .npy"),
    (GEN + ["--out", "{d}/o.wav", "--codes-out", "{d}/cdir/"], "--codes-out {d}/cdir/ ends in a path separator"),
    (["codec", "decode", "--model", "demo", "{d}/y.npy", "--out", "{d}/noext"], "--out {d}/noext does not end in "
                                                                               ".wav"),
    (["codec", "encode", "--model", "demo", "{d}/in.wav", "--codes-out", "{d}/c"], "name it c.npy"),
])
def test_an_output_of_the_wrong_kind_is_refused(argv, words, owned, capsys):
    before = _digest(owned)
    _refused([a.format(d=owned) for a in argv], words.format(d=owned), capsys)
    assert _digest(owned) == before and not (owned / "adir").exists()


# -- 4. codec decode with a sidecar that lies --------------------------------------------------------------------------
def _codes(folder, shape=(4, 10), **layout):
    np.save(folder / "c.npy", np.zeros(shape, np.int64))
    if layout:
        d = dict(model="demo", sample_rate=SR, hop_length=HOP, channels=1, codebooks=shape[0], frames=shape[1],
                 prompt_frames=0, length=shape[1] * HOP)
        d.update(layout)
        (folder / "c.json").write_text(json.dumps({"codes_file": d}))
    return folder / "c.npy"


DECODE_LIES = {
    "stereo over a mono codec": (dict(channels=2), "4 codebooks over 2 channel(s), but demo decodes 4 per channel "
                                                   "(8 for 2); the sidecar does not describe these codes"),
    "length 1e9": (dict(length=10**9), "'codes_file.length' is 1000000000 samples, but 10 new frame(s) of 640 "
                                       "samples hold 5120 to 6400"),
    "length 0": (dict(length=0), "'codes_file.length' is 0 samples"),
    "length past the prompt": (dict(prompt_frames=4, length=6400), "6 new frame(s) of 640 samples hold 2560 to 3840"),
    "prompt_frames -5": (dict(prompt_frames=-5), "'codes_file.prompt_frames' must be a whole number >= 0 (got -5)"),
    "this model, another codec": (dict(sample_rate=16000, hop_length=320, length=3200),
                                  "c.json says demo made {d}/c.npy with 16000 Hz and 320-sample frames, but demo has "
                                  "32000 Hz and 640-sample frames: the sidecar does not describe these codes"),
    "another model": (dict(model="facebook/encodec_24khz", sample_rate=24000, hop_length=320, length=3200),
                      "was made by facebook/encodec_24khz (24000 Hz and 320-sample frames); demo has 32000 Hz and "
                      "640-sample frames: decode with --model facebook/encodec_24khz"),
    "only the prompt": (dict(prompt_frames=10, length=0),
                        "holds only its prompt's 10 frames: the take has no frames of its own (it was cancelled"),
}


@pytest.mark.parametrize("case", list(DECODE_LIES))
def test_a_lying_codes_sidecar_is_one_line(case, tmp_path, capsys):
    layout, words = DECODE_LIES[case]
    codes = _codes(tmp_path, **layout)
    _refused(["codec", "decode", "--model", "demo", codes, "--out", tmp_path / "o.wav"], words.format(d=tmp_path),
             capsys)
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("text, words", [
    ("[1, 2]", "c.json is beside c.npy but does not describe it (a JSON list, not an object); rename it"),
    ('{"tempo": 120}', "c.json is beside c.npy but does not describe it (it has no 'codes_file' entry)"),
])
def test_a_json_beside_the_codes_that_is_not_their_sidecar_says_what_is_wrong(text, words, tmp_path, capsys):
    codes = _codes(tmp_path)
    (tmp_path / "c.json").write_text(text)
    _refused(["codec", "decode", "--model", "demo", codes, "--out", tmp_path / "o.wav"], words, capsys)


def test_a_cancelled_takes_codes_say_there_is_nothing_to_decode(tmp_path, capsys):
    codes = _codes(tmp_path, shape=(4, 0))
    _refused(["codec", "decode", "--model", "demo", codes, "--out", tmp_path / "o.wav"],
             "holds no frames ([4, 0]; a take's codes are empty when it was cancelled, or stopped before anything "
             "was generated): there is nothing to decode", capsys)


def test_fewer_codebooks_decode_at_a_lower_bitrate_and_say_so(tmp_path, capsys):
    """Bare codes [3, T] for a 4-codebook codec: legitimate (a lower bitrate), decoded, and said."""
    codes = _codes(tmp_path, shape=(3, 10))
    assert main(["codec", "decode", "--model", "demo", str(codes), "--out", str(tmp_path / "o.wav")]) == 0
    assert "has 3 of demo's 4 codebooks per channel: it decodes at a lower bitrate" in capsys.readouterr().err
    assert sf.info(str(tmp_path / "o.wav")).frames == 10 * HOP


def test_a_length_in_the_frame_before_the_last_is_a_daemon_takes_margin(tmp_path):
    """A daemon take keeps one frame past its length (its resampler's margin): 10 frames for 5760 samples."""
    codes = _codes(tmp_path, length=9 * HOP)
    assert main(["codec", "decode", "--model", "demo", str(codes), "--out", str(tmp_path / "o.wav")]) == 0
    assert sf.info(str(tmp_path / "o.wav")).frames == 9 * HOP


# -- 7. argparse's own errors: one line too ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, line", [
    (["generate", "--model", "demo", "--seed", "1.5", "--out", "o.wav"],
     "segue generate: error: argument --seed: invalid int value: '1.5' (see segue generate --help)"),
    (["generate", "--model", "demo", "--temperature", "abc", "--out", "o.wav"],
     "segue generate: error: argument --temperature: invalid float value: 'abc' (see segue generate --help)"),
    (["codec", "decode", "--model", "demo", "c.npy"],
     "segue codec decode: error: the following arguments are required: --out (see segue codec decode --help)"),
    (["generate", "--model", "demo", "--prompt", "-x", "--out", "o.wav"],
     "segue generate: error: argument --prompt: expected one argument; a value that starts with '-' goes after '=': "
     "--prompt=VALUE (see segue generate --help)"),
    ([], "segue: error: the following arguments are required: COMMAND (see segue --help)"),
])
def test_argparse_errors_are_one_line(argv, line, tmp_path):
    r = subprocess.run(SEGUE + argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [line], r.stderr


@pytest.mark.parametrize("flag, value, words", [
    ("--temperature", "-inf", "--temperature must be finite, got -inf"),
    ("--cfg", "-1e3", "--cfg must be at least 0 and at most 100, got -1000"),
    ("--top-p", "-.5", "--top-p must be at least 0 and at most 1, got -0.5"),
    ("--seed", "-1", "--seed must be at least 0"),
])
def test_a_negative_number_after_a_numeric_flag_is_its_value(flag, value, words, tmp_path, capsys):
    _refused(["generate", "--model", "demo", flag, value, "--out", tmp_path / "o.wav"], words, capsys)
