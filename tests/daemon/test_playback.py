import numpy as np

from segue.daemon.playback import Mixer, Voice
from segue.daemon.rings import InputRing, MixBus


def test_input_ring_keeps_the_latest_samples_across_the_wrap():
    ring = InputRing(2, 1000 + 1024)
    x = np.arange(3000 * 2, dtype=np.float32).reshape(3000, 2)
    for i in range(0, 3000, 128):
        ring.write(x[i : i + 128])
    np.testing.assert_array_equal(ring.read(2000, 3000), x[2000:3000].T)


def test_bus_plays_what_was_written_and_counts_underruns():
    bus = MixBus(1, 4096)
    bus.write(0, np.ones((512, 1), np.float32))
    out = np.zeros((256, 1), np.float32)
    bus.play(out)
    bus.play(out)
    assert out.sum() == 256 and bus.underruns == 0
    bus.play(out)
    assert out.sum() == 0 and bus.underruns == 1  # not filled: silence, counted


def test_missed_cycles_move_both_rings_on_with_the_device_clock():
    """Frames the device went through without calling back are skipped in the input (silence) and in the mix (never
    heard, and not heard later either): what follows stays on the device's clock, and the frames are counted."""
    from segue.daemon.audio_io import Audio

    audio = Audio(48000, 1, 1, 256)
    mix = np.arange(4096, dtype=np.float32)[:, None]
    audio.bus.write(0, mix)
    block_in, out = np.ones((256, 1), np.float32), np.zeros((256, 1), np.float32)
    audio.process(block_in, out)
    audio.process(block_in, out, missed=512)  # two cycles went by without us
    np.testing.assert_array_equal(out, mix[768:1024])  # what the device plays now, not what it played meanwhile
    assert audio.bus.read_pos == audio.input.end == 1024 and audio.status()["missed"] == 512
    np.testing.assert_array_equal(audio.input.read(0, 1024)[0], np.r_[np.ones(256), np.zeros(512), np.ones(256)])
    assert not audio.bus.buf[256:768].any() and audio.bus.underruns == 0  # the skipped mix is gone from the ring


def test_a_late_callback_and_the_call_for_the_same_cycle_stay_on_the_device_clock():
    """A callback that runs late reads the frame counter after JACK began the next cycle (a gap of one block), and
    is then called again at once for that same cycle (a gap of minus one block). The second call plays and records
    that block again in its place: nothing is shifted, later blocks come from the right clock samples, the net
    missed count is zero, and the late call is counted. (Counting the first read as a missed cycle and ignoring the
    second put every later take on a JACK server under load a block early.)"""
    from segue.daemon.audio_io import Audio

    audio = Audio(48000, 1, 1, 256)
    mix = np.arange(1, 4097, dtype=np.float32)[:, None]
    audio.bus.write(0, mix)
    out = np.zeros((256, 1), np.float32)
    audio.process(np.full((256, 1), 1.0, np.float32), out)  # cycle 0
    audio.process(np.full((256, 1), 2.0, np.float32), out, missed=256)  # cycle 1, late: it reads cycle 2's frame
    np.testing.assert_array_equal(out, mix[512:768])
    audio.process(np.full((256, 1), 3.0, np.float32), out, missed=-256)  # called again at once, for cycle 2
    np.testing.assert_array_equal(out, mix[512:768])
    audio.process(np.full((256, 1), 4.0, np.float32), out)  # cycle 3
    np.testing.assert_array_equal(out, mix[768:1024])
    assert audio.bus.read_pos == audio.input.end == 1024
    assert audio.status()["missed"] == 0 and audio.status()["late"] == 1
    np.testing.assert_array_equal(audio.input.read(0, 1024)[0], np.repeat([1.0, 0.0, 3.0, 4.0], 256))
    assert not audio.bus.buf[:768].any() and audio.bus.underruns == 0  # all that is behind the playhead is silence


