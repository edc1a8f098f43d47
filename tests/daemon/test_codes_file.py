"""Codes files decode back to the audio they came from (channels and length included), and prompts are whole codec
frames ending on their last sample. In-process `segue` runs on the demo model and a tiny stereo MusicGen folder."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

import support
from segue.daemon.cli import main
from segue.daemon.codes_file import CodesLayout, sidecar_path
from segue.models.loading.builder import load_codec

SR = 32000
HOP = 640


def _wav(path, audio):
    return support.write_wav(path, np.asarray(audio, np.float32), SR)


def _noise(channels, n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal((channels, n))).astype(np.float32)


def _read(path):
    return sf.read(str(path), dtype="float32", always_2d=True)[0].T  # [C, n]


def _layout(codes_path):
    return json.loads(sidecar_path(codes_path).read_text())["codes_file"]


def test_the_sidecar_rule():
    assert sidecar_path("a/loop.npy").as_posix() == "a/loop.json"
    assert sidecar_path("takes/0007-continue.codes.npy").as_posix() == "takes/0007-continue.json"
    assert sidecar_path("next").as_posix() == "next.json"


def test_a_length_that_is_not_whole_frames_is_kept(tmp_path, capsys):
    """32123 samples -> 51 frames (the last one padded) -> decoded back to 32123 samples, not 32640."""
    src = _wav(tmp_path / "in.wav", _noise(1, 32123))
    assert main(["codec", "encode", "--model", "demo", str(src), "--codes-out", str(tmp_path / "c.npy")]) == 0
    layout = _layout(tmp_path / "c.npy")
    assert layout == dict(model="demo", sample_rate=SR, hop_length=HOP, channels=1, codebooks=4, frames=51,
                          prompt_frames=0, length=32123)
    assert np.load(tmp_path / "c.npy").shape == (4, 51)
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "c.npy"), "--out", str(tmp_path / "d.wav")]) == 0
    out = _read(tmp_path / "d.wav")
    assert out.shape == (1, 32123)
    codec = load_codec("demo")
    one_pass = codec.decode(torch.from_numpy(np.load(tmp_path / "c.npy"))[None])[0, :, :32123].numpy()
    np.testing.assert_allclose(out, one_pass, atol=1e-5)
    assert "padded" not in capsys.readouterr().err


def test_bare_codes_decode_to_whole_frames_and_say_so(tmp_path, capsys):
    np.save(tmp_path / "bare.npy", np.random.default_rng(1).integers(0, 2048, (4, 51)))
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "bare.npy"), "--out",
                 str(tmp_path / "d.wav")]) == 0
    assert _read(tmp_path / "d.wav").shape == (1, 51 * HOP)
    assert "its length is unknown, so the audio is padded to whole frames (51 x 640 samples)" in \
        capsys.readouterr().err


def test_stereo_round_trip_through_a_stereo_musicgen_folder(tiny_stereo, tmp_path, capsys):
    """A stereo file and a stereo MusicGen folder: codes [8, T], left and right interleaved (what the LM takes);
    decoded back to two channels of the original length."""
    from segue.models.loading.builder import load_model

    folder = str(tiny_stereo[2])
    audio = _noise(2, 16000 + 77, seed=2)
    src = _wav(tmp_path / "st.wav", audio)
    assert load_codec(folder).channels == 2
    assert main(["codec", "encode", "--model", folder, str(src), "--codes-out", str(tmp_path / "st.npy")]) == 0
    codes = np.load(tmp_path / "st.npy")
    assert codes.shape == (8, 26) and _layout(tmp_path / "st.npy")["channels"] == 2
    model = load_model(folder)
    expect = model.encode(torch.from_numpy(audio)[None])[0].numpy()  # the LM's interleaved codes
    assert np.array_equal(codes, expect)
    assert main(["codec", "decode", "--model", folder, str(tmp_path / "st.npy"), "--out",
                 str(tmp_path / "st_dec.wav")]) == 0
    out = _read(tmp_path / "st_dec.wav")
    assert out.shape == (2, 16077)
    np.testing.assert_allclose(out, model.decode(torch.from_numpy(codes)[None])[0, :, :16077].numpy(), atol=1e-5)
    # Without the sidecar, the stereo folder still knows its codes are interleaved; a mono codec says what to do.
    sidecar_path(tmp_path / "st.npy").unlink()
    assert main(["codec", "decode", "--model", folder, str(tmp_path / "st.npy"), "--out",
                 str(tmp_path / "st_bare.wav")]) == 0
    assert _read(tmp_path / "st_bare.wav").shape == (2, 26 * HOP)
    capsys.readouterr()
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "st.npy"), "--out",
                 str(tmp_path / "x.wav")]) == 2
    assert "stereo MusicGen" in capsys.readouterr().err


def test_a_mono_codec_mixes_a_stereo_file_and_says_so(tmp_path, capsys):
    src = _wav(tmp_path / "st.wav", _noise(2, 6400))
    assert main(["codec", "encode", "--model", "demo", str(src), "--codes-out", str(tmp_path / "m.npy")]) == 0
    assert np.load(tmp_path / "m.npy").shape == (4, 10)
    assert "mixing them to mono" in capsys.readouterr().err


@pytest.mark.parametrize("stereo", [False, True], ids=["mono", "stereo"])
@pytest.mark.parametrize("continued", [False, True], ids=["text", "continue"])
def test_generated_codes_decode_to_the_generated_audio(tiny_stereo, tmp_path, stereo, continued):
    """generate --codes-out (a continuation's prompt frames first) -> codec decode == OUT.wav."""
    model = str(tiny_stereo[2]) if stereo else "demo"
    args = ["generate", "--model", model, "--prompt", "dub", "--duration", "0.3", "--seed", "5",
            "--out", str(tmp_path / "g.wav"), "--codes-out", str(tmp_path / "g.npy")]
    if continued:
        args += ["--continue", str(_wav(tmp_path / "p.wav", _noise(2 if stereo else 1, 12800 + 123)))]
    assert main(args) == 0
    layout = _layout(tmp_path / "g.npy")
    prompt = 20 if continued else 0  # 12923 samples -> the newest 20 whole frames
    assert layout["prompt_frames"] == prompt and layout["frames"] == prompt + 15
    assert layout["channels"] == (2 if stereo else 1) and layout["length"] == 15 * HOP
    assert np.load(tmp_path / "g.npy").shape == (8 if stereo else 4, prompt + 15)
    assert main(["codec", "decode", "--model", model, str(tmp_path / "g.npy"), "--out", str(tmp_path / "d.wav")]) == 0
    a, b = _read(tmp_path / "g.wav"), _read(tmp_path / "d.wav")
    assert a.shape == b.shape == (2 if stereo else 1, 15 * HOP)
    assert np.abs(a - b).max() <= 1e-5  # streamed while generating vs decoded again: float rounding only


def test_a_broken_sidecar_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "c.npy", np.zeros((4, 10), np.int64))
    (tmp_path / "c.json").write_text(json.dumps({"codes_file": dict(model="demo", sample_rate=SR)}))
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "c.npy"), "--out", str(tmp_path / "d.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lacks hop_length, channels, codebooks, frames" in err[0]
    layout = CodesLayout("facebook/encodec_16khz", 16000, 320, 1, 4, 10, 0, 3200)  # another codec's codes
    (tmp_path / "c.json").write_text(json.dumps({"codes_file": layout.to_dict()}))
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "c.npy"), "--out", str(tmp_path / "d.wav")]) == 2
    assert "decode with --model facebook/encodec_16khz" in capsys.readouterr().err


