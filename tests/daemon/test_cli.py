"""The `segue` command, end to end in real processes, and every bad input as one line with a non-zero status."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import support
from segue.daemon.cli import main

SEGUE = [sys.executable, "-m", "segue.daemon.cli"]


def run(*args, env=None):
    return subprocess.run(SEGUE + [str(a) for a in args], capture_output=True, text=True, env=env or os.environ.copy(),
                          timeout=300)


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    d = tmp_path_factory.mktemp("gen")
    r = run("generate", "--model", "demo", "--prompt", "dub techno", "--duration", "2", "--seed", "3",
            "--out", d / "a.wav", "--codes-out", d / "a.npy")
    assert r.returncode == 0, r.stderr
    return d, r


def test_generate_writes_only_new_audio_and_codes(generated):
    d, r = generated
    audio, sr = sf.read(str(d / "a.wav"), dtype="float32", always_2d=True)
    info = sf.info(str(d / "a.wav"))
    assert sr == 32000 and audio.shape == (64000, 1) and info.subtype == "FLOAT"
    codes = np.load(d / "a.npy")
    assert codes.shape == (4, 100) and np.issubdtype(codes.dtype, np.integer) and codes.max() < 2048
    assert "seed 3" in r.stderr and "Traceback" not in r.stderr


def test_generate_runs_on_the_daemons_default_threads(generated):
    """Half the CPUs, at least one (daemon/cpu.py); the daemon's ready line and sidecars: test_serve.py."""
    from segue.daemon.cpu import default_threads

    threads = default_threads()
    assert f"{threads} thread{'s' if threads != 1 else ''})" in generated[1].stderr, generated[1].stderr


def test_the_default_threads_are_half_the_cpus_this_process_may_use(monkeypatch):
    import os

    from segue.daemon import cpu

    for cpus, threads in ((1, 1), (2, 1), (3, 1), (4, 2), (16, 8)):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cpus: set(range(n)))
        assert cpu.default_threads() == threads


def test_omp_num_threads_sets_the_default_and_too_many_threads_are_warned_about(monkeypatch, tmp_path):
    import os

    from segue.daemon import cpu

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert cpu.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "x")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert cpu.default_threads() == 1 and cpu.oversubscribed(2) is None and "may use 2 CPUs" in cpu.oversubscribed(3)
    monkeypatch.undo()
    too_many = cpu.usable_cpus() + 1
    r = run("generate", "--model", "demo", "--prompt", "x", "--duration", "0.5", "--threads", too_many, "--out",
            tmp_path / "o.wav")
    assert r.returncode == 0 and f"{too_many} threads for the model, but this process may use" in r.stderr, r.stderr


def test_same_seed_same_take(generated, tmp_path):
    d, _ = generated
    r = run("generate", "--model", "demo", "--prompt", "dub techno", "--duration", "2", "--seed", "3",
            "--out", tmp_path / "b.wav")
    assert r.returncode == 0, r.stderr
    assert np.array_equal(sf.read(str(tmp_path / "b.wav"))[0], sf.read(str(d / "a.wav"))[0])


def test_generate_with_the_lm_in_int8(tmp_path):
    """`--dtype int8` on the CPU: a take of the asked length and layout (how close to float32 it is:
    tests/models/lm/test_int8.py); an unknown dtype is one line that names int8."""
    r = run("generate", "--model", "demo", "--dtype", "int8", "--prompt", "dub techno", "--duration", "2", "--seed",
            "3", "--out", tmp_path / "q.wav", "--codes-out", tmp_path / "q.npy")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert sf.read(str(tmp_path / "q.wav"), always_2d=True)[0].shape == (64000, 1)
    assert np.load(tmp_path / "q.npy").shape == (4, 100)
    r = run("generate", "--model", "demo", "--dtype", "int4", "--out", tmp_path / "x.wav")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "int8" in r.stderr, r.stderr


def test_continue_a_44k1_stereo_file(generated, tmp_path):
    d, _ = generated
    audio, _ = sf.read(str(d / "a.wav"), dtype="float32", always_2d=True)
    src = tmp_path / "stereo44.wav"
    import soxr

    stereo = soxr.resample(audio, 32000, 44100)
    support.write_wav(src, np.stack([stereo[:, 0], -stereo[:, 0]]), 44100, "PCM_24")
    r = run("generate", "--model", "demo", "--continue", src, "--prompt-seconds", "1", "--duration", "1.5",
            "--out", tmp_path / "c.wav")
    assert r.returncode == 0, r.stderr
    out, sr = sf.read(str(tmp_path / "c.wav"))
    assert sr == 32000 and out.shape == (48000,)


