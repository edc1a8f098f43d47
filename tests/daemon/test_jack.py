"""The daemon end to end on a real JACK server (`jackd -d dummy`), through PortAudio, as a separate process.

A JACK client plays the shipped 2-bar loop into the daemon's input, another records its output, both indexed by
JACK frame (see `jack_rig.song_rig` for the grid and the time convention).
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jack_rig import BAR, BEAT, PERIOD, RATE, audio_incidents, continue_on_the_bar_line, excused_cycles, song_rig
from support import wait_until

pytestmark = pytest.mark.slow

BLOCK = PERIOD


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with song_rig(tmp_path_factory.mktemp("takes")) as r:
        yield r


def test_continue_last_two_bars_starts_on_the_bar_line_and_equals_its_take(rig):
    server, daemon, recorder, client, loop = rig
    incidents = audio_incidents(client)
    time.sleep(3 * BAR / RATE)  # the prompt's two whole bars are all recorded after the count
    done = continue_on_the_bar_line(server, recorder, client, "demo")

    _assert_prompt_is_the_loop_as_played(client, done, loop, bars=2, excused=excused_cycles(client, incidents))


def _assert_prompt_is_the_loop_as_played(client, done: dict, loop: np.ndarray, bars: int, excused: int) -> None:
    """The prompt of a `continue source=live last_bars=N` take was the last N whole bars of the loop as played,
    shifted by the round trip the daemon assumes (a musician hears the output L late and is heard by the input its
    capture latency late).

    Where the shift lands on the loop: the daemon hands clock sample c to PortAudio one JACK cycle before c reaches
    the graph (PortAudio's JACK back end passes a callback's output on a period later, and the daemon's output
    latency counts that period), while the loop player's frame F reaches the daemon's input in cycle F itself. So the
    callback that plays bar line B comes one period before the JACK bar line, and input sample B + rt is the loop
    sample rt - one period past it.

    Exact in every block but the `excused` ones: blocks of a JACK cycle the daemon's audio process did not serve in
    time (see `jack_rig.excused_cycles`)."""
    after = client.request("status")["status"]["audio"]
    heard, _ = sf.read(done["path"].replace(".wav", ".prompt.wav"), dtype="float32", always_2d=True)
    assert len(heard) == bars * BAR
    rt = after["output_latency"] + after["input_latency"] - BLOCK
    shift = int(np.argmax([np.dot(heard[:BEAT, 0], np.roll(loop[:, 0], -k)[:BEAT]) for k in
                           range(0, 2 * BAR, BLOCK)]))
    coarse = shift * BLOCK
    wrong = {k: len(np.unique(np.flatnonzero(
        (np.abs(heard - np.roll(loop, -k, axis=0)[: len(heard)]) > 1e-6).any(axis=1)) // BLOCK))
        for k in range(coarse - BLOCK, coarse + BLOCK + 1)}  # shift -> blocks that differ
    fine = min(wrong, key=wrong.get)
    assert wrong[fine] <= excused, f"the prompt is not the loop as played ({wrong[fine]} blocks differ)"
    assert min((fine - rt) % BAR, BAR - (fine - rt) % BAR) <= BLOCK


def test_a_stalled_audio_client_comes_back_on_the_song_grid(rig):
    """JACK does not call a client for the cycles it is late for. The daemon's audio process stopped for 0.3 s
    (~56 cycles without it) comes back on the song's grid without a new `tempo`: the status counts the frames that
    went by, a take asked for afterwards starts on a bar line of the JACK grid, and the live input afterwards is
    the loop in its place."""
    server, daemon, recorder, client, loop = rig
    audio = lambda: client.request("status")["status"]["audio"]  # noqa: E731
    missed = audio()["missed"]
    (worker,) = [int(p) for p in subprocess.run(["pgrep", "-P", str(daemon.proc.pid), "-f", "audio_worker"],
                                                capture_output=True, text=True).stdout.split()]
    os.kill(worker, signal.SIGSTOP)
    time.sleep(0.3)
    os.kill(worker, signal.SIGCONT)
    wait_until(lambda: audio()["missed"] > missed, 5, "the missed cycles in status")
    gone = audio()["missed"] - missed
    assert gone % BLOCK == 0 and 0.2 * RATE <= gone <= 0.6 * RATE, gone

    incidents = audio_incidents(client)
    time.sleep(2.2 * BAR / RATE)  # the last whole bar before the request comes after the stall
    t0 = recorder.client.frame_time
    done = client.wait(client.request("continue", source="live", last_bars=1, bars=1, start="next_bar",
                                      seed=8)["id"], timeout=60)
    assert done["state"] == "done" and done["dropped"] == 0
    recorder.wait_for(recorder.client.frame_time + 4 * PERIOD)
    first, _ = recorder.loud_span(t0, recorder.last_frame)
    phase = first % BAR
    assert min(phase, BAR - phase) <= BLOCK, f"the take starts {phase} samples off the bar line"
    take, _ = sf.read(done["path"], dtype="float32", always_2d=True)
    recorder.assert_heard(first, take, excused=excused_cycles(client, incidents))
    _assert_prompt_is_the_loop_as_played(client, done, loop, bars=1, excused=excused_cycles(client, incidents))


def test_stop_fades_out_without_a_click(rig):
    server, daemon, recorder, client, loop = rig
    incidents = audio_incidents(client)
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
    recorder.assert_heard(first, take, excused=excused_cycles(client, incidents))
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

