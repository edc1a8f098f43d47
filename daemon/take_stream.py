"""One take on its way from the LM to the listener, as the engine streams it: the model's chunks are resampled to
the device rate (soxr, streaming: no seam between chunks), trimmed to the exact length with a short release, matched
to the device's channels, written to the take's files and queued on its voice."""

from __future__ import annotations

import time

import numpy as np
import soxr

from segue.daemon.clock import Grid
from segue.daemon.model_slot import Loaded
from segue.daemon.playback import Mixer, Voice, ramp
from segue.daemon.takes import TakeFiles
from segue.daemon.vocabulary import Start
from segue.models.audio import match_channels
from segue.models.generation import Take


class Release:
    """Trims a finite take to its exact length and fades its last samples, across chunk boundaries."""

    def __init__(self, total: int | None, fade: int):
        self.total, self.fade, self.out = total, fade if total is not None else 0, 0
        self.held = np.zeros((0, 0), np.float32)

    def feed(self, pcm: np.ndarray, last: bool) -> np.ndarray:
        if self.total is not None:
            pcm = pcm[: max(0, self.total - self.out - len(self.held))]
            last = last or self.out + len(self.held) + len(pcm) >= self.total
        x = pcm if not len(self.held) else np.concatenate([self.held, pcm])
        if last:
            if self.fade and len(x):
                k = min(self.fade, len(x))  # the end of the ramp, when less than a fade is left
                x = x.copy()
                x[-k:] *= ramp(self.fade - k, k, 0, self.fade, rising=False)[:, None]
            self.held = x[:0]
        else:
            cut = max(0, len(x) - self.fade)
            x, self.held = x[:cut], x[cut:]
        self.out += len(x)
        return x


class Run:
    """One take inside the engine: generation, resampling, files and voice."""

    def __init__(self, tid: int, kind: str, take: Take, voice: Voice, files: TakeFiles, total: int | None,
                 device_rate: int, slot: Loaded, out_channels: int, end_fade: int, start: Start, earliest: int):
        self.id, self.kind, self.take, self.voice, self.files, self.total = tid, kind, take, voice, files, total
        # When it was asked to start, and the earliest clock sample pacing allowed: a take waiting for a grid line
        # follows the grid if it moves before the take starts.
        self.start_request, self.earliest = start, earliest
        self.slot = slot  # the model the take was made on: it is stepped with that model's other takes
        model = slot.model
        self.resampler = None if model.sample_rate == device_rate else soxr.ResampleStream(
            model.sample_rate, device_rate, model.channels, dtype="float32", quality="HQ")
        self.release = Release(total, end_fade)
        self.out_channels = out_channels
        self.state = "queued"
        self.codes_written = 0
        self.created = time.monotonic()
        self.first_audio: float | None = None
        self.max_ahead = 0  # samples it may generate ahead of the playhead (set by the engine)
        self.lag: float | None = 0.0  # its worst lag so far (see `Loaded.lag`); None once handed to its model
        self.generating = True
        # Its sustained speed, for the pacing (`Loaded.learn_rate`): seconds of engine loop while it was due for a
        # step (not waiting ahead of the playhead), and whether another take ever shared those steps.
        self.due_s = 0.0
        self.last_due: float | None = None
        self.shared = False
        self.next_progress = 1.0
        self.changes: list[dict] = []  # `set` values that reached this take while it played, with the frame

    def stop_generating(self) -> None:
        """Nothing more will be generated or queued for this take."""
        self.generating = False
        self.voice.complete = True

    def follow(self, grid: Grid, mixer: Mixer) -> int | None:
        """A take waiting for a grid line (`next_bar`, `next_beat`) follows a grid that moved before it started (a
        new `tempo`, a sync leader re-anchoring): it starts on the grid in force when it starts, no earlier than
        pacing allowed when it was queued. Its length stays what was counted then. Returns the start it had when it
        moved, else None."""
        v = self.voice
        if (self.state != "queued" or self.start_request.at not in ("next_bar", "next_beat")
                or v.stop_at is not None or v.pos != v.start):
            return None
        at, _ = grid.resolve(self.start_request, max(self.earliest, mixer.earliest_start))
        if at == v.start:
            return None
        old, was = v.replaces, v.start
        if old is not None and old.stop_at == was and old.pos <= min(at, was):
            old.stop_at = at  # the crossfade moves with it
        v.move(at)
        mixer.take_back(at)
        self.files.meta.update(start=at, moved_from=was)
        return was

    def resume_from(self, cancelled: Voice) -> None:
        """`cancelled`, which was to replace this take on its lane, was stopped before it started: this take plays
        on, unless it has begun its fade already, is stopped itself, or has nothing more to give."""
        v = self.voice
        if v.stop_at != cancelled.start or v.pos > cancelled.start or v.silenced or self.take.done:
            return
        v.stop_at, v.fade_out, v.complete = None, 0, False
        self.generating = True

    def to_device(self, pcm: np.ndarray, last: bool) -> np.ndarray:
        """Model-rate chunk [C, n] -> device-rate, device-channel samples [m, out_channels]."""
        x = np.ascontiguousarray(pcm.T)  # [n, C]
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x, last=last)
        x = match_channels(self.release.feed(x, last).T, self.out_channels).T
        return np.ascontiguousarray(x, dtype=np.float32)
