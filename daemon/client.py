"""A small client for the daemon's ZeroMQ API (and what `segue send` uses)."""

from __future__ import annotations

import json
import time
from typing import Iterator

import numpy as np
import zmq


class DaemonError(Exception):
    def __init__(self, reply: dict):
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code, self.reply = reply.get("code"), reply


class Client:
    """Requests over a DEALER socket; events (and audio) from the PUB socket when `pub` is given."""

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", pub: str | None = None, timeout: float = 10.0):
        self.ctx = zmq.Context.instance()
        self.timeout = timeout
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sub = None
        if pub:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"event")
            self.sub.connect(pub)

    def request(self, cmd: str, pcm: np.ndarray | None = None, **fields) -> dict:
        """Send one command; returns the reply, raising `DaemonError` for a refused one."""
        frames = [json.dumps(dict(cmd=cmd, **fields)).encode()]
        if pcm is not None:
            frames.append(np.ascontiguousarray(pcm, dtype=np.float32).tobytes())  # [n, C] interleaved
        return self.send_raw(frames)

    def send_raw(self, frames: list[bytes]) -> dict:
        self.sock.send_multipart(frames)
        if not self.sock.poll(int(self.timeout * 1000)):
            raise TimeoutError(f"no reply from the daemon within {self.timeout:g} s; is `segue serve` running?")
        reply = json.loads(self.sock.recv())
        if not reply.get("ok"):
            raise DaemonError(reply)
        return reply

    def events(self, timeout: float | None = None) -> Iterator[dict]:
        """Events as they come (needs `pub`); stops after `timeout` seconds without one."""
        if self.sub is None:
            raise RuntimeError("pass pub= to receive events")
        while True:
            if not self.sub.poll(int(1000 * (timeout if timeout is not None else self.timeout))):
                return
            _, body = self.sub.recv_multipart()
            yield json.loads(body)

    def wait(self, rid: int, until: str = "done", timeout: float = 60.0) -> dict:
        """Block until take/request `rid` reports `until` (or an error, raised as `DaemonError`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events(timeout=max(0.01, deadline - time.monotonic())):
                if ev.get("id") != rid:
                    continue
                if ev["event"] == "error":
                    raise DaemonError(dict(ev, ok=False))
                if ev["event"] == until:
                    return ev
        raise TimeoutError(f"request {rid} did not reach '{until}' within {timeout:g} s")

    def close(self) -> None:
        self.sock.close()
        if self.sub is not None:
            self.sub.close()