def test_codec_decode_of_generated_codes_is_the_generated_audio(generated, tmp_path):
    d, _ = generated
    r = run("codec", "decode", "--model", "demo", d / "a.npy", "--out", tmp_path / "dec.wav")
    assert r.returncode == 0, r.stderr
    a = sf.read(str(d / "a.wav"), dtype="float32")[0]
    b = sf.read(str(tmp_path / "dec.wav"), dtype="float32")[0]
    assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5  # streamed while generating == one-pass decode
    r = run("codec", "encode", "--model", "demo", tmp_path / "dec.wav", "--codes-out", tmp_path / "re.npy")
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "re.npy").shape == (4, 100)


def test_hub_id_from_the_offline_cache(tiny, hub_cache, tmp_path):
    support.hub_cache_entry(hub_cache, "acme/cli-tiny", tiny[2])
    r = run("generate", "--model", "acme/cli-tiny", "--prompt", "x", "--duration", "0.5", "--out", tmp_path / "h.wav")
    assert r.returncode == 0, r.stderr
    assert sf.info(str(tmp_path / "h.wav")).frames == 16000


def test_bad_input_in_a_real_process_is_one_line(tmp_path):
    bogus = tmp_path / "song.wav"
    bogus.write_text("not audio")
    for args in (["generate", "--model", "demo", "--continue", bogus, "--out", tmp_path / "o.wav"],
                 ["generate", "--model", "facebook/musicgen-small", "--out", tmp_path / "o.wav"]):
        r = run(*args)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("segue: error:") and "Traceback" not in r.stderr


# -- every bad input, in-process (fast): exit 2, exactly one line, a hint of what to do --------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("bad")
    (d / "text.wav").write_text("hello")
    support.write_wav(d / "empty.wav", np.zeros((1, 0), np.float32), 32000)
    nan = np.zeros((1, 3200), np.float32)
    nan[0, 7] = np.nan
    support.write_wav(d / "nan.wav", nan, 32000)
    support.write_wav(d / "ok.wav", np.random.default_rng(0).standard_normal((1, 32000)).astype(np.float32) * 0.1,
                      32000)
    support.write_wav(d / "tiny.wav", np.zeros((1, 10), np.float32), 32000)
    np.save(d / "float.npy", np.zeros((4, 10), np.float32))
    np.save(d / "range.npy", np.full((4, 10), 5000))
    np.save(d / "huge.npy", np.full((4, 10), 2**63 + 5, dtype=np.uint64))  # past int64: must not wrap negative
    np.save(d / "many.npy", np.zeros((6, 10), np.int64))
    np.save(d / "shape.npy", np.zeros((10,), np.int64))
    (d / "junk.npy").write_bytes(b"junk")
    broken = d / "broken-model"
    broken.mkdir()
    for f in tiny[2].iterdir():
        broken.joinpath(f.name).write_bytes(f.read_bytes()[: 100 if f.suffix == ".safetensors" else None])
    return d


