"""From takes to the mix bus: each playing take is a `Voice` (its audio queued at clock positions, with fades),
and the `Mixer` sums the voices into the bus a short horizon ahead of the playhead.

Only the engine thread touches these objects. The horizon is kept short (a few engine iterations) so that `stop`
and crossfades act within it: a take's audio waits in its voice, not in the bus.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np

from segue.daemon.rings import MixBus


def ramp(at: int, n: int, start: int, length: int, rising: bool) -> np.ndarray:
    """Gains for clock samples [at, at + n) of a linear ramp over [start, start + length)."""
    if length <= 0:
        g = (np.arange(at, at + n) >= start).astype(np.float32)
    else:
        g = np.clip((np.arange(at, at + n, dtype=np.float64) - start + 0.5) / length, 0.0, 1.0).astype(np.float32)
    return g if rising else 1.0 - g


class Voice:
    """One take's audio on its way out: chunks [n, C] at the device rate, in order, from clock sample `start`."""

    def __init__(self, take_id: int, lane: int, start: int, fade_in: int = 0, replaces: "Voice | None" = None):
        self.take_id, self.lane, self.start, self.fade_in = take_id, lane, start, fade_in
        self.replaces = replaces  # the voice on this lane it crossfades from (stopped at our start)
        self.chunks: deque[np.ndarray] = deque()
        self.head = 0  # samples of chunks[0] already consumed
        self.queued_end = start  # clock sample after the last queued one
        self.queued = 0  # samples in `chunks` not yet taken
        self.pos = start  # next clock sample the mixer takes from this voice
        self.complete = False  # nothing more will be queued
        self.stop_at: int | None = None
        self.fade_out = 0
        self.dropped = 0  # samples that came after their time (the take ran dry there)
        self.first_drop: int | None = None  # samples into the take where the first of them was due

    def push(self, pcm: np.ndarray) -> None:
        if len(pcm):
            self.chunks.append(pcm)
            self.queued_end += len(pcm)
            self.queued += len(pcm)

    def skip_queued(self) -> None:
        """Count everything queued as played (rendering without playback: `pace asap`)."""
        self.chunks.clear()
        self.head = self.queued = 0
        self.pos = self.queued_end

    def stop(self, at: int, fade: int) -> None:
        """Fade out over `fade` samples from clock sample `at` (an earlier stop wins). A stop at or before the
        start silences the whole take: nothing of it is heard, not even the fade."""
        if at <= self.start:
            at, fade = self.start, 0
        if self.stop_at is None or at + fade < self.stop_at + self.fade_out:
            self.stop_at, self.fade_out = at, fade

    @property
    def silenced(self) -> bool:
        """Stopped before its first sample: it will never sound."""
        return self.stop_at == self.start and self.fade_out == 0

    def move(self, start: int) -> None:
        """Start at clock sample `start` instead (only before anything of it was mixed)."""
        assert self.pos == self.start and self.stop_at is None, "a voice moves only before it is mixed"
        shift = start - self.start
        self.start, self.pos, self.queued_end = start, self.pos + shift, self.queued_end + shift

    @property
    def end(self) -> int | None:
        """Clock sample where it falls silent for good, when known."""
        ends = []
        if self.stop_at is not None:
            ends.append(self.stop_at + self.fade_out)
        if self.complete:
            ends.append(self.queued_end)
        return min(ends) if ends else None

    @property
    def finished(self) -> bool:
        end = self.end
        return end is not None and self.pos >= end

    def needs_audio_until(self) -> int | None:
        """Clock sample up to which the mixer would wait for this voice (None: it waits for nothing)."""
        if self.complete:
            return None
        end = self.end
        return self.queued_end if end is None or self.queued_end < end else None

    def _take(self, n: int) -> np.ndarray:
        """The next n queued samples [n, C] (fewer when the queue runs out)."""
        parts, need = [], n
        while need and self.chunks:
            c = self.chunks[0]
            k = min(need, len(c) - self.head)
            parts.append(c[self.head : self.head + k])
            self.head += k
            self.queued -= k
            need -= k
            if self.head == len(c):
                self.chunks.popleft()
                self.head = 0
        if not parts:
            return np.zeros((0, 0), np.float32)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _drop(self, n: int, at: int) -> None:
        if n > 0 and self.first_drop is None:
            self.first_drop = at - self.start
        self.dropped += max(n, 0)

    def _discard_before(self, t: int) -> None:
        """Queued samples due before clock sample `t` came after their time: they are thrown away, so that what
        comes next plays at its own time and the take stays on the grid (played late, everything after a dropout
        would lag by it, and the take's tail would be cut at its end)."""
        head = self.queued_end - self.queued  # clock sample of the queue's first sample
        if head < t:
            self._take(min(t - head, self.queued))

    def render(self, out: np.ndarray, at: int) -> bool:
        """Add this voice's samples for clock [at, at + len(out)) into `out`; True if it made any sound. Samples
        that were not there in time are counted in `dropped` and never played later."""
        n = len(out)
        end = self.end
        if at > self.pos:  # the mixer moved on without this voice: those samples are lost
            self._drop((at if end is None else min(at, end)) - self.pos, self.pos)
            self.pos = at
        self._discard_before(self.pos)
        lo = max(at, self.pos)
        hi = at + n if end is None else min(at + n, end)
        if hi <= lo:
            return False
        pcm = self._take(hi - lo)
        got = len(pcm)
        self.pos = hi
        if got < hi - lo:
            self._drop(hi - lo - got, lo + got)
        if not got:
            return False
        seg = out[lo - at : lo - at + got]
        gain = None
        if self.fade_in and lo < self.start + self.fade_in:
            gain = ramp(lo, got, self.start, self.fade_in, rising=True)
        if self.stop_at is not None and lo + got > self.stop_at:
            g = ramp(lo, got, self.stop_at, self.fade_out, rising=False)
            gain = g if gain is None else gain * g
        seg += pcm if gain is None else pcm * gain[:, None]
        return True


