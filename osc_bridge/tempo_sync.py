"""Following a tempo leader outside segue: the Ableton Link session on the network, or JACK transport.

A follower polls its leader on its own thread (never the audio callback, never the engine thread). Each poll pairs
the leader's beat position heard now with the audio clock sample heard now, which fixes the clock sample where the
leader's beat 0 falls. Both clocks are read from the time stamps of their latest cycles, which scheduling delays
by a varying amount, so the follower trusts the median of the recent estimates. When the tempo or meter changes, or
the bar line has drifted from the engine's grid by more than a couple of milliseconds, the follower submits a `tempo` command anchored on a clock sample: takes asked for
`next_bar` then start on the leader's bar line. A stop of the leader's transport stops the takes, as MIDI Stop
does. `status` names the source ("link", "jack_transport").
"""

from __future__ import annotations

import logging
import queue
import statistics
from dataclasses import dataclass
from typing import Callable, TypeVar

from segue.daemon.dispatch import Transport
from segue.daemon.engine import Engine
from segue.daemon.vocabulary import Stop, Tempo
from segue.models.errors import SegueError

log = logging.getLogger("segue.sync")

POLL_S = 0.02
WINDOW = 16  # polls whose median estimate of the bar line is compared with the grid
TOLERANCE_S = 0.002  # phase error that re-anchors the grid
T = TypeVar("T")


class SyncError(SegueError):
    pass


@dataclass(frozen=True)
class Reading:
    bpm: float
    beats_per_bar: int
    beat: float | None  # the leader's beat position heard at `sample` (0 = a bar line); None: not rolling
    sample: float  # the audio clock sample heard at that moment
    playing: bool


class TempoFollower(Transport):
    source = ""

    def __init__(self, engine: Engine):
        super().__init__(f"segue-{self.source}")
        self.engine = engine
        self.anchors: list[float] = []  # clock samples where the leader's beat 0 fell, one per recent poll
        self.key: tuple[float, int] | None = None  # (bpm, beats per bar) the anchors were measured at
        self.was_playing = False
        self.submitted = 0
        self.failing = False

    def read(self) -> Reading | None:
        raise NotImplementedError

    def event(self, ev: dict) -> None:
        pass

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self.poll()
                self.failing = False
            except Exception as exc:  # a leader going away must not end the daemon: say so once, keep trying
                if not self.failing:
                    log.warning("%s: %s; retrying", self.source, exc)
                self.failing = True
                self._stop.wait(1.0)

    def poll(self) -> None:
        r = self.read()
        if r is None:
            return
        if self.was_playing and not r.playing:
            self.engine.submit(Stop(None))
        self.was_playing = r.playing
        grid = self.engine.grid
        spb = grid.sample_rate * 60.0 / r.bpm
        key = (round(r.bpm, 3), r.beats_per_bar)
        changed = key != (round(grid.bpm, 3), grid.beats_per_bar) or self.engine.tempo_source != self.source
        if r.beat is None:  # stopped: tempo and meter only, the phase does not move
            self.anchors.clear()
            if changed:
                self._submit(Tempo(r.bpm, r.beats_per_bar, None, self.source), None)
            return
        if key != self.key:
            self.anchors.clear()
            self.key = key
        self.anchors.append(r.sample - r.beat * spb)
        del self.anchors[:-WINDOW]
        anchor = statistics.median(self.anchors)
        bar = spb * r.beats_per_bar
        off = (anchor - grid.anchor) % bar
        if changed or min(off, bar - off) > TOLERANCE_S * grid.sample_rate:
            at = round(r.sample)
            self._submit(Tempo(r.bpm, r.beats_per_bar, (at - anchor) / spb, self.source), at)

    def paired(self, leader_now: Callable[[], T]) -> tuple[T, float]:
        """(leader_now(), the clock sample heard at that moment), from the tightest of three tries: this thread can
        be preempted between reading the leader and reading the clock."""
        best = None
        for _ in range(3):
            a = self.engine.audio.now()
            value = leader_now()
            b = self.engine.audio.now()
            if best is None or b - a < best[0]:
                best = (b - a, value, 0.5 * (a + b))
        return best[1], best[2]

    def _submit(self, cmd: Tempo, at: int | None) -> None:
        self.submitted += 1
        self.engine.submit(cmd, at)


