"""ZeroMQ transport: JSON requests on a ROUTER socket (many clients at once), events and audio on a PUB socket.

Requests: one JSON frame, plus a float32 PCM frame for `continue source=pcm`. DEALER clients send just those
frames; REQ clients add the empty delimiter, which is echoed back. Replies: `{"ok": true, "id": N, ...}` or
`{"ok": false, "code": ..., "message": ...}`.
PUB topics: `event` + one JSON frame; `audio` + a JSON header (`start` clock sample, `sample_rate`, `channels`,
`frames`) + interleaved float32 PCM of the mix, as it is written ahead of the playhead.

The transport thread only parses and queues; `status` and `takes` are answered from the engine's published
snapshots, so a reply never waits for a model step.
"""

from __future__ import annotations

import json
import logging
import queue
import time

import numpy as np
import zmq

from segue.daemon.engine import Engine
from segue.daemon.dispatch import Transport, answer, error_reply
from segue.daemon.vocabulary import BAD_JSON, TOO_LARGE

log = logging.getLogger("segue.zmq")

MAX_JSON_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 256 << 20  # larger messages are dropped by ZeroMQ itself (the peer is disconnected)


def _parse_int(digits: str) -> int | float:
    """A JSON integer; one too long for any field (Python refuses past 4300 digits, with advice meant for
    programmers) is infinite, which every numeric field answers with `out_of_range`."""
    if len(digits) <= 64:
        return int(digits)
    return float("-inf") if digits.startswith("-") else float("inf")


def handle_request(engine: Engine, frames: list[bytes], received: float | None = None) -> dict:
    """One request's frames (after routing) -> its reply. Never raises for bad input. `received`: the clock sample
    read as the message arrived."""
    if not frames or len(frames) > 2:
        return error_reply(BAD_JSON, "send one JSON frame (and, for source 'pcm', one float32 frame)")
    if len(frames[0]) > MAX_JSON_BYTES:
        return error_reply(TOO_LARGE, f"the JSON frame is {len(frames[0])} bytes; the limit is {MAX_JSON_BYTES}")
    try:
        request = json.loads(frames[0], parse_int=_parse_int)
    except (ValueError, UnicodeDecodeError) as exc:
        return error_reply(BAD_JSON, f"the request is not valid JSON ({exc})")
    except RecursionError:  # json's decoder recurses once per level of nesting
        return error_reply(BAD_JSON, "the request is nested too deep; a request is one flat JSON object")
    return answer(engine, request, frames[1] if len(frames) == 2 else None, received=received)


class ZmqServer(Transport):
    def __init__(self, engine: Engine | None, endpoint: str, pub_endpoint: str | None,
                 context: zmq.Context | None = None):
        """Binds at once (raises zmq.ZMQError when it cannot); `engine` may come later, through `attach`, before
        `start` (segue serve binds before it loads the model, so a busy port fails fast)."""
        super().__init__("segue-zmq")
        self.engine = engine
        self.ctx = context or zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 0)  # a vanished client's reply is dropped, never blocks
        self.router.bind(endpoint)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub = None
        self.pub_endpoint = None
        self._logged = 0.0  # when a request's unexpected failure was last logged
        if pub_endpoint:
            self.pub = self.ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, 1000)  # a slow subscriber loses messages, never stalls the daemon
            self.pub.bind(pub_endpoint)
            self.pub_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()

    def attach(self, engine: Engine) -> None:
        self.engine = engine

    # Called from the engine thread: hand over, never touch the sockets (they belong to the transport thread).
    def event(self, ev: dict) -> None:
        self.outbox.put((b"event", json.dumps(ev).encode(), None))

    def audio(self, start: int, pcm: np.ndarray) -> None:
        header = dict(start=start, sample_rate=self.engine.sr, channels=pcm.shape[1], frames=pcm.shape[0])
        self.outbox.put((b"audio", json.dumps(header).encode(), pcm.tobytes()))

    def _release(self) -> None:
        self.router.close()
        if self.pub is not None:
            self.pub.close()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while not self._stop.is_set():
            if poller.poll(5):
                self._serve_one()
            self._flush()

    def _serve_one(self) -> None:
        try:
            frames = self.router.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return
        received = self.engine.audio.now()  # time-sensitive commands count from here
        identity, rest = frames[0], frames[1:]
        route = [identity]
        if rest and rest[0] == b"":  # REQ envelope
            route.append(b"")
            rest = rest[1:]
        try:
            reply = handle_request(self.engine, rest, received)
        except Exception as exc:  # never let one request take the transport down (logged once a second)
            now = time.monotonic()
            if now - self._logged >= 1.0:
                self._logged = now
                log.exception("request")
            reply = error_reply("internal", f"internal error: {exc}")
        try:
            self.router.send_multipart(route + [json.dumps(reply).encode()], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone

    def _flush(self) -> None:
        while True:
            try:
                topic, body, pcm = self.outbox.get_nowait()
            except queue.Empty:
                return
            if self.pub is None:
                continue
            parts = [topic, body] + ([pcm] if pcm is not None else [])
            try:
                self.pub.send_multipart(parts, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