# -- prompts are whole frames ending on their last sample --------------------------------------------------------------
def _continue(tmp_path, name, src, *extra):
    args = ["generate", "--model", "demo", "--continue", str(src), "--duration", "0.2", "--temperature", "0",
            "--seed", "1", "--out", str(tmp_path / f"{name}.wav"), "--codes-out", str(tmp_path / f"{name}.npy"),
            *extra]
    assert main(args) == 0
    return np.load(tmp_path / f"{name}.npy"), _layout(tmp_path / f"{name}.npy")


def test_a_prompt_that_is_not_whole_frames_is_continued_from_its_last_sample(tmp_path):
    """96001 samples: the prompt is its newest 150 whole frames (not 151 with 639 padded samples), and the greedy
    continuation equals that of the same file cut to those frames."""
    audio = _noise(1, 96001, seed=3)
    whole, whole_layout = _continue(tmp_path, "whole", _wav(tmp_path / "odd.wav", audio))
    cut, _ = _continue(tmp_path, "cut", _wav(tmp_path / "cut_src.wav", audio[:, 1:]))
    assert whole_layout["prompt_frames"] == 150
    assert np.array_equal(whole, cut)


def test_prompt_seconds_are_whole_frames(tmp_path, capsys):
    src = _wav(tmp_path / "long.wav", _noise(1, 5 * SR, seed=4))
    _, layout = _continue(tmp_path, "p", src, "--prompt-seconds", "3.33")
    assert layout["prompt_frames"] == 166  # 106560 samples = 166.5 frames: the newest 166
    args = ["generate", "--model", "demo", "--continue", str(src), "--prompt-seconds", "0.01", "--out",
            str(tmp_path / "x.wav")]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["segue: error: --prompt-seconds 0.01 is shorter than one codec frame (20 ms); ask for at least "
                   "0.02"], err


