"""One request, whatever transport it came by: checked against the vocabulary, then answered from the engine's
snapshots (`status`, `takes`) or queued for the engine thread. Never runs model work, never raises for bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from segue.daemon.engine import Engine
from segue.daemon.service import Service
from segue.daemon.sources import allowed_model
from segue.daemon.vocabulary import (MAX_AHEAD_SECONDS, OUT_OF_RANGE, CommandError, Set, Start, Status, Takes, Tempo,
                                     parse)
from segue.models.loading.builder import DEMOS


def error_reply(code: str, message: str) -> dict:
    return dict(ok=False, code=code, message=message)


def answer(engine: Engine, request, pcm: bytes | np.ndarray | None = None, at: int | None = None,
           origin: str = "zmq", received: float | None = None) -> dict:
    """`{"ok": true, "cmd": ..., "id": N}` (or the status / takes snapshot), or `{"ok": false, "code", "message"}`.
    `at`: the clock sample the command is meant for (see `Engine.submit`); `origin`: the transport (or clock) the
    request came from, which `status` names as the tempo source after a `tempo`; `received`: the clock sample at
    which the transport received it (read as the message arrived; default: now)."""
    try:
        cmd = parse(request, pcm)
        _check_horizon(cmd, at, engine.audio.now(), engine.audio.sample_rate)
        if isinstance(cmd, Set) and "model" in cmd.values:
            allowed_model(cmd.values["model"], engine.folders, tuple(DEMOS))
    except CommandError as exc:
        return error_reply(exc.code, exc.message)
    if isinstance(cmd, Tempo):
        cmd = replace(cmd, source=origin)
    if isinstance(cmd, Status):
        # The clock read now (not the snapshot's): a bridge on another machine measures the daemon's time with it.
        return dict(ok=True, cmd="status", status=engine.status(), clock=engine.audio.now(),
                    sample_rate=engine.audio.sample_rate)
    if isinstance(cmd, Takes):
        return dict(ok=True, cmd="takes", takes=engine.takes())
    return dict(ok=True, cmd=request["cmd"], id=engine.submit(cmd, at, received))


def _check_horizon(cmd, at: int | None, now: float, rate: int) -> None:
    """A clock time (a `start` sample, an OSC time tag) more than `MAX_AHEAD_SECONDS` ahead is refused: a take
    scheduled years ahead would hold its memory and its place among the generating takes for good."""
    start = cmd.values.get("start") if isinstance(cmd, Set) else getattr(cmd, "start", None)
    for what, sample in (("the bundle's time tag", at),
                         ("'start'", start.sample if isinstance(start, Start) else None)):
        if sample is not None and sample > now + MAX_AHEAD_SECONDS * rate:
            raise CommandError(OUT_OF_RANGE, f"{what} is {(sample - now) / rate:.0f} s ahead of the audio clock; the "
                                             f"limit is {MAX_AHEAD_SECONDS:g} s (status gives the clock)")


class LocalEngine:
    """The engine in this process, as the OSC and MIDI adapters see it. `segue bridge` gives them a remote daemon
    with the same three members instead (osc_bridge/remote.py)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def answer(self, request, pcm=None, at: int | None = None, origin: str = "zmq",
               received: float | None = None) -> dict:
        return answer(self.engine, request, pcm, at, origin, received)

    def now(self) -> float:
        """The audio clock sample heard now (what a transport stamps a message with as it arrives)."""
        return self.engine.audio.now()

    def clock_sample(self, ahead: float) -> int:
        """The audio clock sample heard `ahead` seconds from now."""
        audio = self.engine.audio
        return int(audio.now() + ahead * audio.sample_rate)

    @property
    def takes_dir(self):
        return self.engine.cfg.takes_dir


def backend(engine) -> "LocalEngine":
    """An Engine, or something that already answers like one (a remote daemon)."""
    return engine if hasattr(engine, "clock_sample") else LocalEngine(engine)


class Transport(Service):
    """A transport's thread. Events from the engine thread arrive through `event`: subclasses queue them and their
    own thread sends them (a socket is only ever touched by its transport's thread)."""

    def event(self, ev: dict) -> None:
        raise NotImplementedError
