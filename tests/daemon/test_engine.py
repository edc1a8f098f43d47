"""The engine end to end on the demo model, with the real-time clock of `--audio-device none` and real ZeroMQ
sockets: ack, events, takes on disk, exactness of the streamed audio, retry, stop, bad input."""

import json
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from segue.daemon.client import Client, DaemonError
from segue.daemon.zmq_transport import ZmqServer
from support import offline_take, start_engine

RATE = 48000


def _zmq(engine):
    server = ZmqServer(engine, "tcp://127.0.0.1:*", "tcp://127.0.0.1:*")
    engine.mixer.publish = server.audio
    return server


@pytest.fixture
def daemon(demo, tmp_path):
    engine, server = start_engine(demo, tmp_path / "takes", _zmq, (tmp_path / "loops",))
    client = Client(server.endpoint, server.pub_endpoint)
    time.sleep(0.3)  # let the subscription reach the publisher
    yield engine, server, client
    client.close()
    server.close()
    engine.close()


def test_generate_streams_a_take_that_equals_an_offline_decode_of_its_codes(daemon, demo):
    engine, _, client = daemon
    reply = client.request("generate", prompt="dub", seconds=1.0, start="now", seed=3)
    done = client.wait(reply["id"])
    assert done["state"] == "done" and done["dropped"] == 0
    pcm, sr = sf.read(done["path"], dtype="float32", always_2d=True)
    assert sr == RATE and pcm.shape == (RATE, 2)  # exactly the requested length, on the device's channels
    codes = np.load(done["path"].replace(".wav", ".codes.npy"))
    assert codes.shape[0] == 4 and codes.shape[1] == done["frames"]
    offline = offline_take(demo, done["path"], RATE)
    fade = round(0.005 * RATE)
    np.testing.assert_allclose(pcm[: RATE - fade, 0], offline[: RATE - fade], atol=1e-4)
    meta = json.loads(open(done["path"].replace(".wav", ".json")).read())
    assert meta["seed"] == 3 and meta["state"] == "done" and meta["samples"] == RATE


def test_no_underrun_is_counted_before_anything_plays(daemon):
    engine, _, client = daemon
    assert client.request("status")["status"]["audio"]["underruns"] == 0


def test_start_on_the_next_bar_and_length_in_bars(daemon):
    engine, _, client = daemon
    client.request("tempo", bpm=240, beats_per_bar=4, beat=0.5)
    rid = client.request("generate", bars=1, start="next_bar")["id"]
    queued = client.wait(rid, "queued")
    grid = engine.grid
    phase = grid.beat_at(queued["start"]) % 4
    assert min(phase, 4 - phase) * grid.samples_per_beat <= 0.5  # on a bar line, to the sample
    done = client.wait(rid)
    assert done["samples"] == RATE  # one bar at 240 bpm = 1 s


def test_continue_pcm_then_retry_gives_another_take_from_the_same_prompt(daemon):
    engine, _, client = daemon
    loop = (0.3 * np.sin(np.arange(RATE) * 2 * np.pi * 220 / RATE)).astype(np.float32)
    rid = client.request("continue", pcm=loop[:, None], source="pcm", sample_rate=RATE, seconds=0.5,
                         start="now", seed=1)["id"]
    first = client.wait(rid)
    rid2 = client.request("retry", take=rid, start="now")["id"]
    second = client.wait(rid2)
    a = sf.read(first["path"])[0]
    b = sf.read(second["path"])[0]
    assert a.shape == b.shape and not np.allclose(a, b)
    meta = json.loads(open(second["path"].replace(".wav", ".json")).read())
    assert meta["retry_of"] == rid and meta["source"] == "pcm"


def test_stop_ends_an_endless_take_with_a_valid_file(daemon):
    _, _, client = daemon
    rid = client.request("generate", endless=True, start="now")["id"]
    client.wait(rid, "started")
    client.request("stop", take=rid, fade=0.05)
    done = client.wait(rid)
    assert done["state"] == "stopped"
    info = sf.info(done["path"])
    assert info.frames > 0 and info.samplerate == RATE


