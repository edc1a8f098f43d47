"""Time-sensitive messages on a real JACK server, measured the way the faults were found: a JACK client plays the
song (the shipped loop, its bar lines on the JACK grid), another records the daemon's output, and the bar lines the
daemon's takes land on are read off the recording.

- A `tempo` lands its bar lines within 1 ms of the beat it names; sent while the engine is busy setting up a take,
  within a block (stamped on arrival, not when the engine gets to it: that put them 29-33 ms late).
- A take queued for `next_bar` before the grid moves starts on the grid in force when it starts.
- A take stopped before it sounds stays silent (no fade burst at its start) and its files say so.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from jack_rig import BAR, BEAT, PERIOD, RATE, audio_incidents, excused_cycles, song_rig

pytestmark = pytest.mark.slow

MS = RATE // 1000
CLEAN, ATTEMPTS = 5, 20  # trials the busy-tempo test checks, and how many it may run to get them


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    with song_rig(tmp_path_factory.mktemp("takes")) as r:
        yield r


@pytest.fixture(scope="module")
def latency(rig) -> int:
    """JACK's playback latency (read once: `jack_lsp` takes tens of milliseconds)."""
    return rig[0].playback_latency()


def _tempo(latency: int, recorder, shift_beats: float) -> dict:
    """`tempo` fields putting the bar lines `shift_beats` after the song's (see jack_rig.set_tempo for the time
    convention): beat B of the daemon's grid is heard when the song's beat is B - shift."""
    heard = recorder.client.frame_time - latency
    return dict(bpm=120, beats_per_bar=4, beat=heard / BEAT + shift_beats)


def _phase(frame: int, shift_beats: float) -> int:
    """Signed samples from `frame` to the nearest bar line of the grid shifted by `shift_beats`."""
    p = (frame + round(shift_beats * BEAT)) % BAR
    return p if p <= BAR // 2 else p - BAR


def _first_loud(recorder, after: int) -> int:
    recorder.wait_for(recorder.client.frame_time + 4 * PERIOD)
    return recorder.loud_span(after, recorder.last_frame)[0]


def _starved(client, recorder, incidents: int, t0: int, *dones: dict) -> dict | None:
    """What kept a trial from being evidence about timing, or None for a clean one: JACK cycles the daemon's audio
    missed or ran late for since `incidents` (`audio_incidents`), samples its takes (`dones`) dropped, frames the
    recorder missed since JACK frame `t0`."""
    missed = audio_incidents(client) - incidents
    dropped = [d["dropped"] for d in dones]
    unseen = recorder.unseen(t0, recorder.last_frame)
    if missed or any(dropped) or unseen:
        return dict(missed_or_late_cycles=missed, dropped=dropped, frames_the_recorder_missed=unseen)
    return None


def _back_to_the_song(latency: int, recorder, client) -> None:
    client.request("tempo", **_tempo(latency, recorder, 0.0))
    time.sleep(0.2)


