"""The daemon end to end on a real JACK server (`jackd -d dummy`), through PortAudio, as a separate process.

A JACK client plays the shipped 2-bar loop into the daemon's input, another records its output, both indexed by
JACK frame. The song's grid is the JACK frame count: bar lines at multiples of one bar (120 bpm, 4/4 -> 96000
samples at 48 kHz), which is also where the loop's own bars fall.

Time convention (the daemon's): `tempo beat=B` means "beat B is being heard now". What a plain JACK client (the
loop, a DAW track) writes at frame F is heard at F + L, L being JACK's system playback latency, so the test tells
the daemon the beat of frame F - L. The daemon must then know its own output latency (PortAudio's, which on JACK
is one period more than a plain client's) for its take to reach the JACK graph in the cycle of the bar line, in
time with the loop.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jack_rig import Daemon, JackServer, Player, Recorder
from segue.daemon.client import Client
from segue.models.loading.builder import load_model
from support import offline_take

pytestmark = pytest.mark.slow

LOOP = Path(__file__).parents[2] / "daemon" / "assets" / "loop_120bpm_2bars.flac"
RATE, BLOCK = 48000, 256
BEAT = RATE // 2  # 120 bpm
BAR = 4 * BEAT


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    takes = tmp_path_factory.mktemp("takes")
    server = JackServer(RATE, BLOCK)
    server.start()
    loop, sr = sf.read(str(LOOP), dtype="float32", always_2d=True)
    assert sr == RATE and len(loop) == 2 * BAR
    player = Player(server, loop)
    daemon = recorder = client = None
    try:
        daemon = Daemon(takes, ["--audio-device", "system", "--sample-rate", str(RATE), "--block-size", str(BLOCK),
                                "--midi", "none"], env=server.env)
        player.connect(server.ports("PortAudio:in"))
        recorder = Recorder(server)
        recorder.connect(server.ports("PortAudio:out"))
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        audio = client.request("status")["status"]["audio"]
        assert audio["running"] and audio["sample_rate"] == RATE and audio["block"] == BLOCK
        _set_tempo(server, recorder, client)
        while client.request("status")["status"]["audio"]["clock"] < 3 * BAR + BAR // 2:
            time.sleep(0.1)  # let the input ring hold two whole bars (after a bar line) of the loop
        yield server, daemon, recorder, client, loop
    finally:
        for closer in (client, recorder, player):
            if closer is not None:
                closer.close()
        if daemon is not None:
            daemon.stop()
        server.stop()


def _set_tempo(server, recorder, client) -> None:
    """120 bpm, 4/4, with the beat position of what is heard now on the JACK grid."""
    latency = server.playback_latency()
    heard = recorder.client.frame_time - latency  # where the song is, as heard in the room
    client.request("tempo", bpm=120, beats_per_bar=4, beat=heard / BEAT)


def test_continue_last_two_bars_starts_on_the_bar_line_and_equals_its_take(rig):
    server, daemon, recorder, client, loop = rig
    before = client.request("status")["status"]["audio"]
    _set_tempo(server, recorder, client)  # as a DAW does, often: a cycle JACK dropped earlier is forgotten
    t0 = recorder.client.frame_time
    rid = client.request("continue", source="live", last_bars=2, bars=2, start="next_bar", seed=5)["id"]
    done = client.wait(rid, timeout=60)
    assert done["state"] == "done" and done["dropped"] == 0
    recorder.wait_for(recorder.client.frame_time + 2 * BLOCK)
    first, last = recorder.loud_span(t0, recorder.last_frame)

    # On a bar line of the JACK grid, within one block; two bars long, within one block.
    phase = first % BAR
    audio = client.request("status")["status"]["audio"]
    assert min(phase, BAR - phase) <= BLOCK, f"take starts {phase} samples off the bar line ({audio})"
    assert abs((last - first + 1) - 2 * BAR) <= BLOCK

    # What came out of the sound card is the take file, which is an offline decode of its codes.
    take, sr = sf.read(done["path"], dtype="float32", always_2d=True)
    assert sr == RATE and len(take) == 2 * BAR
    recorder.assert_heard(first, take)
    offline = offline_take(load_model("demo"), done["path"], RATE)
    fade = round(0.005 * RATE)  # the release at the very end of a finite take
    np.testing.assert_allclose(take[: len(take) - fade, 0], offline[: len(take) - fade], atol=1e-4)

    # The prompt was the last two whole bars of the loop as played, shifted by the round trip the daemon assumes
    # (a musician hears the output L late and is heard by the input its capture latency late).
    after = client.request("status")["status"]["audio"]
    # No block of the take went missing (JACK's own xrun count is not asserted: it also counts this test's Python
    # clients missing their deadlines, and the recording above already equals the take sample for sample).
    assert after["underruns"] == before["underruns"], str(after)
    heard, _ = sf.read(done["path"].replace(".wav", ".prompt.wav"), dtype="float32", always_2d=True)
    assert len(heard) == 2 * BAR
    rt = after["output_latency"] + after["input_latency"]
    shift = int(np.argmax([np.dot(heard[:BEAT, 0], np.roll(loop[:, 0], -k)[:BEAT]) for k in
                           range(0, 2 * BAR, BLOCK)]))
    coarse = shift * BLOCK
    fine = [k for k in range(coarse - BLOCK, coarse + BLOCK + 1)
            if np.allclose(heard, np.roll(loop, -k, axis=0), atol=1e-6)]
    assert fine, "the prompt is not the loop as played"
    assert min((fine[0] - rt) % BAR, BAR - (fine[0] - rt) % BAR) <= BLOCK


def test_stop_fades_out_without_a_click(rig):
    server, daemon, recorder, client, loop = rig
    t0 = recorder.client.frame_time
    rid = client.request("generate", prompt="drone", endless=True, start="now", seed=2)["id"]
    client.wait(rid, "started")
    time.sleep(1.0)
    stop = client.request("stop", take=rid, fade=0.05)
    assert stop["ok"]
    done = client.wait(rid, timeout=30)
    assert done["state"] == "stopped"
    recorder.wait_for(recorder.client.frame_time + BAR // 2)
    first, last = recorder.loud_span(t0, recorder.last_frame)
    x = recorder.frames(first, last + 1)[:, 0]
    fade = round(0.05 * RATE)
    body, tail = x[-4 * fade : -fade], x[-fade:]
    assert np.all(recorder.frames(last + 1, last + 1 + BAR // 4) == 0)  # silence after the fade, for good
    # No click: the level falls along the fade to nearly nothing, and no step in it is larger than the music's own.
    assert np.abs(tail[-fade // 10 :]).max() < 0.15 * np.abs(body).max()
    assert np.abs(np.diff(tail)).max() <= 1.05 * np.abs(np.diff(body)).max()
    assert abs(tail[-1]) < 0.01 * np.abs(body).max() + 1e-6
    # The file of a stopped take is what was heard, fade included, though the LM had run seconds ahead.
    take, _ = sf.read(done["path"], dtype="float32", always_2d=True)
    assert len(take) == done["samples"] and abs(len(take) - len(x)) <= 1
    recorder.assert_heard(first, take)
    codes = np.load(done["path"].replace(".wav", ".codes.npy"))
    assert codes.shape[1] == done["frames"] <= len(take) / RATE * 50 + 2


def test_retry_gives_another_take_from_the_same_prompt_without_encoding(rig):
    server, daemon, recorder, client, loop = rig
    rid = client.request("continue", source="live", last_bars=1, bars=1, start="next_bar", seed=1)["id"]
    first = client.wait(rid, timeout=60)
    rid2 = client.request("retry", take=rid, start="next_bar", seed=2)["id"]
    second = client.wait(rid2, timeout=60)
    a = sf.read(first["path"], dtype="float32")[0]
    b = sf.read(second["path"], dtype="float32")[0]
    assert a.shape == b.shape and not np.allclose(a, b)
    meta1 = json.loads(Path(first["path"].replace(".wav", ".json")).read_text())
    meta2 = json.loads(Path(second["path"].replace(".wav", ".json")).read_text())
    assert meta2["retry_of"] == rid and meta2["prompt_encode_s"] == 0.0 and meta1["prompt_encode_s"] > 0
    assert meta2["input_start"] == meta1["input_start"]  # the same live prompt
    c1, c2 = (np.load(p["path"].replace(".wav", ".codes.npy")) for p in (first, second))
    P = meta1["prompt_frames"]
    np.testing.assert_array_equal(c1[:, :P], c2[:, :P])
    assert not np.array_equal(c1[:, P:], c2[:, P:])

