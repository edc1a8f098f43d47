"""`segue generate --from-take`: a daemon take rendered again, bit for bit.

The takes are made by an in-process engine (the no-device clock, one torch thread) on a MusicGen trained on 2 s
segments, loaded from a folder: its takes re-prompt themselves about every second, so a few seconds of take cross
several re-prompts, whose prefill is where the thread count matters. The take's sidecar records what decides its
tokens; the re-render reads it, and its codes equal the take's codes file exactly."""

import json
import queue
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

import support
from segue.daemon.cli import main
from segue.daemon.vocabulary import parse

RATE = 48000


def _short_model_folder(root):
    """A tiny MusicGen exported in the audiocraft layout with 2 s training segments (context 104 positions)."""
    hf, tok = support.hf_musicgen(seed=2)
    t5 = support.save_t5(hf, tok, root / "t5")
    return support.export_audiocraft(hf, tok, root / "short", t5_name=str(t5), duration=2.0, half=False)


class _Engine:
    def __init__(self, model, takes):
        from segue.daemon.audio_io import NullAudio
        from segue.daemon.engine import Engine
        from segue.daemon.session import EngineConfig

        self.events: queue.Queue = queue.Queue()
        # An endless take runs at most 0.5 s ahead of the playhead, so that a `set` lands inside what is heard.
        self.engine = Engine(model, NullAudio(RATE, 2, 256), EngineConfig(takes, max_lead=0.5), emit=self.events.put)
        self.engine.warm_up(0.2)
        self.engine.start()
        self.seen: list[dict] = []

    def send(self, pcm=None, **req) -> int:
        return self.engine.submit(parse(req, None if pcm is None else pcm.tobytes()))

    def wait(self, rid: int, event: str = "done", timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.seen:
                if ev.get("id") == rid and ev["event"] in (event, "error"):
                    assert ev["event"] == event, ev
                    return ev
            try:
                self.seen.append(self.events.get(timeout=0.1))
            except queue.Empty:
                pass
        raise AssertionError(f"no {event} for {rid}")


@pytest.fixture(scope="module")
def takes(tmp_path_factory):
    """Takes made by the engine with one torch thread -> (model folder, {name: sidecar path})."""
    from segue.models.loading.builder import load_model

    root = tmp_path_factory.mktemp("reproduce")
    folder = _short_model_folder(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = None
    try:
        d = _Engine(load_model(str(folder)), root / "takes")
        context_s = d.engine.model.lm.cfg.context / d.engine.model.frame_rate
        out = {}
        # Endless, a `set` while it plays, stopped after a bit more than 1.5 contexts were heard.
        rid = d.send(cmd="generate", prompt="dub", endless=True, start="now", seed=4)
        d.wait(rid, "started")
        time.sleep(0.3)
        d.send(cmd="set", temperature=0.6, top_k=40, cfg=4.0)
        time.sleep(1.6 * context_s)
        d.send(cmd="stop", take=rid, fade=0.02)
        out["endless"] = d.wait(rid)["path"]
        d.send(cmd="set", temperature=1.0, top_k=250, cfg=3.0)
        # A continuation past a re-prompt (finite: its last frames depend on where the LM was told to stop).
        loop = (0.3 * np.sin(np.arange(RATE // 2) * 2 * np.pi * 220 / RATE)).astype(np.float32)
        rid = d.send(cmd="continue", source="pcm", pcm=loop[:, None], sample_rate=RATE, seconds=2.5,
                     start="now", seed=9)
        out["continue"] = d.wait(rid)["path"]
        rid = d.send(cmd="retry", take=rid, seed=11, start="now")
        out["retry"] = d.wait(rid)["path"]
        # Two takes stepped together in one batched LM call.
        ids = [d.send(cmd="generate", prompt=p, seconds=0.5, start="now", seed=k, lane=k)
               for k, p in enumerate(("a", "b"))]
        out["together"] = [d.wait(i)["path"] for i in ids][0]
        # Takes counted in bars: at 233 bpm a bar is 49442 samples at 48 kHz, 32961.3 at the model's 32 kHz (not
        # whole frames); at 240 bpm two bars are 96000 samples, 64000 (100 whole frames).
        d.wait(d.send(cmd="tempo", bpm=233, beats_per_bar=4, beat=0))
        out["1 bar"] = d.wait(d.send(cmd="generate", prompt="dub", bars=1, start="now", seed=5))["path"]
        d.wait(d.send(cmd="tempo", bpm=240, beats_per_bar=4, beat=0))
        out["2 bars"] = d.wait(d.send(cmd="continue", source="pcm", pcm=loop[:, None], sample_rate=RATE, bars=2,
                                      start="now", seed=6))["path"]
    finally:
        if d is not None:
            d.engine.close()
        torch.set_num_threads(threads)
    return folder, {k: v.replace(".wav", ".json") for k, v in out.items()}


@pytest.fixture(autouse=True)
def _threads_back():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _meta(path):
    return json.loads(open(path).read())


def _rerender(sidecar, tmp_path, name, *extra, process=False):
    out, codes = tmp_path / f"{name}.wav", tmp_path / f"{name}.npy"
    args = ["generate", "--from-take", str(sidecar), "--out", str(out), "--codes-out", str(codes), *extra]
    if process:
        r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", *args], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
    else:
        assert main(args) == 0
    return out, codes


def _offline(model, codes_path, prompt_frames):
    """One-pass decode of all the codes, the prompt's samples dropped -> [C, n] at the model rate."""
    codes = torch.from_numpy(np.load(codes_path).astype(np.int64))[None]
    return model.decode(codes)[0, :, prompt_frames * model.hop_length :].numpy()


def test_an_endless_take_with_a_set_is_rendered_again_bit_for_bit(takes, tmp_path):
    """In a separate process (threads from the sidecar): the codes equal the take's, through the re-prompts and the
    `set` that reached it at a recorded LM column; the audio equals an offline decode of them."""
    from segue.models.loading.builder import load_model

    folder, paths = takes
    meta = _meta(paths["endless"])
    model = load_model(str(folder))
    assert meta["threads"] == 1 and meta["lm_frames"] is None and meta["stepped_with"] == []
    assert meta["frames"] > 1.5 * model.lm.cfg.context  # past more than one re-prompt
    (change,) = meta["changes"]
    assert change["temperature"] == 0.6 and 0 < change["column"] - 1 < meta["frames"]
    assert change["frame"] == change["column"] - 1
    out, codes = _rerender(paths["endless"], tmp_path, "endless", process=True)
    take_codes = np.load(paths["endless"].replace(".json", ".codes.npy"))
    assert np.array_equal(np.load(codes), take_codes)
    audio = sf.read(str(out), dtype="float32", always_2d=True)[0].T
    length = round(meta["samples"] * model.sample_rate / RATE)  # what was kept (stopped), at the model rate
    assert meta["codes_file"]["length"] == length and audio.shape == (1, length)
    np.testing.assert_allclose(audio, _offline(model, codes, 0)[:, :length], atol=1e-5)
    # The same seed without the change, or with another thread count past the re-prompt, is another take: the
    # recipe matters. (Without the change the tokens differ from the change's column on.)
    plain = dict(meta, changes=[])
    side = tmp_path / "0001-plain.json"
    side.write_text(json.dumps(plain))
    shutil.copy(paths["endless"].replace(".json", ".codes.npy"), tmp_path / meta["codes"])
    _, other = _rerender(side, tmp_path, "plain")
    other = np.load(other)
    first = change["column"] - 1  # frame whose first codebook was drawn with the new values
    assert np.array_equal(other[:, :first - 3], take_codes[:, :first - 3])
    assert not np.array_equal(other, take_codes)


def test_a_continuation_and_its_retry_are_rendered_again(takes, tmp_path):
    """The prompt comes from the codes file (not re-encoded), the LM stops where the daemon's did, and a retry
    starts from its original's prompt state (drawn with the original's seed) before its own seed."""
    folder, paths = takes
    for name in ("continue", "retry"):
        meta = _meta(paths[name])
        assert meta["prompt_frames"] == 25 and meta["lm_frames"] is not None
        _, codes = _rerender(paths[name], tmp_path, name)
        assert np.array_equal(np.load(codes), np.load(paths[name].replace(".json", ".codes.npy"))), name
    retry = _meta(paths["retry"])
    assert retry["prefill_seed"] == _meta(paths["continue"])["seed"] == 9 and retry["seed"] == 11


def test_a_daemon_takes_codes_decode_to_the_take(takes, tmp_path):
    """`segue codec decode` of a continuation's codes file (prompt frames first, described by the take's sidecar):
    the new audio only, equal to a one-pass decode; resampled to the device rate it is the take's WAV."""
    from segue.models.loading.builder import load_model

    folder, paths = takes
    codes_path = paths["continue"].replace(".json", ".codes.npy")
    meta = _meta(paths["continue"])
    model = load_model(str(folder))
    assert main(["codec", "decode", "--model", str(folder), codes_path, "--out", str(tmp_path / "dec.wav")]) == 0
    dec = sf.read(str(tmp_path / "dec.wav"), dtype="float32", always_2d=True)[0].T
    assert meta["samples"] == 2.5 * RATE and dec.shape == (1, 2.5 * model.sample_rate)  # the take's length
    np.testing.assert_allclose(dec, _offline(model, codes_path, meta["prompt_frames"])[:, :dec.shape[1]], atol=1e-5)
    wav = sf.read(paths["continue"].replace(".json", ".wav"), dtype="float32", always_2d=True)[0][:, 0]
    heard = soxr.resample(dec[0], model.sample_rate, RATE, quality="HQ")
    n = len(wav) - round(0.01 * RATE)  # the release at the end
    np.testing.assert_allclose(wav[:n], heard[:n], atol=1e-4)


@pytest.mark.parametrize("name, samples", [("1 bar", 49442), ("2 bars", 96000)])
def test_a_take_in_bars_decodes_and_renders_to_its_length(takes, tmp_path, name, samples):
    """A take's codes file describes the take's own length at the model rate, round(samples x 32000 / 48000), not
    the frame of margin the engine generates past it for its resampler: `segue codec decode` gives exactly that many
    samples, which resampled are the take's WAV, and `--from-take` writes that many too (in a real process)."""
    from segue.models.loading.builder import load_model

    folder, paths = takes
    meta = _meta(paths[name])
    model = load_model(str(folder))
    length = round(samples * model.sample_rate / RATE)  # 32961 (51.5 frames) and 64000 (100 frames)
    assert meta["samples"] == samples and meta["codes_file"]["length"] == length
    assert meta["frames"] == -(-length // model.hop_length) + 1  # the margin frame is kept in the codes file
    codes_path = paths[name].replace(".json", ".codes.npy")
    r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "codec", "decode", "--model", str(folder),
                        codes_path, "--out", str(tmp_path / "dec.wav")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    dec = sf.read(str(tmp_path / "dec.wav"), dtype="float32", always_2d=True)[0][:, 0]
    assert dec.shape == (length,)
    wav = sf.read(paths[name].replace(".json", ".wav"), dtype="float32", always_2d=True)[0][:, 0]
    heard = soxr.resample(dec, model.sample_rate, RATE, quality="HQ")
    assert wav.shape == heard.shape == (samples,)
    n = samples - round(0.01 * RATE)  # the release at the end
    np.testing.assert_allclose(wav[:n], heard[:n], atol=1e-4)
    out, codes = _rerender(paths[name], tmp_path, name.replace(" ", "_"), process=True)
    assert sf.info(str(out)).frames == length
    assert np.array_equal(np.load(codes), np.load(codes_path))
    np.testing.assert_allclose(sf.read(str(out), dtype="float32")[0], dec, atol=1e-5)


def test_takes_stepped_together_say_so(takes, tmp_path, capsys):
    folder, paths = takes
    assert _meta(paths["together"])["stepped_with"]
    _rerender(paths["together"], tmp_path, "together")
    assert "not bit-identical" in capsys.readouterr().err


def _full_sidecar(tmp_path, **over):
    meta = dict(model="demo", dtype="float32", device="cpu", threads=1, seed=1, prefill_seed=1,
                sampling=dict(temperature=1.0, top_k=250, top_p=0.0, cfg_coef=3.0, seed=1), chunk_frames=5,
                prompt=None, lm_frames=10, prompt_frames=0, frames=10, codes="0001-generate.codes.npy",
                codes_file=dict(model="demo", sample_rate=32000, hop_length=640, channels=1, codebooks=4, frames=10,
                                prompt_frames=0, length=6400), changes=[])
    meta.update(over)
    path = tmp_path / "0001-generate.json"
    path.write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("case, words", [
    ("missing", "does not exist"),
    ("not json", "not readable JSON"),
    ("missing keys", "lacks dtype, device, threads"),
    ("codes missing", "0001-generate.codes.npy (the take's codes"),
    ("codes mismatch", "do not belong together"),
    ("old changes", "without the LM column"),
    ("flag it owns", "--from-take takes --seed"),
])
def test_bad_from_take_input_is_one_line(tmp_path, capsys, case, words):
    extra = []
    if case == "missing":
        side = tmp_path / "nope.json"
    elif case == "not json":
        side = tmp_path / "0001-generate.json"
        side.write_text("{not json")
    elif case == "missing keys":
        side = tmp_path / "0001-generate.json"
        side.write_text(json.dumps(dict(model="demo", seed=1)))  # what an older segue wrote, roughly
    else:
        side = _full_sidecar(tmp_path, changes=[dict(temperature=0.5, frame=3)] if case == "old changes" else [])
        if case != "codes missing":
            np.save(tmp_path / "0001-generate.codes.npy", np.zeros((4, 3 if case == "codes mismatch" else 10),
                                                                  np.int16))
        if case == "flag it owns":
            extra = ["--seed", "3"]
    assert main(["generate", "--from-take", str(side), "--out", str(tmp_path / "o.wav"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("segue: error:") and words in err[0], err


def test_an_int8_take_says_so_and_is_rendered_again_bit_for_bit(tmp_path):
    """An engine on the int8 LM says so in status and in its take's sidecar, and `segue generate --from-take`
    renders that take again at int8, bit for bit (same kernels, same shapes, same thread count)."""
    from segue.models.loading.builder import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    d = None
    try:
        d = _Engine(load_model("demo", "cpu", "int8"), tmp_path / "takes")
        assert d.engine.status()["dtype"] == "int8"
        rid = d.send(cmd="generate", prompt="dub", seconds=1.0, start="now", seed=3)
        path = d.wait(rid)["path"]
    finally:
        if d is not None:
            d.engine.close()
        torch.set_num_threads(threads)
    side = path.replace(".wav", ".json")
    assert _meta(side)["dtype"] == "int8"
    _, codes = _rerender(side, tmp_path, "int8")
    assert np.array_equal(np.load(codes), np.load(path.replace(".wav", ".codes.npy")))
