"""The song's time on the daemon's audio clock: tempo, meter and where the beats fall.

The audio clock counts output samples at the device rate since the audio stream opened; sample `n` is the one a
listener hears when the clock reads `n`. A `Grid` places beat 0 at a (fractional) clock sample and spaces beats by
the tempo, so "next bar" and "4 bars" become exact clock samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from segue.daemon.vocabulary import Start


@dataclass(frozen=True)
class Grid:
    sample_rate: int
    bpm: float = 120.0
    beats_per_bar: int = 4
    anchor: float = 0.0  # clock sample where beat 0 falls (a bar line)

    @property
    def samples_per_beat(self) -> float:
        return self.sample_rate * 60.0 / self.bpm

    @property
    def samples_per_bar(self) -> float:
        return self.samples_per_beat * self.beats_per_bar

    def beat_at(self, sample: float) -> float:
        return (sample - self.anchor) / self.samples_per_beat

    def next_beat(self, after: float) -> int:
        """First beat line at or after clock sample `after`."""
        n = math.ceil(self.beat_at(after) - 1e-9)
        return round(self.anchor + n * self.samples_per_beat)

    def next_bar(self, after: float) -> int:
        n = math.ceil(self.beat_at(after) / self.beats_per_bar - 1e-9)
        return round(self.anchor + n * self.samples_per_bar)

    def last_bar(self, before: float) -> int:
        """Latest bar line at or before clock sample `before`."""
        n = math.floor(self.beat_at(before) / self.beats_per_bar + 1e-9)
        return round(self.anchor + n * self.samples_per_bar)

    def bars(self, n: float) -> int:
        return round(n * self.samples_per_bar)

    def retempo(self, now: float, bpm: float, beats_per_bar: int | None = None, beat: float | None = None) -> "Grid":
        """The grid after a `tempo` command received at clock `now`.

        With `beat` (the beat position now, 0 = a bar line) the grid is re-anchored; without it the beat position
        at `now` is kept, so a tempo change never makes the music jump.
        """
        new = replace(self, bpm=bpm, beats_per_bar=beats_per_bar or self.beats_per_bar)
        position = self.beat_at(now) if beat is None else beat
        return replace(new, anchor=now - position * new.samples_per_beat)

    def resolve(self, start: Start, earliest: int) -> tuple[int, bool]:
        """(clock sample where a take starts, whether the request's time had to be moved later).

        `earliest` is the first sample the engine can still fill: a start before it becomes the next grid line
        (or `earliest` itself for 'now' and absolute times in the past).
        """
        if start.at == "now":
            return earliest, False
        if start.at == "next_beat":
            return self.next_beat(earliest), False
        if start.at == "next_bar":
            return self.next_bar(earliest), False
        assert start.sample is not None
        return (start.sample, False) if start.sample >= earliest else (earliest, True)
