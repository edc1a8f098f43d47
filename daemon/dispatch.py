"""One request, whatever transport it came by: checked against the vocabulary, then answered from the engine's
snapshots (`status`, `takes`) or queued for the engine thread. Never runs model work, never raises for bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from segue.daemon.engine import Engine
from segue.daemon.service import Service
from segue.daemon.vocabulary import CommandError, Status, Takes, Tempo, parse


def error_reply(code: str, message: str) -> dict:
    return dict(ok=False, code=code, message=message)


def answer(engine: Engine, request, pcm: bytes | np.ndarray | None = None, at: int | None = None,
           origin: str = "zmq") -> dict:
    """`{"ok": true, "cmd": ..., "id": N}` (or the status / takes snapshot), or `{"ok": false, "code", "message"}`.
    `at`: the clock sample the command is meant for (see `Engine.submit`); `origin`: the transport (or clock) the
    request came from, which `status` names as the tempo source after a `tempo`."""
    try:
        cmd = parse(request, pcm)
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
    return dict(ok=True, cmd=request["cmd"], id=engine.submit(cmd, at))


class LocalEngine:
    """The engine in this process, as the OSC and MIDI adapters see it. `segue bridge` gives them a remote daemon
    with the same three members instead (osc_bridge/remote.py)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def answer(self, request, pcm=None, at: int | None = None, origin: str = "zmq") -> dict:
        return answer(self.engine, request, pcm, at, origin)

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
