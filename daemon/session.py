"""What a session runs with: the engine's fixed configuration and the defaults that `set` changes."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from segue.daemon.vocabulary import Length, Sampling, Start
from segue.models.lm.config import SamplingParams


@dataclass(frozen=True)
class EngineConfig:
    takes_dir: Path
    allowed_dirs: tuple[Path, ...] = ()  # folders `continue source=file` may read (the takes folder always)
    chunk_frames: int = 5  # frames per decoded chunk (100 ms at 50 Hz): the unit of latency and of loss on a crash
    crossfade: float = 0.05  # seconds, when a take replaces the one playing on its lane
    end_fade: float = 0.005  # seconds of release at the end of a finite take (no click at the cut)
    max_lead: float = 10.0  # seconds a take may generate ahead of the playhead (more only when pacing needs it)
    pace: str = "realtime"  # "asap": no playback, render takes as fast as possible
    max_takes: int = 8  # takes generating at once
    # Seconds of mix the bus holds ahead of the playhead at least: the engine thread must never stall longer (the
    # audio callback runs in its own process and does not compete with it). While something sounds, a fade or a
    # new take can act only past what is mixed, so lower is snappier; silence ahead is mixed again for a new take.
    min_horizon: float = 0.05
    # The same while a take generates on a model slower than real time: the engine then steps it while it plays,
    # each iteration a long step (and a chunk's decoding) on a CPU the audio shares, and 50 ms of mix ran dry
    # (small int8 on a 2-core box: 5 underruns in a run that held 50 ms).
    slow_horizon: float = 0.25
    # LM streams (KV caches: ~0.6 GB each for musicgen-small in float32) kept allocated between takes, so a request
    # never waits for one to be allocated and zeroed. Allocated at warm-up.
    stream_pool: int = 2
    # Models kept loaded after `set model=` replaced them (0: an old model goes once its last take has ended), so
    # that switching back is instant. Each costs its weights and its idle streams in memory.
    keep_models: int = 0
    # `set model=`: before reading and before warming up the new model, wait (at most `load_wait` s) until every
    # playing take has `load_headroom` s of audio queued, so that the load cannot make it run dry.
    load_headroom: float = 1.0
    load_wait: float = 5.0
    # Seconds of mix the bus holds while a model loads: the loader shares the interpreter lock, so the engine thread
    # can be kept waiting longer than `min_horizon`. A stop or a crossfade acts that much later meanwhile.
    load_horizon: float = 0.5


@dataclass
class Defaults:
    """Session defaults, changed by `set`."""

    prompt: str | None = None
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    cfg: float = 3.0
    seconds: float | None = None
    bars: float | None = 4.0
    endless: bool = False
    prompt_seconds: float = 10.0
    prompt_bars: float | None = None
    start: Start = field(default_factory=lambda: Start("next_bar"))

    def sampling(self, over: Sampling, seed: int | None) -> SamplingParams:
        pick = lambda a, b: b if a is None else a  # noqa: E731
        return SamplingParams(pick(over.temperature, self.temperature), pick(over.top_k, self.top_k),
                              pick(over.top_p, self.top_p), pick(over.cfg, self.cfg), seed)

    def apply(self, values: dict) -> None:
        """Take `set` values; a length or prompt length given one way replaces the one given another way."""
        if "seconds" in values:
            self.bars, self.endless = None, False
        if "bars" in values:
            self.seconds, self.endless = None, False
        if "prompt_seconds" in values:
            self.prompt_bars = None
        for k, v in values.items():
            setattr(self, k, v)

    def describe(self) -> dict:
        return {f.name: (v.describe() if isinstance(v, Start) else v)
                for f in fields(self) for v in [getattr(self, f.name)]}

    def length(self, given: Length | None) -> Length:
        if given is not None:
            return given
        if self.endless:
            return Length()
        return Length(seconds=self.seconds) if self.seconds is not None else Length(bars=self.bars)
