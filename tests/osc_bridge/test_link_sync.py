"""Ableton Link: segue joins a Link session led by another peer (a separate process using the same Link library a
DAW embeds) and follows its tempo and bar lines, proposes its own tempo changes, and stops with the session."""

import subprocess
import sys
import textwrap
import time

import link
import pytest

from jack_rig import Daemon
from segue.daemon.client import Client
from segue.daemon.vocabulary import Generate, Length, Start, Tempo
from segue.osc_bridge.tempo_sync import LinkSync
from support import start_engine, wait_until

pytestmark = pytest.mark.slow

PEER = textwrap.dedent("""
    import sys, link
    L = link.Link(float(sys.argv[1]))
    L.startStopSyncEnabled = True
    L.enabled = True
    print("ready", flush=True)
    for line in sys.stdin:
        word, *arg = line.split()
        s = L.captureAppSessionState()
        t = L.clock().micros()
        if word == "tempo":
            s.setTempo(float(arg[0]), t)
        elif word in ("play", "stop"):
            s.setIsPlaying(word == "play", t)
        if word != "state":
            L.commitAppSessionState(s)
        print(t, s.beatAtTime(t, 4), s.tempo(), L.numPeers(), int(s.isPlaying()), flush=True)
""")


class Peer:
    """Another Link peer, as Live or Bitwig would be: its own process, its own Link instance."""

    def __init__(self, bpm: float):
        self.proc = subprocess.Popen([sys.executable, "-c", PEER, str(bpm)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def say(self, word: str) -> dict:
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()
        t, beat, bpm, peers, playing = self.proc.stdout.readline().split()
        return dict(micros=int(t), beat=float(beat), bpm=float(bpm), peers=int(peers), playing=playing == "1")

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(5)



@pytest.fixture
def peer():
    p = Peer(133.0)
    # When two Link sessions meet, the older one's timeline wins: the peer (the DAW) was there first.
    time.sleep(1.0)
    yield p
    p.close()


HOST_CLOCK = link.Link(120.0)  # never enabled: only its clock, the host time every Link peer on this machine uses


BLOCK_MS = 256 / 48.0  # the engine's audio block; without a sound card its clock ticks on a Python thread


def _phase_error_ms(engine, peer: Peer) -> float:
    """How far segue's bar lines are from the session's, in ms (the peer's beat carried to the same instant)."""
    state = peer.say("state")
    sample, now = engine.audio.now(), HOST_CLOCK.clock().micros()
    session = state["beat"] + (now - state["micros"]) * 1e-6 * state["bpm"] / 60.0
    ours = engine.grid.beat_at(sample)
    off = (ours - session) % 4
    return min(off, 4 - off) * 60_000.0 / state["bpm"]


def test_segue_follows_the_session_tempo_and_bar_lines_and_proposes_its_own(demo, tmp_path, peer):
    engine, sync = start_engine(demo, tmp_path, LinkSync)
    try:
        wait_until(lambda: sync.peers >= 1, 10, "the peers to find each other")
        wait_until(lambda: engine.tempo_source == "link" and abs(engine.grid.bpm - 133.0) < 1e-3, 5, "133 bpm")
        wait_until(lambda: engine.status()["tempo"]["source"] == "link", 2, "status to name link")
        assert _phase_error_ms(engine, peer) < BLOCK_MS  # segue's bar lines (where `next_bar` takes start) are the session's
        peer.say("tempo 97")
        wait_until(lambda: abs(engine.grid.bpm - 97.0) < 1e-3, 5, "the tempo change")
        time.sleep(0.3)
        assert _phase_error_ms(engine, peer) < BLOCK_MS

        # A tempo from OSC / ZeroMQ / MIDI goes to the session, and everyone (segue included) follows it.
        engine.submit(Tempo(110.0, source="osc"))
        wait_until(lambda: abs(peer.say("state")["bpm"] - 110.0) < 1e-3, 5, "the peer to take segue's tempo")
        wait_until(lambda: engine.tempo_source == "link" and abs(engine.grid.bpm - 110.0) < 1e-3, 5, "link to lead")
        time.sleep(0.3)
        assert _phase_error_ms(engine, peer) < BLOCK_MS
        assert sync.submitted < 40  # re-anchors only on a change or real drift, not on every poll
    finally:
        sync.close()
        engine.close()


def _sidecar_says(folder, text: str) -> bool:
    sidecars = sorted(folder.glob("*.json"))
    return bool(sidecars) and text in sidecars[-1].read_text()


def test_the_session_stopping_stops_the_takes(demo, tmp_path, peer):
    engine, sync = start_engine(demo, tmp_path, LinkSync)
    try:
        wait_until(lambda: sync.peers >= 1, 10, "the peers to find each other")
        peer.say("play")
        wait_until(lambda: sync.was_playing, 5, "segue to see the session play")
        engine.submit(Generate(None, Start("now"), Length(), 3))
        wait_until(lambda: [t for t in engine.status()["takes"] if t["state"] == "started"], 30, "the take to play")
        peer.say("stop")
        wait_until(lambda: not engine.status()["takes"], 10, "the take to stop with the session")
        # Its files are finalized on the writer's thread: the sidecar says so once they are whole.
        wait_until(lambda: _sidecar_says(tmp_path, '"state": "stopped"'), 10, "the take's sidecar to say it stopped")
    finally:
        sync.close()
        engine.close()


def test_serve_with_sync_link_names_link_in_status(tmp_path, peer):
    daemon = Daemon(tmp_path / "takes", ["--audio-device", "none", "--sync", "link"])
    client = Client(daemon.endpoint, daemon.pub, timeout=10)
    try:
        assert "| sync link |" in daemon.ready_line
        wait_until(lambda: (t := client.request("status")["status"]["tempo"])["source"] == "link"
               and abs(t["bpm"] - 133.0) < 1e-3, 10, "status to name link and the session's tempo")
    finally:
        client.close()
        daemon.stop()
