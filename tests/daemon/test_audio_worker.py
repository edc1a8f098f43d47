"""The audio worker's reading of JACK's frame counter (`_JackCycles.missed`), without a JACK server."""

from types import SimpleNamespace

from segue.daemon.audio_worker import _JackCycles


def _cycles(frames: list[int]) -> list[int]:
    cycles = object.__new__(_JackCycles)  # the JACK client it opens is replaced by a counter read from a list
    cycles.prev, cycles.client = None, SimpleNamespace(last_frame_time=0)
    gaps = []
    for f in frames:
        cycles.client.last_frame_time = f
        gaps.append(cycles.missed(256))
    return gaps


def test_on_time_missed_and_late_cycles():
    # on time; two cycles without us; a late call that read the next cycle's frame, then the call for that cycle
    assert _cycles([0, 256, 1024, 1536, 1536, 1792]) == [0, 0, 512, 256, -256, 0]


def test_the_uint32_frame_counter_wraps():
    top = (1 << 32) - 256
    assert _cycles([top - 256, top, 0, 256, 256]) == [0, 0, 0, 0, -256]


def test_a_counter_that_jumps_back_further_than_a_cycle_moves_nothing():
    assert _cycles([10240, 9216, 9472]) == [0, 0, 0]