def test_voice_lands_on_its_start_sample_and_stop_fades_without_a_step():
    bus = MixBus(1, 48000)
    mixer = Mixer(bus, guard=256, max_horizon=24000)
    v = Voice(1, 0, start=1000)
    v.push(np.ones((20000, 1), np.float32))
    v.complete = True
    mixer.voices.append(v)
    mixer.mix(4000)
    out = np.zeros((4000, 1), np.float32)
    bus.play(out)
    assert out[999, 0] == 0 and out[1000, 0] == 1
    v.stop(mixer.next_free, 480)
    for _ in range(10):
        mixer.mix(4000)
        bus.play(out)
    tail = bus.buf[:, 0]
    assert np.abs(np.diff(tail)).max() <= 1 / 480 + 1e-6  # a ramp, never a click
    assert not mixer.voices  # finished and dropped


def test_late_voice_is_dropped_not_waited_for():
    bus = MixBus(1, 48000)
    mixer = Mixer(bus, guard=256, max_horizon=24000)
    late = Voice(1, 0, start=0)  # nothing queued yet
    mixer.voices.append(late)
    out = np.zeros((256, 1), np.float32)
    mixer.mix(2000)
    bus.play(out)  # the mixer waited while it could; now the bus is dry
    mixer.mix(2000)
    assert bus.filled > bus.read_pos  # it went on without the late voice
    late.push(np.ones((5000, 1), np.float32))
    mixer.mix(2000)
    assert late.dropped > 0 and late.first_drop < 2000  # it ran dry at its start


def test_a_voice_that_runs_dry_stays_on_its_timeline():
    """Audio that comes after its time is thrown away, not played late: what follows a dropout sounds at its own
    clock samples, the take ends where it should, and the dropout is counted from where it began."""
    bus = MixBus(1, 48000)
    mixer = Mixer(bus, guard=256, max_horizon=24000)
    v = Voice(1, 0, start=1000)
    ramp_ = np.arange(10000, dtype=np.float32)[:, None] + 1.0  # sample i of the take is i + 1
    v.push(ramp_[:3000])
    mixer.voices.append(v)
    mixer.mix(4000)
    heard = np.zeros((20 * 256, 1), np.float32)
    for k in range(20):  # the playhead runs past what the voice had queued
        bus.play(heard[k * 256 : (k + 1) * 256])
        mixer.mix(4000)
    v.push(ramp_[3000:])
    v.complete = True
    rest = np.zeros((48 * 256, 1), np.float32)
    for k in range(48):
        mixer.mix(4000)
        bus.play(rest[k * 256 : (k + 1) * 256])
    played = np.concatenate([heard, rest])[:, 0]  # clock samples 0 .. 17408
    assert v.first_drop == 3000 and v.dropped > 0
    sounding = np.flatnonzero(played)
    assert sounding[0] == 1000 and sounding[-1] == 1000 + 10000 - 1  # it ends where it should
    # every sample that sounded is the one due at that clock sample
    assert np.array_equal(played[sounding], sounding - 1000 + 1.0)
    assert len(sounding) + v.dropped == 10000


def test_silence_ahead_of_the_playhead_is_mixed_again_for_a_new_voice():
    """The bus runs ahead with silence when nothing plays; a new take may start inside it (no added latency), but
    never inside sound already mixed."""
    bus = MixBus(1, 48000)
    mixer = Mixer(bus, guard=256, max_horizon=24000)
    mixer.mix(8000)  # 8000 samples of silence in hand
    assert bus.filled == 8000 and mixer.earliest_start == 256
    v = Voice(1, 0, start=1000)
    v.push(np.ones((3000, 1), np.float32))
    v.complete = True
    mixer.add(v)
    mixer.mix(8000)
    out = np.zeros((5000, 1), np.float32)
    bus.play(out)
    assert out[999, 0] == 0 and out[1000:4000, 0].min() == 1 and out[4000:, 0].max() == 0
    assert mixer.earliest_start >= 4000  # past the sound just mixed
    w = Voice(2, 1, start=mixer.earliest_start)
    mixer.add(w)
    assert bus.filled >= 4000  # sound is never taken back