def test_a_stereo_takes_codes_file_decodes_to_its_audio(tiny_stereo, tmp_path):
    """A take's codes file ([8, T] int16) is described by the take's own sidecar (`codes_file`), kept up to date as
    it grows: `segue codec decode` gives the take's two channels at the model rate, as long as its WAV (48 kHz)."""
    import soxr

    from segue.daemon.reproduce import recipe_meta
    from segue.daemon.takes import TakeFiles
    from segue.models.generation import Take
    from segue.models.lm.config import SamplingParams
    from segue.models.loading.builder import load_model

    model = load_model(str(tiny_stereo[2]))
    take = Take(model, "strings", None, 20, SamplingParams(seed=1))
    pcm = np.concatenate(list(take), axis=1)  # [2, 20 * hop]
    files = TakeFiles(tmp_path, 7, "generate", 48000, 2, 8, dict(prompt="strings", **recipe_meta(model, take)))
    assert _layout(tmp_path / "0007-generate.codes.npy")["length"] is None  # unknown while it is written
    files.write(soxr.resample(pcm.T, SR, 48000, quality="HQ"), take.new_codes())  # 19200 samples at 48 kHz
    files.close(state="done")
    assert _layout(tmp_path / "0007-generate.codes.npy") == dict(
        model=str(tiny_stereo[2]), sample_rate=SR, hop_length=HOP, channels=2, codebooks=8, frames=20, prompt_frames=0,
        length=20 * HOP)
    assert main(["codec", "decode", "--model", str(tiny_stereo[2]), str(tmp_path / "0007-generate.codes.npy"),
                 "--out", str(tmp_path / "d.wav")]) == 0
    out = _read(tmp_path / "d.wav")
    assert out.shape == pcm.shape == (2, 20 * HOP)
    np.testing.assert_allclose(out, pcm, atol=1e-5)


def test_a_cancelled_takes_files_hold_no_frames_and_say_so(tmp_path, capsys):
    """A take cancelled after its LM made frames but before any of its audio was written keeps no codes (its WAV
    is empty, length 0): decoding it, or rendering it again, says there is nothing to."""
    from dataclasses import asdict

    from segue.daemon.reproduce import recipe_meta
    from segue.daemon.takes import TakeFiles
    from segue.models.generation import Take
    from segue.models.lm.config import SamplingParams
    from segue.models.loading.builder import load_model

    model = load_model("demo")
    sampling = SamplingParams(seed=1)
    take = Take(model, "x", None, 10, sampling)
    list(take)
    meta = dict(model="demo", seed=1, prefill_seed=1, sampling=asdict(sampling), prompt="x",
                **recipe_meta(model, take))
    files = TakeFiles(tmp_path, 3, "generate", 48000, 1, 4, meta)
    files.write(np.zeros((0, 1), np.float32), take.new_codes())  # codes made, no audio written yet
    files.close((0, 0, 0), state="cancelled")
    assert np.load(tmp_path / "0003-generate.codes.npy").shape == (4, 0)
    assert _layout(tmp_path / "0003-generate.codes.npy")["length"] == 0
    assert main(["codec", "decode", "--model", "demo", str(tmp_path / "0003-generate.codes.npy"), "--out",
                 str(tmp_path / "d.wav")]) == 2
    assert "holds no frames ([4, 0]; a take's codes are empty when it was cancelled" in capsys.readouterr().err
    assert main(["generate", "--from-take", str(tmp_path / "0003-generate.json"), "--out", str(tmp_path / "r.wav")]) == 2
    assert "the take has no frames (it was cancelled, or stopped before" in capsys.readouterr().err
