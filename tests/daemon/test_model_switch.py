"""`set model=...`: another model loads on its own thread while the current one keeps playing, new takes use it,
old takes finish on theirs; status lists what is loaded; a load that fails (missing, too big for memory, broken)
leaves the current model in place. Real files, real ZeroMQ sockets, the engine on the no-device clock."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import model_folders
from segue.daemon.audio_io import NullAudio
from segue.daemon.client import Client, DaemonError
from segue.daemon.engine import Engine
from segue.daemon.session import EngineConfig
from segue.daemon.model_slot import checked_load
from segue.daemon.zmq_transport import ZmqServer
from segue.models.loading.builder import load_model
from segue.models.loading.hub import fetch
from support import offline_take, wait_until

RATE = 48000


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return dict(mono=model_folders.mono_musicgen(root / "mono"), audiogen=model_folders.audiogen(root / "audiogen"),
                stereo=model_folders.stereo_musicgen(root / "stereo"))


def _daemon(model, takes: Path, keep_models: int = 0, allowed: tuple[Path, ...] = ()):
    transports = []
    engine = Engine(model, NullAudio(RATE, 2, 256), EngineConfig(takes, allowed, keep_models=keep_models),
                    emit=lambda ev: transports and transports[0].event(ev),
                    load=lambda ref: checked_load(ref, torch.device("cpu"), torch.float32, fetch, load_model))
    engine.warm_up(0.2)
    server = ZmqServer(engine, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    engine.mixer.publish = server.audio
    transports.append(server)
    engine.start()
    server.start()
    client = Client(server.endpoint, server.pub_endpoint)
    time.sleep(0.3)  # let the subscription reach the publisher
    return engine, server, client


@pytest.fixture
def daemon(demo, tmp_path, folders):
    # `set model=` takes folders inside the allowed ones only: the test models' and this test's own.
    engine, server, client = _daemon(demo, tmp_path / "takes", allowed=(folders["mono"].parent, tmp_path))
    yield engine, client
    client.close()
    server.close()
    engine.close()


def _events_until_done(client, rid, timeout=60.0):
    seen = []
    deadline = time.monotonic() + timeout
    for ev in client.events(timeout=timeout):
        seen.append(ev)
        if ev.get("id") == rid and ev["event"] in ("done", "error"):
            return seen
        if time.monotonic() > deadline:
            break
    raise AssertionError(f"request {rid} never ended: {seen[-5:]}")


def test_switch_while_a_take_plays_then_the_old_model_goes(daemon, folders):
    engine, client = daemon
    playing = client.request("generate", endless=True, start="now", seed=1)["id"]
    client.wait(playing, "started")
    rid = client.request("set", model=str(folders["mono"]))["id"]
    seen = _events_until_done(client, rid)
    mine = [e for e in seen if e.get("id") == rid]
    assert [e["event"] for e in mine] == ["loading", "done"], mine
    done = mine[-1]
    assert done["model"]["model"] == str(folders["mono"]) and done["model"]["sample_rate"] == 32000
    assert done["model"]["weights_mb"] > 0 and done["model"]["load_wait_s"] >= 0
    st = client.request("status")["status"]
    assert st["model"] == str(folders["mono"]) and st["model_rate"] == 32000 and st["loading"] is None
    assert [(m["model"], m["current"], m["takes"]) for m in st["models"]] == [("demo", False, 1),
                                                                               (str(folders["mono"]), True, 0)]

    # New takes use the new model (32 kHz, resampled to the device's 48 kHz).
    new = client.wait(client.request("generate", prompt="x", seconds=0.5, start="now", seed=2, lane=1)["id"])
    assert json.loads(Path(new["path"].replace(".wav", ".json")).read_text())["model"] == str(folders["mono"])

    # The take that was playing went on, on its own model, while the other loaded and after; it is let go once
    # its last take has ended (keep_models 0).
    client.request("stop", take=playing)
    stopped = client.wait(playing)
    assert stopped["dropped"] == 0 and stopped["samples"] > 0
    time.sleep(0.1)
    st = client.request("status")["status"]
    assert [m["model"] for m in st["models"]] == [str(folders["mono"])]

    # What the new take streamed is exact on its model. (The reference is built only now: loading a model in this
    # process, which the engine shares, while a take plays would be this test starving the engine thread.)
    pcm, sr = sf.read(new["path"], dtype="float32", always_2d=True)
    assert sr == RATE and len(pcm) == RATE // 2
    offline = offline_take(load_model(str(folders["mono"])), new["path"], RATE)
    fade = round(0.005 * RATE)
    np.testing.assert_allclose(pcm[: len(pcm) - fade, 0], offline[: len(pcm) - fade], atol=1e-4)


def test_audiogen_and_stereo_models_stream_exactly_at_the_device_rate(daemon, folders):
    _, client = daemon
    for name, rate, channels in (("audiogen", 16000, 1), ("stereo", 32000, 2)):
        ev = client.wait(client.request("set", model=str(folders[name]))["id"])
        assert ev["model"]["sample_rate"] == rate and ev["model"]["channels"] == channels
        done = client.wait(client.request("generate", prompt="dog barking", seconds=0.5, start="now", seed=4)["id"])
        pcm, sr = sf.read(done["path"], dtype="float32", always_2d=True)
        assert sr == RATE and pcm.shape == (RATE // 2, 2)
        model = load_model(str(folders[name]))
        fade = round(0.005 * RATE)
        np.testing.assert_allclose(pcm[:-fade, 0], offline_take(model, done["path"], RATE)[: len(pcm) - fade],
                                   atol=1e-4)
        if channels == 2:  # the right channel is the right codec pass, not a copy of the left
            codes = torch.from_numpy(np.load(done["path"].replace(".wav", ".codes.npy")).astype(np.int64))[None]
            right = model.decode(codes)[0, 1].numpy()
            assert not np.allclose(pcm[:-fade, 0], pcm[:-fade, 1]) and np.abs(right).max() > 0
        # continuing a take of this model: prompt encoded at its rate, its channels
        cont = client.wait(client.request("continue", source="take", take=done["id"], seconds=0.3, start="now",
                                          seed=5)["id"])
        meta = json.loads(Path(cont["path"].replace(".wav", ".json")).read_text())
        assert meta["prompt_frames"] == 25 and sf.info(cont["path"]).frames == round(0.3 * RATE)


def test_kept_models_switch_back_at_once_and_retry_on_the_model_that_made_the_take(demo, folders, tmp_path):
    engine, server, client = _daemon(demo, tmp_path / "takes", keep_models=1, allowed=(folders["mono"].parent,))
    try:
        first = client.wait(client.request("generate", seconds=0.3, start="now", seed=1)["id"])
        client.wait(client.request("set", model=str(folders["mono"]))["id"])
        again = client.wait(client.request("retry", take=first["id"], start="now", seed=9)["id"])
        meta = json.loads(Path(again["path"].replace(".wav", ".json")).read_text())
        assert meta["model"] == "demo" and meta["retry_of"] == first["id"]
        rid = client.request("set", model="demo")["id"]
        seen = _events_until_done(client, rid, timeout=5)
        assert [e["event"] for e in seen if e.get("id") == rid] == ["done"]  # no loading: it was kept
        st = client.request("status")["status"]
        assert [(m["model"], m["current"]) for m in st["models"]] == [("demo", True), (str(folders["mono"]), False)]
    finally:
        client.close()
        server.close()
        engine.close()


def test_loads_that_fail_leave_the_current_model(daemon, tmp_path, folders):
    engine, client = daemon
    rid = client.request("set", model=str(tmp_path / "no-such-model"))["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "model_error" and "no folder" in e.value.reply["message"]

    # Weights larger than the memory free: refused before anything is read (a sparse file, no disk used).
    huge = tmp_path / "huge"
    huge.mkdir()
    (huge / "config.json").write_text(Path(folders["mono"], "config.json").read_text())
    with open(huge / "model.safetensors", "wb") as f:
        f.truncate(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") + 2**30)
    rid = client.request("set", model=str(huge))["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "out_of_memory" and "the current model stays" in e.value.reply["message"]

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state_dict.bin").write_bytes(b"not a checkpoint")
    with pytest.raises(DaemonError) as e:
        client.wait(client.request("set", model=str(broken))["id"])
    assert e.value.code == "model_error" and "not a readable PyTorch checkpoint" in e.value.reply["message"]

    # Outside the allowed folders: one answer before `ok`, whether the folder exists or not (it said which).
    answers = set()
    for outside in (str(Path.home()), "/no/such/folder", "~/models", "models/../..", "a/..", "relative/folder/x"):
        with pytest.raises(DaemonError) as e:
            client.request("set", model=outside)
        assert e.value.code == "path_not_allowed", outside
        answers.add(e.value.reply["message"])
    assert len(answers) == 1 and "--allow" in answers.pop()

    for bad, code in (("", "bad_type"), (3, "bad_type"), ("x" * 600, "too_large"), ("a\nb", "bad_type")):
        with pytest.raises(DaemonError) as e:
            client.request("set", model=bad)
        assert e.value.code == code, bad

    # One load at a time: a second request while one is loading is refused, the first goes on.
    first = client.request("set", model=str(folders["mono"]))["id"]
    second = client.request("set", model=str(folders["stereo"]))["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(second)
    assert e.value.code == "busy"
    assert client.wait(first)["model"]["model"] == str(folders["mono"])

    st = client.request("status")["status"]
    assert st["model"] == str(folders["mono"]) and len(st["models"]) == 1
    done = client.wait(client.request("generate", seconds=0.2, start="now")["id"])
    assert done["state"] == "done"


def test_takes_follow_a_melody_from_pcm_a_file_or_a_take(tmp_path):
    """MusicGen-Melody in the daemon: the chroma of the audio named by `melody` conditions the take, whichever
    source it comes from; the take equals an offline take made with that melody; a model without melody says so."""
    from segue.models.generation import Take
    from segue.models.lm.config import SamplingParams

    model = load_model("demo-melody")
    loops = tmp_path / "loops"
    loops.mkdir()
    engine = Engine(model, NullAudio(RATE, 2, 256), EngineConfig(tmp_path / "takes", (loops,)), emit=lambda ev: None)
    engine.warm_up(0.2)
    server = ZmqServer(engine, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    engine.emit = server.event
    engine.mixer.publish = server.audio
    engine.start()
    server.start()
    client = Client(server.endpoint, server.pub_endpoint)
    time.sleep(0.3)
    try:
        t = np.arange(3 * RATE) / RATE
        arpeggio = np.concatenate([0.4 * np.sin(2 * np.pi * f * t[: RATE]) for f in (261.6, 329.6, 392.0)])
        tune = arpeggio.astype(np.float32)[:, None]  # [n, 1] C E G, a second each
        sf.write(str(loops / "tune.wav"), tune, RATE, subtype="FLOAT")

        def take(**fields):
            return client.wait(client.request("generate", prompt="piano", seconds=0.5, start="now", seed=11,
                                              **fields)["id"])

        by_pcm = take(melody="pcm", sample_rate=RATE, pcm=tune)
        by_file = take(melody="file", melody_path=str(loops / "tune.wav"))
        other_tune = np.concatenate([0.4 * np.sin(2 * np.pi * f * t[:RATE]) for f in (370.0, 440.0, 277.2)])
        other = take(melody="pcm", sample_rate=RATE, pcm=other_tune.astype(np.float32)[:, None])  # F# A C#
        plain = take()
        by_take = take(melody="take", melody_take=other["id"])
        take_audio = sf.read(other["path"], dtype="float32", always_2d=True)[0]
        by_its_pcm = take(melody="pcm", sample_rate=RATE, channels=2, pcm=take_audio)
        codes = {k: np.load(ev["path"].replace(".wav", ".codes.npy")) for k, ev in dict(
            pcm=by_pcm, file=by_file, other=other, plain=plain, take=by_take, its_pcm=by_its_pcm).items()}
        np.testing.assert_array_equal(codes["pcm"], codes["file"])  # the same audio, the same take
        np.testing.assert_array_equal(codes["take"], codes["its_pcm"])
        assert not np.array_equal(codes["pcm"], codes["plain"]) and not np.array_equal(codes["pcm"], codes["other"])

        meta = json.loads(Path(by_file["path"].replace(".wav", ".json")).read_text())
        assert meta["melody"]["source"] == "file" and meta["melody"]["separation"] == "full mix"
        assert abs(meta["melody"]["seconds"] - 3.0) < 0.2
        heard, sr = sf.read(by_file["path"].replace(".wav", ".melody.wav"), dtype="float32", always_2d=True)
        assert sr == RATE and np.array_equal(heard, tune)

        # Offline, with the melody of the saved melody file: the same codes.
        from segue.models.audio import to_model_audio

        melody = model.melody_from_audio(to_model_audio(heard.T, sr, model.sample_rate, 1))
        offline = Take(model, "piano", None, codes["file"].shape[1], SamplingParams(seed=11), melody=melody)
        for _ in offline:
            pass
        np.testing.assert_array_equal(offline.new_codes(), codes["file"])

        # A retry keeps the melody (in the snapshot, not computed again): retries of the two takes that followed the
        # same melody are the same with the same seed, and not what the take without a melody gives.
        def retry(ev):
            done = client.wait(client.request("retry", take=ev["id"], seed=5, start="now")["id"])
            return np.load(done["path"].replace(".wav", ".codes.npy"))

        np.testing.assert_array_equal(retry(by_file), retry(by_pcm))
        assert not np.array_equal(retry(by_file), retry(plain))

    finally:
        client.close()
        server.close()
        engine.close()


def test_a_melody_for_a_model_without_one_is_refused(daemon):
    _, client = daemon
    rid = client.request("generate", melody="pcm", sample_rate=RATE, pcm=np.zeros((RATE, 1), np.float32))["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "bad_request" and "takes no melody" in e.value.reply["message"]
    rid = client.request("set", model="demo-melody")["id"]
    assert client.wait(rid)["model"]["kind"] == "musicgen-melody"
    with pytest.raises(DaemonError) as e:
        client.wait(client.request("generate", melody="take", melody_take=999)["id"])
    assert e.value.code == "no_such_take"
    done = client.wait(client.request("generate", melody="pcm", sample_rate=RATE, seconds=0.2, start="now",
                                      pcm=np.zeros((RATE // 2, 1), np.float32))["id"])
    assert done["state"] == "done"  # silence is a melody too: the null chroma, as the references make it


def test_a_load_waits_until_the_playing_takes_are_ahead(demo):
    """The loader reads and warms up a model only once every playing take has enough audio queued (so the load
    cannot make one run dry on a busy CPU), and waits `max_wait` at most."""
    from segue.daemon.model_slot import Loaded, ModelLoader

    ahead, delivered = [0.2], []
    loader = ModelLoader(lambda ref: demo, Loaded, lambda *result: delivered.append(result), lambda: ahead[0],
                         min_headroom=1.0, max_wait=30.0)
    loader.request(1, "demo")
    time.sleep(0.3)
    assert loader.status()["waiting_for_takes"] and not delivered
    ahead[0] = 2.0  # the takes got ahead: the load goes on
    wait_until(lambda: delivered, 10, "the load")
    ((rid, ref, loaded, error),) = delivered
    assert (rid, ref, error) == (1, "demo", None) and 0.3 <= loaded.load_wait_s < 5 and loader.status() is None

    never = ModelLoader(lambda ref: demo, Loaded, lambda *result: delivered.append(result), lambda: 0.0,
                        min_headroom=1.0, max_wait=0.3)
    never.request(2, "demo")  # takes that never get far enough ahead (a CPU slower than real time): it loads anyway
    wait_until(lambda: len(delivered) == 2, 10, "the second load")
    loaded = delivered[1][2]
    assert delivered[1][3] is None and 0.6 <= loaded.load_wait_s < 3  # before reading and before warming up


def test_a_hub_id_from_a_client_is_never_a_folder_of_the_daemon(tmp_path, monkeypatch):
    """`set model=relx/model` looked like a hub id and loaded the folder of that name in the daemon's working
    directory, which is no allowed folder; and the answer told whether it existed. Now a client's hub id is looked
    up on the hub only (here offline: its cache), with one answer either way."""
    from segue.daemon.model_slot import client_fetch
    from segue.models.errors import SegueError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "relx" / "model").mkdir(parents=True)
    (tmp_path / "relx" / "model" / "config.json").write_text("{}")
    answers = []
    for ref in ("relx/model", "relx/absent"):
        with pytest.raises(SegueError) as err:
            client_fetch(ref)
        answers.append(str(err.value).replace(ref, "REF"))
    assert answers[0] == answers[1] and "not in the local cache" in answers[0]
    assert client_fetch(str(tmp_path / "relx" / "model")) == tmp_path / "relx" / "model"  # absolute: a folder