def test_a_tempo_lands_its_bar_lines_within_a_millisecond(rig, latency):
    """With the engine idle, three times: a `tempo` that moves the bar lines by whole beats, then a take on the next
    beat. The take lands within 1 ms of the beat of the tempo's anchor (its `done` event's `at`, where the transport
    stamped it), and the anchor is the client's send: within 1 ms for the median trial (measured: 0.3-0.7 ms, the
    transport's own path) and within 4 blocks for every one (a CI run once saw the transport thread wait 2.75 ms
    for the CPU: that wait is the scheduler's, not the daemon's). Trials on which the daemon's audio missed a JACK
    cycle, or the recorder did, are run again (see the busy-engine test below)."""
    server, daemon, recorder, client, loop = rig
    trials, starved = [], []
    for k in range(3 * 3):
        if len(trials) == 3:
            break
        shift = 1.0 + k % 3
        time.sleep(0.3)
        incidents = audio_incidents(client)
        fields = _tempo(latency, recorder, shift)
        sent = (fields["beat"] - shift) * BEAT  # the heard frame the client named, as it sent the message
        tempo = client.wait(client.request("tempo", **fields)["id"], timeout=60)
        time.sleep(0.05)
        t0 = recorder.client.frame_time
        done = client.wait(client.request("generate", bars=0.25, start="next_beat", seed=5)["id"], timeout=60)
        assert done["state"] == "done", done
        recorder.wait_for(recorder.client.frame_time + 4 * PERIOD)
        why = _starved(client, recorder, incidents, t0, done)
        if why:
            starved.append(dict(trial=k, **why))
            continue
        trials.append(dict(at=tempo["at"], sent=sent, shift=shift, first=_first_loud(recorder, t0),
                           start=_start(done)))
    assert len(trials) == 3, f"only {len(trials)} clean trials; the others: {starved}"
    offsets = [t["first"] - t["start"] for t in trials]  # recorded frame - clock sample: the same for every take
    offset = float(np.median(offsets))
    assert all(abs(o - offset) <= PERIOD for o in offsets), f"clock -> JACK offsets {offsets}"
    rows = []
    for t in trials:
        late = t["at"] + offset - t["sent"]  # how long after the client's send the transport stamped the tempo
        beat = (t["first"] + round(t["shift"] * BEAT)) % BEAT
        error = beat if beat <= BEAT // 2 else beat - BEAT  # from the client's beat
        rows.append((round(late), error))
    assert all(abs(e - late) <= MS for late, e in rows), f"takes off the anchor's beat (late, error): {rows}"
    assert all(-MS <= late <= 4 * PERIOD for late, _ in rows), f"anchors late (late, error): {rows}"
    assert float(np.median([late for late, _ in rows])) <= MS, f"(late, error): {rows}"
    _back_to_the_song(latency, recorder, client)


def test_a_tempo_sent_while_the_engine_is_busy_lands_its_bar_lines_where_it_says(rig, latency):
    """Trials of: a `continue` (the engine encodes two bars and prefills the LM: 30-60 ms here), a `tempo` 2 ms
    later that moves the bar lines by whole beats, then a take on the next bar line. Anchored when the engine got to
    it, the tempo put them 29-33 ms late. Stamped on arrival:

    - the tempo's anchor (its `done` event's `at`) is the moment the transport read the message: a few ms after
      the client sent it at most, never the engine's set-up time later;
    - both takes, the continuation queued on the old grid a moment before and the take after, land on the bar lines
      of that anchor within a block (the daemon's clock keeps to JACK's: every take's first sample is heard the
      same number of frames after its clock sample), and the take after is heard sample for sample;
    - and where the transport thread got to the message at once (0.2-0.5 ms of delivery), within 1 ms of the beat
      the client named. On a 2-core box the transport thread waits for the CPU or the interpreter in about half the
      trials while the engine sets up the take: 1.8-3.5 ms here, 7.4 ms once in a CI run. That wait is the
      scheduler's, so it is bounded loosely (a median within a block, every one under 21 ms); the exact checks are
      the ones against the anchor. At least one trial must be within 1 ms of the client's beat.

    These are checks of timing, so they are made on clean trials: the daemon served every JACK cycle in time, neither
    take ran dry, and the recorder saw every frame. A trial on which the machine starved the daemon (a CI run once
    saw 20 missed or late cycles and a take that ran dry in one trial; bursts of memory-bound work in three processes
    on this 2-core box starve most trials) is no evidence either way: it is counted, reported, and run again, up to
    `ATTEMPTS` in all. Fewer than `CLEAN` clean trials fail the test, with what went wrong in each."""
    server, daemon, recorder, client, loop = rig
    trials, starved = [], []
    for k in range(ATTEMPTS):
        if len(trials) == CLEAN:
            break
        shift = 1.0 + k % 3  # the new bar lines can only come from this tempo
        time.sleep(0.3)
        incidents = audio_incidents(client)
        t0 = recorder.client.frame_time
        busy = client.request("continue", source="live", last_bars=2, bars=1, start="next_bar", seed=3)["id"]
        time.sleep(0.002)
        fields = _tempo(latency, recorder, shift)
        sent = (fields["beat"] - shift) * BEAT  # the heard frame the client named, as it sent the message
        tempo = client.wait(client.request("tempo", **fields)["id"], timeout=60)
        done = client.wait(busy, timeout=60)
        assert done["state"] == "done", done
        recorder.wait_for(recorder.client.frame_time + 4 * PERIOD)
        t1 = recorder.last_frame
        after = client.wait(client.request("generate", bars=1, start="next_bar", seed=4)["id"], timeout=60)
        assert after["state"] == "done", after
        recorder.wait_for(recorder.client.frame_time + 4 * PERIOD)
        why = _starved(client, recorder, incidents, t0, done, after)
        if why:
            starved.append(dict(trial=k, **why))
            continue
        queued_first, first = recorder.loud_span(t0, t1)[0], _first_loud(recorder, t1)
        take, _ = sf.read(after["path"], dtype="float32", always_2d=True)
        recorder.assert_heard(first, take)
        trials.append(dict(tempo_at=tempo["at"], sent=sent, shift=shift,
                           takes=[(queued_first, _start(done)), (first, _start(after))]))
    assert len(trials) == CLEAN, (f"only {len(trials)} of {ATTEMPTS} trials had the daemon's audio served in time; "
                                  f"the others: {starved}")
    # Recorded frame - clock sample of each take's first sample: the same for every take the daemon served in time.
    offsets = [f - s for t in trials for f, s in t["takes"]]
    offset = float(np.median(offsets))
    assert all(abs(o - offset) <= PERIOD for o in offsets), f"clock -> JACK offsets {offsets}"
    rows = []
    for t in trials:
        late = t["tempo_at"] + offset - t["sent"]  # how long after the client's send the transport stamped it
        errors = [_phase(f, t["shift"]) for f, _ in t["takes"]]  # from the client's bar lines
        rows.append((round(late), errors))
        assert -MS <= late <= 4 * PERIOD, f"the tempo was anchored {late:.0f} samples after it was sent: {rows}"
        assert all(abs(e - late) <= PERIOD for e in errors), f"takes off the anchor's bar lines: {rows}"
    assert float(np.median([r[0] for r in rows])) <= PERIOD, rows
    assert min(max(abs(e) for e in r[1]) for r in rows) <= MS, f"no trial within 1 ms: {rows} (starved: {starved})"
    _back_to_the_song(latency, recorder, client)