class Mixer:
    """Sums the voices into the bus, from where the bus is filled up to `horizon` samples ahead of the playhead.

    A voice whose audio is late holds the mix back while the bus still has `guard` samples in hand; after that
    the mix goes on without it (its late samples are dropped and counted) so that other voices never stall.
    """

    def __init__(self, bus: MixBus, guard: int, max_horizon: int,
                 publish: Callable[[int, np.ndarray], None] | None = None):
        self.bus, self.guard = bus, guard
        self.voices: list[Voice] = []
        self.scratch = np.zeros((max_horizon, bus.buf.shape[1]), dtype=np.float32)
        self.max_horizon = max_horizon
        self.publish = publish
        self.sound_until = 0  # clock sample after the last mixed block in which a voice sounded

    @property
    def next_free(self) -> int:
        """First clock sample not yet in the bus: the earliest a fade can act."""
        return max(self.bus.filled, self.bus.read_pos + self.guard)

    @property
    def earliest_start(self) -> int:
        """The earliest a new take can start: past the last sound in the bus, what is there is silence, which is
        mixed again when a voice is added (so the bus running ahead costs a new take no latency)."""
        return max(self.sound_until, self.bus.read_pos + self.guard)

    def add(self, voice: Voice) -> None:
        self.voices.append(voice)
        self.take_back(voice.start)

    def take_back(self, start: int) -> None:
        """A voice starts at `start` (added, or moved there): only silence lies past earliest_start, so what the
        bus holds from there is taken back and mixed again."""
        bus = self.bus
        if start < bus.filled:
            bus.filled = max(start, self.earliest_start)

    def mix(self, horizon: int) -> None:
        bus = self.bus
        start = self.next_free
        target = bus.read_pos + min(horizon, self.max_horizon)
        end = target
        for v in self.voices:
            need = v.needs_audio_until()
            if need is not None and v.start < end:
                end = min(end, max(need, v.start))
        if end <= start:
            if bus.filled - bus.read_pos > self.guard:
                return  # still in hand: wait for the late voice
            end = min(target, start + self.guard)  # about to run dry: go on without it
        if end <= start:
            return
        out = self.scratch[: end - start]
        out.fill(0.0)
        sounding = False
        for v in self.voices:
            if v.start < end and not v.finished:
                sounding |= v.render(out, start)
        bus.write(start, out)
        if sounding:
            self.sound_until = end
            if self.publish is not None:
                self.publish(start, out)
        self.voices = [v for v in self.voices if not v.finished]

    def lane_voice(self, lane: int) -> Voice | None:
        """The voice that will be sounding last on `lane` (the one a new take there replaces)."""
        live = [v for v in self.voices if v.lane == lane and v.stop_at is None]
        return max(live, key=lambda v: v.start) if live else None
