"""A bounded fuzz of the running daemon (demo model, no sound card, loopback only): thousands of malformed
requests over ZeroMQ and OSC while a take plays (tests/fuzz_inputs.py). Every request gets its proper answer (never
`internal`), `status` from another client keeps answering within 100 ms at p99, and the playing take drops
nothing. The 100,000-message version is bench/fuzz.py (its figures are in BENCHMARKS.md)."""

import pytest

from fuzz_inputs import run_fuzz
from jack_rig import Daemon

pytestmark = pytest.mark.slow


@pytest.fixture
def daemon(tmp_path):
    """`segue serve --model demo` in its own process, as on stage: the fuzzer (this process) shares nothing with it
    but the loopback sockets."""
    d = Daemon(tmp_path / "takes", ["--audio-device", "none", "--midi", "none"])
    yield d
    d.stop()


def test_malformed_requests_get_their_answers_while_a_take_plays_on(daemon):
    r = run_fuzz(daemon.endpoint, daemon.pub, daemon.osc, 3000, 3000)
    assert r["osc_answered"] == 3000
    assert r["status_polls"] > 20 and r["status_p99_ms"] <= 100, r
    assert r["still_playing"] and r["state"] == "stopped" and r["dropped"] == 0, r
    assert len(r["codes"]) >= 5, r  # the kinds met several checks, none of them `internal`