def _start(done: dict) -> int:
    """The clock sample a take started on (its sidecar's; a queued take moved to a new grid says where it went)."""
    return json.loads(Path(done["path"].replace(".wav", ".json")).read_text())["start"]


def test_a_take_queued_for_the_next_bar_follows_a_grid_that_moves_before_it_starts(rig, latency):
    server, daemon, recorder, client, loop = rig
    _back_to_the_song(latency, recorder, client)
    # Just after a bar line: the take waits almost a whole bar for the next one.
    now = recorder.client.frame_time - latency
    time.sleep(((BAR - now % BAR) + BAR // 16) / RATE)
    t0 = recorder.client.frame_time
    rid = client.request("generate", bars=1, start="next_bar", seed=6)["id"]
    queued = client.wait(rid, "queued")
    time.sleep(0.3)
    shift = 1.0  # the bar lines move a beat later, before the take has started
    client.request("tempo", **_tempo(latency, recorder, shift))
    done = client.wait(rid, timeout=60)
    assert done["state"] == "done"
    first = _first_loud(recorder, t0)  # a beat (24000 samples) off on the grid it was queued on
    assert abs(_phase(first, shift)) <= PERIOD, f"the take starts {_phase(first, shift)} samples off the new bar line"
    meta = json.loads(Path(done["path"].replace(".wav", ".json")).read_text())
    assert meta["moved_from"] == queued["start"] and meta["start"] != queued["start"]
    _back_to_the_song(latency, recorder, client)


def test_a_take_stopped_before_it_sounds_stays_silent(rig, latency):
    server, daemon, recorder, client, loop = rig
    now = recorder.client.frame_time - latency
    time.sleep(((BAR - now % BAR) + BAR // 16) / RATE)  # the next bar line is most of a bar away
    t0 = recorder.client.frame_time
    rid = client.request("generate", bars=1, start="next_bar", seed=7)["id"]
    client.wait(rid, "queued")
    client.request("stop", take=rid, fade=0.05)
    done = client.wait(rid, timeout=30)
    assert done["state"] == "cancelled" and done["samples"] == 0
    recorder.wait_for(t0 + 2 * BAR)
    recorder.assert_silent(t0, t0 + 2 * BAR)  # not even a fade at the bar line
    take, _ = sf.read(done["path"], dtype="float32", always_2d=True)
    meta = json.loads(Path(done["path"].replace(".wav", ".json")).read_text())
    assert len(take) == 0 and meta["state"] == "cancelled" and meta["samples"] == 0 and meta["frames"] == 0
