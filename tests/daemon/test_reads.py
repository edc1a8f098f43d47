"""Prompt and melody reads off the engine thread (`daemon/reads.py`): results and errors come back through `post`,
a read past its deadline is dropped, and stuck reads are bounded."""

import queue
import threading
import time

import pytest

from segue.daemon.reads import Reads
from segue.daemon.vocabulary import CommandError


def _reads(timeout: float = 5.0, limit: int = 4, waiting: int = 32):
    posted: queue.SimpleQueue = queue.SimpleQueue()
    return Reads(posted.put, timeout, limit, waiting), posted


def test_a_result_and_an_error_come_back_to_their_request():
    reads, posted = _reads()
    reads.start(7, "a.wav", lambda: "audio", ("cmd", 1.0))
    done = posted.get(timeout=5)
    assert (done.rid, done.result, done.error) == (7, "audio", None)
    assert reads.finish(done).request == ("cmd", 1.0) and not reads.parked

    def fails():
        raise OSError("unreadable")
    reads.start(8, "b.wav", fails, ("cmd", 2.0))
    done = posted.get(timeout=5)
    assert done.rid == 8 and isinstance(done.error, OSError) and reads.finish(done) is not None


def test_a_read_past_its_deadline_is_dropped_and_its_late_result_ignored():
    reads, posted = _reads(timeout=0.2)
    gate = threading.Event()
    reads.start(3, "stuck.wav", lambda: gate.wait(10), ("cmd", 0.0))
    assert reads.expired(time.monotonic()) == []
    time.sleep(0.25)
    (rid, parked), = reads.expired(time.monotonic())
    assert rid == 3 and parked.what == "stuck.wav" and not reads.parked
    gate.set()
    assert reads.finish(posted.get(timeout=5)) is None  # answered already: nothing is set up late


def test_stuck_reads_are_bounded_and_a_returned_one_frees_its_place():
    """Two places, one waiting request: two reads that do not return hold both places, the next request waits for
    one, and the one after that is `busy`. When a stuck read returns, the waiting one starts."""
    reads, posted = _reads(timeout=5, limit=2, waiting=1)
    gates = [threading.Event() for _ in range(2)]
    for i, g in enumerate(gates):
        reads.start(i, f"{i}.wav", lambda g=g: g.wait(10), ("cmd", 0.0))
    reads.start(8, "8.wav", lambda: "waited", ("cmd", 0.0))
    with pytest.raises(CommandError) as err:
        reads.start(9, "9.wav", lambda: None, ("cmd", 0.0))
    assert err.value.code == "busy" and "waiting for file reads" in err.value.message
    assert 9 not in reads.parked and 8 in reads.parked
    time.sleep(0.2)
    assert posted.empty()  # 8 has not run: no place was free
    gates[0].set()
    assert reads.finish(posted.get(timeout=5)).what == "0.wav"  # the engine gets it: 8 starts in the freed place
    done = posted.get(timeout=5)
    assert (done.rid, done.result) == (8, "waited")
    gates[1].set()


def test_a_request_that_waits_for_a_place_past_its_deadline_is_dropped():
    reads, posted = _reads(timeout=0.2, limit=1)
    gate = threading.Event()
    reads.start(1, "stuck.wav", lambda: gate.wait(10), ("cmd", 0.0))
    reads.start(2, "next.wav", lambda: "late", ("cmd", 0.0))
    time.sleep(0.25)
    assert sorted(rid for rid, _ in reads.expired(time.monotonic())) == [1, 2]
    gate.set()
    assert reads.finish(posted.get(timeout=5)) is None
    time.sleep(0.1)
    assert posted.empty()  # the expired one never reads


def test_cancel_drops_a_parked_read():
    reads, posted = _reads()
    gate = threading.Event()
    reads.start(5, "x.wav", lambda: gate.wait(10), ("cmd", 0.0))
    assert reads.cancel(5) is not None and reads.cancel(5) is None
    gate.set()
    assert reads.finish(posted.get(timeout=5)) is None