GEN = ["generate", "--model", "demo", "--duration", "1"]
BAD = {
    "unknown hub id offline": (["generate", "--model", "acme/does-not-exist"], "not in the local cache"),
    "invalid id": (["generate", "--model", "not an id!"], "not a valid hub id"),
    "missing folder": (["generate", "--model", "./no/such/model"], "no folder"),
    "corrupt files": (["generate", "--model", "{d}/broken-model"], "not a readable safetensors"),
    "wav not audio": (GEN + ["--continue", "{d}/text.wav"], "not an audio file"),
    "empty audio": (GEN + ["--continue", "{d}/empty.wav"], "no audio samples"),
    "nan samples": (GEN + ["--continue", "{d}/nan.wav"], "NaN or infinite"),
    "missing wav": (GEN + ["--continue", "{d}/nope.wav"], "does not exist"),
    "shorter than a frame": (GEN + ["--continue", "{d}/tiny.wav"], "shorter than one codec frame"),
    "zero duration": (["generate", "--model", "demo", "--duration", "0"], "--duration must be above 0"),
    "checked before any model loads": (["generate", "--model", "acme/not-cached", "--duration", "-1"],
                                       "--duration must be above 0"),
    "sampling checked before any model loads": (["generate", "--model", "acme/not-cached", "--top-p", "7"],
                                                "--top-p"),
    "negative duration": (["generate", "--model", "demo", "--duration", "-3"], "--duration must be above 0"),
    "absurd duration": (["generate", "--model", "demo", "--duration", "1e7"], "at most 3600"),
    "prompt longer than context": (GEN + ["--continue", "{d}/ok.wav", "--prompt-seconds", "100"],
                                   "longer than the context"),
    "prompt seconds alone": (GEN + ["--prompt-seconds", "3"], "needs --continue"),
    "bad top-k": (GEN + ["--top-k", "2049"], "--top-k must be at least 0 and at most 2048, got 2049"),
    "bad top-p": (GEN + ["--top-p", "2"], "--top-p"),
    "bad temperature": (GEN + ["--temperature", "-1"], "temperature"),
    "bad cfg": (GEN + ["--cfg", "-2"], "cfg"),
    "bad seed": (GEN + ["--seed", "-1"], "seed"),
    "out folder missing": (["generate", "--model", "demo", "--out", "{d}/no/such/dir/o.wav"], "does not exist"),
    "no gpu": (GEN + ["--device", "cuda"], "no CUDA device"),
    "bad dtype": (GEN + ["--dtype", "float8"], "unknown dtype"),
    "codes not npy": (["codec", "decode", "--model", "demo", "{d}/junk.npy", "--out", "{d}/o.wav"], "not a .npy"),
    "float codes": (["codec", "decode", "--model", "demo", "{d}/float.npy", "--out", "{d}/o.wav"], "integer"),
    "codes out of range": (["codec", "decode", "--model", "demo", "{d}/range.npy", "--out", "{d}/o.wav"], "outside"),
    "codes past int64": (["codec", "decode", "--model", "demo", "{d}/huge.npy", "--out", "{d}/o.wav"],
                         "9223372036854775813"),
    "too many codebooks": (["codec", "decode", "--model", "demo", "{d}/many.npy", "--out", "{d}/o.wav"], "codebooks"),
    "codes shape": (["codec", "decode", "--model", "demo", "{d}/shape.npy", "--out", "{d}/o.wav"], "shape"),
    "encode not audio": (["codec", "encode", "--model", "demo", "{d}/text.wav", "--codes-out", "{d}/c.npy"],
                         "not an audio file"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input(name, files, capsys):
    argv, message = BAD[name]
    argv = [a.format(d=files) for a in argv]
    if argv[0] == "generate" and "--out" not in argv:
        argv += ["--out", str(files / "out.wav")]
    if name == "no gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segue: error:"), err
    assert message in err[0], err[0]


def test_a_file_that_is_not_npy_is_not_called_a_pickle(files, capsys):
    """numpy reads bytes without the .npy magic as a pickle and advises loading it unsafely: that is not repeated."""
    (files / "text.npy").write_text("these are not codes\n")
    assert main(["codec", "decode", "--model", "demo", str(files / "text.npy"), "--out", str(files / "o.wav")]) == 2
    err = capsys.readouterr().err
    assert "is not a .npy array;" in err and "pickle" not in err, err


def test_usage_errors_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "demo"])  # --out is required
    assert exc.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_help_names_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "generate" in out and "codec" in out
    assert Path(SEGUE[0]).exists()


# -- segue generate --melody -------------------------------------------------------------------------------------------

def test_generate_follows_a_melody_file(tiny_melody, tmp_path):
    """A 44.1 kHz stereo melody file, a tiny MusicGen-Melody folder, a real process: the codes are those of a take
    given the same melody in this process (mixed to mono and resampled as --continue is), and not those of the
    same take without it."""
    import soxr
    import torch

    from segue.models.generation import Take
    from segue.models.lm.config import SamplingParams
    from segue.models.loading.builder import load_model

    t = np.arange(int(1.5 * 44100)) / 44100
    notes = np.where(t < 0.75, 261.63, 392.0)  # C then G
    stereo = np.stack([0.4 * np.sin(2 * np.pi * notes * t), 0.2 * np.sin(2 * np.pi * 329.63 * t)]).astype(np.float32)
    support.write_wav(tmp_path / "melody.wav", stereo, 44100, "PCM_24")
    args = ["generate", "--model", tiny_melody[2], "--prompt", "lead", "--duration", "0.5", "--temperature", "0",
            "--seed", "1", "--melody", tmp_path / "melody.wav", "--out", tmp_path / "m.wav", "--codes-out",
            tmp_path / "m.npy"]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "following the melody" in r.stderr and "full mix" in r.stderr
    assert sf.info(str(tmp_path / "m.wav")).frames == 16000

    model = load_model(str(tiny_melody[2]))
    data, _ = sf.read(str(tmp_path / "melody.wav"), dtype="float32", always_2d=True)
    mono = soxr.resample(data.mean(1, keepdims=True), 44100, 32000, quality="HQ").T  # what the CLI hands the model
    melody = model.melody_from_audio(torch.from_numpy(np.ascontiguousarray(mono)))
    take = Take(model, "lead", None, 25, SamplingParams(temperature=0, seed=1), melody=melody)
    list(take)
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), take.new_codes())
    plain = Take(model, "lead", None, 25, SamplingParams(temperature=0, seed=1))
    list(plain)
    assert not np.array_equal(plain.new_codes(), take.new_codes())


@pytest.mark.parametrize("model, melody, message", [
    ("demo", "ok.wav", "takes no melody"),
    ("demo-melody", "text.wav", "not an audio file"),
    ("demo-melody", "nope.wav", "does not exist"),
    ("demo-melody", "nan.wav", "NaN or infinite"),
])
def test_bad_melody_input(files, capsys, model, melody, message):
    argv = ["generate", "--model", model, "--duration", "1", "--melody", str(files / melody), "--out",
            str(files / "out.wav")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segue: error:") and message in err[0], err