class LinkSync(TempoFollower):
    """A peer of the Ableton Link session (LinkPython-extern): follows its tempo and phase with the quantum set to
    segue's beats per bar, and proposes segue's own tempo changes (a `tempo` from OSC, ZeroMQ or MIDI) to it."""

    source = "link"

    def __init__(self, engine: Engine):
        super().__init__(engine)
        try:
            import link
        except ImportError as exc:
            raise SyncError("Ableton Link needs the LinkPython-extern package (pip install LinkPython-extern)"
                            ) from exc
        self.link = link.Link(engine.grid.bpm)
        self.link.startStopSyncEnabled = True
        self.link.enabled = True
        self.proposals: queue.SimpleQueue[float] = queue.SimpleQueue()

    @property
    def peers(self) -> int:
        return self.link.numPeers()

    def event(self, ev: dict) -> None:
        if ev.get("cmd") == "tempo" and ev.get("event") == "done" and ev.get("source") != self.source:
            self.proposals.put(float(ev["bpm"]))

    def read(self) -> Reading:
        while not self.proposals.empty():
            s = self.link.captureAppSessionState()
            s.setTempo(self.proposals.get(), self.link.clock().micros())
            self.link.commitAppSessionState(s)
        quantum = self.engine.grid.beats_per_bar
        s = self.link.captureAppSessionState()
        micros, sample = self.paired(self.link.clock().micros)  # Link's clock: the host's monotonic time
        return Reading(s.tempo(), quantum, s.beatAtTime(micros, quantum), sample, s.isPlaying())

    def _release(self) -> None:
        self.link.enabled = False


class JackTransportSync(TempoFollower):
    """JACK transport: the timebase master's tempo, meter and bar/beat/tick (without a master, the current tempo
    with transport frame 0 on a bar line). The client is never activated, so it is not part of the audio graph."""

    source = "jack_transport"

    def __init__(self, engine: Engine):
        super().__init__(engine)
        try:
            import jack

            self.client = jack.Client("segue-transport", no_start_server=True)
        except Exception as exc:
            raise SyncError(f"cannot follow JACK transport ({exc}); start the JACK server first") from exc
        self.rolling = jack.ROLLING
        speakers = self.client.get_ports(is_audio=True, is_input=True, is_physical=True)
        # Transport frames are what clients render now; a listener hears them the sound card's latency later.
        self.latency = _playback_latency(speakers[0]) if speakers else 0

    def read(self) -> Reading | None:
        while True:  # the transport position of the cycle whose first frame is `cycle`, both of one cycle
            cycle = self.client.last_frame_time
            state, pos = self.client.transport_query()
            if self.client.last_frame_time == cycle:
                break
        # JACK's smoothed estimate of the frame time now (jack_get_current_transport_frame extrapolates from the
        # cycle's raw wake-up time instead, which wanders by a block on a busy machine).
        now, sample = self.paired(lambda: self.client.frame_time)
        heard = pos["frame"] + now - cycle - self.latency  # the transport frame a listener hears now
        rate = pos["frame_rate"]
        grid = self.engine.grid
        if "beats_per_minute" in pos:  # a timebase master gives bar, beat and tick of the cycle's first frame
            bpm, bpb = pos["beats_per_minute"], max(1, round(pos["beats_per_bar"]))
            at_frame = (pos["bar"] - 1) * bpb + pos["beat"] - 1 + pos["tick"] / pos["ticks_per_beat"]
            beat = at_frame + (heard - pos["frame"]) / rate * bpm / 60.0
        else:
            bpm, bpb = grid.bpm, grid.beats_per_bar
            beat = heard / rate * bpm / 60.0
        rolling = state == self.rolling
        return Reading(bpm, bpb, beat if rolling else None, sample, rolling)

    def _release(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass


def _playback_latency(port) -> int:
    """JACK's playback latency of a sound card port, in frames (JACK-Client has no binding for it: libjack's own
    jack_port_get_latency_range through ctypes)."""
    import ctypes
    import ctypes.util

    import jack

    class Range(ctypes.Structure):
        _fields_ = [("min", ctypes.c_uint32), ("max", ctypes.c_uint32)]

    lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
    lib.jack_port_get_latency_range.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(Range)]
    r = Range()
    lib.jack_port_get_latency_range(int(jack._ffi.cast("uintptr_t", port._ptr)), 1, ctypes.byref(r))  # 1: playback
    return int(r.max)


def open_sync(kind: str, engine: Engine) -> TempoFollower | None:
    """`--sync link|jack|none`."""
    if kind == "none":
        return None
    if kind == "link":
        return LinkSync(engine)
    if kind == "jack":
        return JackTransportSync(engine)
    raise SyncError(f"--sync must be link, jack or none, got {kind!r}")

