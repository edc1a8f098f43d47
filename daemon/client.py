"""A small client for the daemon's ZeroMQ API: what `segue send`, `segue demo` and `segue bridge` use.

Paths in a request are the client's: a relative one is made absolute against the client's current folder before it
is sent (`client_paths`), so `segue send continue source=file path=loops/a.flac` reads `./loops/a.flac` wherever the
daemon was started. The daemon itself takes a relative path in its takes folder.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import zmq

PATH_FIELDS = ("path", "melody_path")  # continue source=file, melody=file
BUILT_IN_MODELS = ("demo", "demo-melody")  # model names that are never folders


class DaemonError(Exception):
    def __init__(self, reply: dict):
        super().__init__(f"{reply.get('code')}: {reply.get('message')}")
        self.code, self.reply = reply.get("code"), reply


def client_paths(request: dict, cwd: Path | None = None) -> dict:
    """`request` with the paths in it made absolute against `cwd` (default: the current folder).

    `path` and `melody_path` always (`~` is expanded); `model` in `set` only when it names a folder that exists
    there, so hub ids (facebook/musicgen-small) and `demo` pass through unchanged. Anything else, including values
    of the wrong type, is left for the daemon to judge.
    """
    base = Path.cwd() if cwd is None else Path(cwd)
    out = dict(request)
    for key in PATH_FIELDS:
        v = out.get(key)
        if isinstance(v, str) and v:
            out[key] = str(base / Path(v).expanduser())  # an absolute path stays as it is
    if out.get("cmd") == "set" and isinstance(out.get("model"), str):
        ref = out["model"].strip()
        if ref and ref not in BUILT_IN_MODELS and not Path(ref).expanduser().is_absolute() and _is_folder(base / ref):
            out["model"] = str(base / ref)
    return out


def _is_folder(p: Path) -> bool:
    try:
        return p.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: no folder by that name
        return False


class Client:
    """Requests over a DEALER socket; events (and audio) from the PUB socket when `pub` is given.

    Requests are thread-safe (one at a time). When a reply does not come within `timeout`, the socket is replaced,
    so a reply that comes later is never read as a later request's.
    """

    def __init__(self, endpoint: str = "tcp://127.0.0.1:5555", pub: str | None = None, timeout: float = 10.0):
        self.ctx = zmq.Context.instance()
        self.endpoint, self.timeout = endpoint, timeout
        self._lock = threading.Lock()
        self.sock = self._socket()
        self.sub = None
        if pub:
            self.sub = self.ctx.socket(zmq.SUB)
            self.sub.setsockopt(zmq.LINGER, 0)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"event")
            # Connected before the first request, so that even an event that comes at once (an error) is heard.
            monitor = self.sub.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
            self.sub.connect(pub)
            monitor.poll(int(1000 * min(timeout, 2.0)))  # no daemon there: the first request says so
            self.sub.disable_monitor()
            monitor.close()

    def _socket(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return sock

    def request(self, cmd: str, pcm: np.ndarray | None = None, **fields) -> dict:
        """Send one command; returns the reply, raising `DaemonError` for a refused one and `TimeoutError`."""
        reply = self.call(dict(cmd=cmd, **fields), pcm)
        if not reply.get("ok"):
            raise DaemonError(reply)
        return reply

    def call(self, request: dict, pcm: np.ndarray | bytes | None = None) -> dict:
        """Send one request (its paths made absolute, see `client_paths`) and return the reply, refused or not.
        `pcm`: [n, channels] float32 (or its interleaved bytes) for source / melody 'pcm'."""
        frames = [json.dumps(client_paths(request)).encode()]
        if pcm is not None:
            frames.append(pcm if isinstance(pcm, bytes) else np.ascontiguousarray(pcm, dtype=np.float32).tobytes())
        return self.exchange(frames)

    def send_raw(self, frames: list[bytes]) -> dict:
        """Send message parts as they are; returns the reply, raising `DaemonError` for a refused one."""
        reply = self.exchange(frames)
        if not reply.get("ok"):
            raise DaemonError(reply)
        return reply

    def exchange(self, frames: list[bytes]) -> dict:
        """One round trip: the reply as a dict, or `TimeoutError` after `timeout` seconds without one."""
        with self._lock:
            self.sock.send_multipart(frames)
            if not self.sock.poll(int(self.timeout * 1000)):
                # A reply that comes later must not be taken for the next request's: start a fresh socket.
                self.sock.close()
                self.sock = self._socket()
                raise TimeoutError(f"no reply from the daemon at {self.endpoint} within {self.timeout:g} s; "
                                   "is `segue serve` running?")
            return json.loads(self.sock.recv())

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
        with self._lock:
            self.sock.close()
        if self.sub is not None:
            self.sub.close()
