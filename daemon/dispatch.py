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
        return dict(ok=True, cmd="status", status=engine.status())
    if isinstance(cmd, Takes):
        return dict(ok=True, cmd="takes", takes=engine.takes())
    return dict(ok=True, cmd=request["cmd"], id=engine.submit(cmd, at))


class Transport(Service):
    """A transport's thread. Events from the engine thread arrive through `event`: subclasses queue them and their
    own thread sends them (a socket is only ever touched by its transport's thread)."""

    def event(self, ev: dict) -> None:
        raise NotImplementedError