def test_bad_input_is_answered_and_the_daemon_keeps_serving(daemon, tmp_path):
    engine, server, client = daemon
    with pytest.raises(DaemonError) as e:
        client.send_raw([b"{not json"])
    assert e.value.code == "bad_json"
    with pytest.raises(DaemonError) as e:  # json's decoder recursed past Python's limit: was `internal`
        client.send_raw([b"[" * 100_000])
    assert e.value.code == "bad_json" and "nested" in str(e.value)
    with pytest.raises(DaemonError) as e:  # an integer no float holds: was `internal`, with a traceback
        client.send_raw([b'{"cmd": "tempo", "bpm": 1' + b"0" * 400 + b"}"])
    assert e.value.code == "out_of_range"
    with pytest.raises(DaemonError) as e:  # past Python's 4300 digits: was `bad_json`, with advice for programmers
        client.send_raw([b'{"cmd": "generate", "seed": ' + b"9" * 5000 + b"}"])
    assert e.value.code == "out_of_range" and "digits" not in str(e.value)
    with pytest.raises(DaemonError) as e:
        client.send_raw([b'{"cmd": 5}'])
    assert e.value.code == "bad_type"
    with pytest.raises(DaemonError) as e:  # reached Path.resolve(): was `internal` after `ok`
        client.request("continue", source="file", path=str(tmp_path / "a\x00b.wav"))
    assert e.value.code == "bad_type"
    with pytest.raises(DaemonError) as e:  # a null where a value is needed: refused before `ok`
        client.request("tempo", bpm=None)
    assert e.value.code == "missing"
    with pytest.raises(DaemonError) as e:
        client.request("dance")
    assert e.value.code == "unknown_command"
    with pytest.raises(DaemonError) as e:
        client.request("continue", source="pcm", sample_rate=RATE, pcm=np.full((10, 1), np.nan, np.float32))
    assert e.value.code == "bad_audio"
    rid = client.request("continue", source="file", path="/etc/passwd")["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "path_not_allowed"
    rid = client.request("continue", source="take", take=999)["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "no_such_take"
    assert client.request("status")["status"]["model"] == "demo"


def test_many_clients_at_once(daemon):
    _, server, _ = daemon
    results = []

    def one(i):
        c = Client(server.endpoint)
        try:
            results.append(c.request("status")["ok"])
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results == [True] * 8
    # a REQ client (with the empty delimiter) works too
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(server.endpoint)
    req.send(b'{"cmd": "takes"}')
    assert req.poll(5000)
    assert json.loads(req.recv())["ok"]
    req.close(0)


def test_takes_playing_together_are_each_exact(daemon, demo):
    """Two takes at once, stepped in one LM call: each still equals an offline decode of its own codes."""
    _, _, client = daemon
    ids = [client.request("generate", prompt=p, seconds=1.0, start="now", seed=k, lane=k)["id"]
           for k, p in enumerate(("dub", "pads"))]
    for rid in ids:
        done = client.wait(rid)
        pcm, _ = sf.read(done["path"], dtype="float32", always_2d=True)
        offline = offline_take(demo, done["path"], RATE)
        fade = round(0.005 * RATE)
        np.testing.assert_allclose(pcm[: RATE - fade, 0], offline[: RATE - fade], atol=1e-4)


def test_set_reaches_a_playing_take(daemon):
    engine, _, client = daemon
    # Endless, so that it is still generating when the `set` comes however busy the box is (a finite take on the
    # demo model may be generated to its end before it is heard).
    rid = client.request("generate", prompt="dub", endless=True, start="now", seed=2, temperature=1.0)["id"]
    client.wait(rid, "started")
    client.request("set", temperature=0.2, cfg=5.0)
    client.request("stop", take=rid)
    done = client.wait(rid)
    meta = json.loads(open(done["path"].replace(".wav", ".json")).read())
    (change,) = meta["changes"]
    assert change["temperature"] == 0.2 and change["cfg"] == 5.0 and change["frame"] > 0
    client.request("set", temperature=1.0, cfg=3.0)


def test_a_client_that_vanishes_mid_take_costs_nothing(daemon):
    _, server, client = daemon
    gone = Client(server.endpoint, server.pub_endpoint)
    rid = gone.request("generate", seconds=0.5, start="now", seed=1)["id"]
    gone.close()  # before any event or audio reached it
    done = client.wait(rid)  # the take goes on; everyone else is served
    assert done["state"] == "done" and client.request("status")["ok"]


def test_continue_the_end_of_a_take(daemon):
    _, _, client = daemon
    first = client.wait(client.request("generate", seconds=1.0, start="now", seed=1)["id"])
    rid = client.request("continue", source="take", take=first["id"], last_seconds=0.4, seconds=0.2,
                         start="now")["id"]
    done = client.wait(rid)
    meta = json.loads(open(done["path"].replace(".wav", ".json")).read())
    assert meta["source"] == "take" and meta["last_seconds"] == 0.4 and meta["prompt_frames"] == 20  # 0.4 s, 50 Hz


@pytest.fixture
def short_daemon(tmp_path):
    """The engine on a model trained on 2 s segments (context 104 positions), so that an endless take has to
    re-prompt itself every second or so: what a 30 s MusicGen does past 30 s, in a few seconds of test."""
    from segue.models.lm.config import LMConfig
    from segue.models.loading.demo import DEMO_CODEC, DEMO_T5, random_codec, random_lm, random_text_encoder
    from segue.models.musicgen import ModelInfo, MusicGen

    short = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, n_q=4, card=2048, text_dim=32,
                     max_duration=2.0, frame_rate=50.0)
    model = MusicGen(random_codec(DEMO_CODEC, 1), random_lm(short, 2), random_text_encoder(DEMO_T5, 3),
                     ModelInfo("short", None, "demo", "musicgen"))
    engine, server = start_engine(model, tmp_path / "takes", _zmq)
    client = Client(server.endpoint, server.pub_endpoint)
    yield model, engine, client
    client.close()
    server.close()
    engine.close()


def test_an_endless_take_outlives_the_trained_context_without_a_seam(short_daemon):
    """Endless mode past the model's context: the take plays on in real time through several re-prompts, nothing
    is dropped or held back, and the file (what was heard) equals an offline decode of all its codes in one pass,
    so the streamed audio has no seam at the hand-overs."""
    model, engine, client = short_daemon
    audio = client.request("status")["status"]["audio"]
    # Half a second ahead: what is under test is the take's life past the context, not how soon it can start.
    rid = client.request("generate", prompt="dub", endless=True, start=audio["clock"] + RATE // 2, seed=4)["id"]
    client.wait(rid, "started")
    context_s = model.lm.cfg.context / model.lm.cfg.frame_rate
    time.sleep(2.5 * context_s)  # heard for two and a half contexts: re-prompted at least twice
    client.request("stop", take=rid, fade=0.05)
    done = client.wait(rid, timeout=30)
    assert done["state"] == "stopped" and done["dropped"] == 0
    assert client.request("status")["status"]["audio"]["underruns"] == audio["underruns"]
    codes = np.load(done["path"].replace(".wav", ".codes.npy"))
    assert codes.shape[1] == done["frames"] > 2 * model.lm.cfg.context  # frames generated: far past one context
    pcm, _ = sf.read(done["path"], dtype="float32", always_2d=True)
    assert len(pcm) >= 2 * context_s * RATE  # heard: past two contexts
    offline = offline_take(model, done["path"], RATE)
    # Left out at the end: the stop's fade, and the codec's look-ahead before it, which the streamed decode heard
    # with the frames that followed (generated, then cut by the stop) and a one-pass decode of the file's codes
    # without them; one frame more for the resampler's edge.
    edge = 0.05 + (model.codec.decoder_lookahead_samples() + model.hop_length) / model.sample_rate
    n = len(pcm) - round(edge * RATE)
    np.testing.assert_allclose(pcm[:n, 0], offline[:n], atol=1e-4)


def test_take_numbers_are_not_used_up_by_other_requests(daemon):
    """Take commands are numbered with their take's number; tempo, set and stop get negative request ids, so a
    DAW resending its tempo every second (or a sync leader re-anchoring) leaves the take numbers contiguous."""
    engine, _, client = daemon
    first = client.request("generate", seconds=0.2, start="now", seed=1)["id"]
    others = [client.request("tempo", bpm=120)["id"] for _ in range(5)]
    others += [client.request("set", temperature=1.0)["id"], client.request("stop")["id"]]
    second = client.request("generate", seconds=0.2, start="now", seed=2)["id"]
    assert second == first + 1 and all(i < 0 for i in others) and len(set(others)) == len(others)
    assert client.wait(others[0])["cmd"] == "tempo"  # a request's events carry its own id
    for rid in (first, second):
        done = client.wait(rid)
        assert done["path"].endswith(f"{rid:04d}-generate.wav")


def test_a_tempo_is_anchored_where_it_arrived_not_where_the_engine_got_to_it(daemon):
    """`submit` takes the clock sample at which the transport received the request: the grid's beat is anchored
    there however late the engine thread handles it."""
    from segue.daemon.vocabulary import Tempo

    engine, _, client = daemon
    arrived = engine.audio.now() - 0.5 * RATE  # as if the engine had been busy for half a second since
    rid = engine.submit(Tempo(90.0, 4, 2.0, "zmq"), received=arrived)
    done = client.wait(rid)
    assert done["at"] == pytest.approx(arrived, abs=1)
    assert engine.grid.beat_at(arrived) == pytest.approx(2.0, abs=1e-6)
    client.request("tempo", bpm=120, beats_per_bar=4, beat=0)


def test_a_time_tagged_tempo_moves_the_grid_at_its_time_not_before(daemon):
    """A `tempo` for a moment ahead (an OSC bundle's time tag) is held until then: the grid heard until that moment
    stays, status shows the old tempo meanwhile, and the new one is anchored exactly at the tag."""
    from segue.daemon.vocabulary import Tempo

    engine, _, client = daemon
    client.wait(client.request("tempo", bpm=120, beats_per_bar=4, beat=0)["id"])
    at = int(engine.audio.now()) + RATE  # one second ahead
    rid = engine.submit(Tempo(60.0, 3, 0.0, "osc"), at=at)
    time.sleep(0.3)
    st = client.request("status")["status"]["tempo"]
    assert (st["bpm"], st["beats_per_bar"]) == (120, 4)  # not yet
    done = client.wait(rid, timeout=5)
    assert done["at"] == at and (done["bpm"], done["beats_per_bar"]) == (60, 3)
    assert engine.audio.now() >= at - engine.audio.block
    assert engine.grid.beat_at(at) == pytest.approx(0.0, abs=1e-6)
    client.wait(client.request("tempo", bpm=120, beats_per_bar=4, beat=0)["id"])


def test_time_tagged_commands_waiting_for_their_time_are_bounded(daemon, monkeypatch):
    """Each held `set` or `tempo` is kept until its time (up to 600 s ahead): past MAX_HELD of them, one more is
    `busy`, with its id."""
    from segue.daemon import engine as engine_module
    from segue.daemon.vocabulary import Set

    monkeypatch.setattr(engine_module, "MAX_HELD", 3)
    engine, _, client = daemon
    at = int(engine.audio.now()) + 30 * RATE
    ids = [engine.submit(Set({"temperature": 0.9}), at=at) for _ in range(4)]
    with pytest.raises(DaemonError) as e:
        client.wait(ids[3], timeout=5)
    assert e.value.code == "busy" and "3 time-tagged" in str(e.value) and len(engine.later) == 3


def test_a_take_stopped_before_it_starts_stays_silent(daemon):
    """A `stop` that arrives before the take's first sample silences it whole: no fade burst at its start, no
    `started` event, and its files say so (state `cancelled`, no samples)."""
    engine, server, client = daemon
    client.request("tempo", bpm=60, beats_per_bar=4, beat=0.1)  # the next bar line is almost 4 s away
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"audio")
    sub.connect(server.pub_endpoint)
    time.sleep(0.2)
    rid = client.request("generate", bars=1, start="next_bar", seed=3)["id"]
    queued = client.wait(rid, "queued")
    client.request("stop", take=rid, fade=0.5)
    done = client.wait(rid)
    assert done["state"] == "cancelled" and done["samples"] == 0 and done["frames"] == 0
    meta = json.loads(open(done["path"].replace(".wav", ".json")).read())
    assert meta["state"] == "cancelled" and meta["samples"] == 0
    assert sf.info(done["path"]).frames == 0
    while engine.audio.now() < queued["start"] + RATE // 2:  # past where it would have sounded
        time.sleep(0.05)
    published = []
    while sub.poll(0):
        header = json.loads(sub.recv_multipart()[1])
        published.append(header["start"])
    sub.close()
    assert not published, f"the mix sounded at {published} (the take was to start at {queued['start']})"
    client.request("tempo", bpm=120, beats_per_bar=4, beat=0)


def test_a_cancelled_take_gives_its_lane_back(daemon):
    """A take that would replace the one playing on its lane, stopped before it starts, leaves that one playing."""
    engine, _, client = daemon
    client.request("tempo", bpm=60, beats_per_bar=4, beat=0.1)
    playing = client.request("generate", endless=True, start="now", seed=4, lane=3)["id"]
    started = client.wait(playing, "started")
    rid = client.request("generate", bars=1, start="next_bar", seed=5, lane=3)["id"]
    queued = client.wait(rid, "queued")
    client.request("stop", take=rid)
    assert client.wait(rid)["state"] == "cancelled"
    while engine.audio.now() < queued["start"] + RATE // 2:
        time.sleep(0.05)
    assert [t["id"] for t in client.request("status")["status"]["takes"]] == [playing]  # still playing
    client.request("stop", take=playing)
    done = client.wait(playing)
    assert done["state"] == "stopped" and started["start"] + done["samples"] > queued["start"] + RATE // 2
    client.request("tempo", bpm=120, beats_per_bar=4, beat=0)


def test_take_numbers_past_9999_keep_their_order_and_are_found_again(demo, tmp_path):
    """A folder whose last take is 9999: the next is 10000 (five digits), listed first, and a continuation of
    it finds it by its number."""
    takes = tmp_path / "takes"
    takes.mkdir()
    (takes / "9999-generate.json").write_text(json.dumps(dict(id=9999, state="done")))
    engine, server = start_engine(demo, takes, _zmq)
    client = Client(server.endpoint, server.pub_endpoint)
    try:
        time.sleep(0.3)
        first = client.wait(client.request("generate", prompt="dub", seconds=0.3, start="now", seed=1)["id"])
        assert first["id"] == 10000 and first["path"].endswith("10000-generate.wav")
        rid = client.request("continue", source="take", take=10000, seconds=0.3, start="now", seed=2)["id"]
        assert client.wait(rid)["state"] == "done" and rid == 10001
        assert [t["id"] for t in client.request("takes")["takes"]][:3] == [10001, 10000, 9999]
    finally:
        client.close()
        server.close()
        engine.close()


def test_a_link_named_like_a_take_is_not_followed(daemon, tmp_path):
    """`continue source=take` reads the take's own WAV by exact name: a symlink named like one, pointing out of
    the takes folder, is no take."""
    engine, _, client = daemon
    outside = tmp_path / "secret.wav"
    sf.write(str(outside), np.zeros(4800, np.float32), RATE)
    (engine.cfg.takes_dir / "0042-generate.wav").symlink_to(outside)
    (engine.cfg.takes_dir / "0042-generate.json").write_text(json.dumps(dict(id=42, state="done")))
    rid = client.request("continue", source="take", take=42, seconds=0.3, start="now")["id"]
    with pytest.raises(DaemonError) as e:
        client.wait(rid)
    assert e.value.code == "no_such_take"


def test_a_start_past_the_horizon_is_refused_and_a_stop_ends_a_take_that_has_not_started(daemon):
    """A start 2^62 samples (or 700 s) ahead is refused before `ok`; a take 60 s ahead, stopped, is cancelled at
    once and no longer counts among the generating takes."""
    engine, _, client = daemon
    clock = client.request("status")["clock"]
    for start in (2**62, int(clock) + 700 * RATE):
        with pytest.raises(DaemonError) as e:
            client.request("generate", seconds=1, start=start)
        assert e.value.code == "out_of_range" and "600 s" in str(e.value)
    with pytest.raises(DaemonError) as e:
        client.request("set", start=2**62)
    assert e.value.code == "out_of_range"
    rid = client.request("generate", endless=True, start=int(clock) + 60 * RATE)["id"]
    client.wait(rid, "queued")
    client.request("stop", take=rid)
    done = client.wait(rid, timeout=5)
    assert done["state"] == "cancelled"
    assert client.request("status")["status"]["takes"] == []


def test_pacing_learns_a_model_slower_in_use_than_at_warm_up(daemon, monkeypatch):
    """The warm-up measures a short burst on an idle engine; in use (a busy CPU, a DAW beside it) the model may be
    slower. Here every LM step takes 30 ms more (a 20 ms frame each: about 0.65x real time, where the warm-up said
    10x). The first take, alone, teaches the pacing its sustained speed; the next one is held back by it and drops
    nothing (paced on the warm-up's speed, a 3 s take ran dry)."""
    from segue.daemon import engine as engine_module

    engine, _, client = daemon
    warm = engine.current.rate
    real = engine_module.pump_takes
    monkeypatch.setattr(engine_module, "pump_takes", lambda takes: (time.sleep(0.03), real(takes))[1])
    client.wait(client.request("generate", prompt="dub", seconds=1.0, start="now", seed=1)["id"], timeout=60)
    assert warm > 2 and 0.3 < engine.current.rate < 0.9, (warm, engine.current.rate)
    done = client.wait(client.request("generate", prompt="dub", seconds=3.0, start="now", seed=2)["id"], timeout=60)
    assert done["state"] == "done" and done["dropped"] == 0, done


def test_pacing_counts_a_step_slowing_as_the_context_grows(daemon, monkeypatch):
    """Every step takes 20 ms x (1 + context / 250 positions) here, as if the attention over the KV cache dominated
    (`Loaded.slowdown` says so, as the warm-up would measure it). A 1 s take teaches the pacing the speed at an
    empty cache; a 4 s take, whose average context is four times the short one's, is held back for it and drops
    nothing (paced on the short take's speed it ran dry)."""
    from segue.daemon import engine as engine_module

    engine, _, client = daemon
    engine.current.slowdown = 1 / 250
    real = engine_module.pump_takes

    def slow(takes):
        time.sleep(0.02 * (1 + max(t.stream.frames_ready for t in takes) / 250))
        return real(takes)

    monkeypatch.setattr(engine_module, "pump_takes", slow)
    client.wait(client.request("generate", prompt="dub", seconds=1.0, start="now", seed=1)["id"], timeout=60)
    done = client.wait(client.request("generate", prompt="dub", seconds=4.0, start="now", seed=2)["id"], timeout=60)
    assert done["state"] == "done" and done["dropped"] == 0, done


def test_the_warm_up_measures_how_a_step_slows_with_its_context(daemon):
    engine, _, client = daemon
    (model,) = client.request("status")["status"]["models"]
    assert 0.0 <= model["slowdown_per_position"] < 0.01 and model["slowdown_per_position"] == round(
        engine.current.slowdown, 7)


def test_a_slow_take_set_up_after_fast_ones_does_not_let_the_mix_run_dry(daemon, monkeypatch):
    """A take's set-up runs on the engine thread, so the mix is filled ahead of it first, by what set-ups took
    lately. They vary (74-346 ms from one take to the next on a busy 2-core box at musicgen-small's shapes): here
    one takes 0.6 s, five fast ones follow (one of them a take that plays on), then another takes 0.6 s while that
    take plays. Premixed by a decaying estimate of the set-up time (0.3 s after the fast ones), the bus ran dry;
    by the longest of the last eight, nothing is lost."""
    engine, _, client = daemon
    real = engine._new_take
    slow = {1, 7}  # the requests (in order) whose set-up is slow

    def new_take(rid, cmd, t, read):
        if rid in slow:
            time.sleep(0.6)
        real(rid, cmd, t, read)

    monkeypatch.setattr(engine, "_new_take", new_take)
    assert client.wait(client.request("generate", prompt="dub", seconds=0.1, start="now", seed=1, lane=1)["id"],
                       timeout=30)["state"] == "done"
    before = client.request("status")["status"]["audio"]["underruns"]
    playing = client.request("generate", prompt="dub", seconds=6.0, start="now", seed=2, lane=0)["id"]
    client.wait(playing, "started", timeout=30)
    for k in range(3, 8):
        rid = client.request("generate", prompt="dub", seconds=0.1, start="now", seed=k, lane=k)["id"]
        assert rid == k
        assert client.wait(rid, timeout=30)["state"] == "done"
    done = client.wait(playing, timeout=60)
    assert client.request("status")["status"]["audio"]["underruns"] == before
    assert done["state"] == "done" and done["dropped"] == 0, done
