"""Malformed requests for the daemon's fuzz (tests/daemon/test_fuzz.py, a few thousand; bench/fuzz.py, 100,000),
and the run itself: a take plays while they are sent over ZeroMQ and OSC, another client asks for `status` all the
while, and every answer is checked. Not segue code: what segue is checked against."""

from __future__ import annotations

import json
import random
import socket
import struct
import threading
import time

import numpy as np
import zmq

from segue.daemon import vocabulary as v
from segue.daemon.client import Client
from segue.osc_bridge.osc_server import encode

CODES = {getattr(v, name) for name in dir(v) if name.isupper() and isinstance(getattr(v, name), str)} - {v.INTERNAL}


def bad_requests(rng: random.Random, n: int) -> list[bytes]:
    """`n` ZeroMQ JSON frames, each wrong in one way (none of them a valid command)."""
    deep = "[" * 5000 + "]" * 5000
    kinds = [
        lambda: b"{not json",
        lambda: deep.encode(),
        lambda: json.dumps({"cmd": "tempo", "bpm": int("9" * rng.randint(310, 4000))}).encode(),
        lambda: json.dumps({"cmd": rng.choice(["tempo"]), "bpm": None}).encode(),
        lambda: json.dumps({"cmd": "continue", "source": rng.choice(["take", "file", "pcm"]), "take": None,
                            "path": None, "sample_rate": None}).encode(),
        lambda: json.dumps({"cmd": "generate", rng.choice(["seconds", "bars", "temperature", "top_k", "cfg", "seed"]):
                            rng.choice([-1, 1e300, "x", [], {}, True, float("inf")])}).encode().replace(
                            b"Infinity", b"1e999"),
        lambda: json.dumps({"cmd": "generate", "start": rng.choice([2**62, 10**20, -5, "later"])}).encode(),
        lambda: json.dumps({"cmd": "stop", "take": rng.choice([0, -1, 2**60, "all", None, 1.5]),
                            "fade": rng.choice([-1, 99, "x"])}).encode(),
        lambda: json.dumps({"cmd": "set", "model": rng.choice(["", "~/x", "/etc", "a/..", "x" * 600, 7])}).encode(),
        lambda: json.dumps({"cmd": rng.choice(["dance", "", None, 5]), "x": 1}).encode(),
        lambda: json.dumps({"cmd": "continue", "source": "file", "path": rng.choice(["/etc/passwd", "../../x"]),
                            "bogus_field": 1}).encode(),
        lambda: json.dumps([1, 2, 3]).encode(),
        lambda: bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def _pad(b: bytes) -> bytes:
    b += b"\0"
    return b + b"\0" * (-len(b) % 4)


def bad_datagrams(rng: random.Random, n: int) -> list[bytes]:
    """`n` OSC datagrams, each malformed (or a harmless query turned bad): none of them may run as a command."""
    status = encode("/segue/status")
    kinds = [
        lambda: b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", rng.choice([-4, -8, 0, 3, 4096])) + b"\0" * 4,
        lambda: _pad(b"/segue/stop") + _pad(b",x") + struct.pack(">i", 1),
        lambda: _pad(b"/segue/generate") + _pad(b",ssf") + _pad(b"dub"),
        lambda: _pad(b"/segue/generate") + _pad(b",s") + _pad(b"\xff\xfe"),
        lambda: _pad(b"/segue/tempo") + _pad(b",N"),
        lambda: _pad(b"/segue/stop") + _pad(b",i") + struct.pack(">i", 1) + b"junk",
        lambda: status[: rng.randint(1, len(status) - 1)],
        lambda: bytes(rng.getrandbits(8) for _ in range(4 * rng.randint(1, 16))),
        lambda: _nest(rng.randint(9, 60)),
        lambda: _pad(b"/segue/notify") + _pad(b",ii") + struct.pack(">ii", 1, rng.choice([0, 70000, -1])),
    ]
    return [rng.choice(kinds)() for _ in range(n)]


def _nest(depth: int) -> bytes:
    inner = encode("/segue/status")
    for _ in range(depth):
        inner = b"#bundle\0" + struct.pack(">Q", 1) + struct.pack(">i", len(inner)) + inner
    return inner



def run_fuzz(endpoint: str, pub: str, osc: tuple[str, int], n_zmq: int, n_osc: int, seed: int = 12) -> dict:
    """Send `n_zmq` bad ZeroMQ requests and `n_osc` bad OSC datagrams to a running daemon while an endless take
    plays. Raises AssertionError at the first request without its proper answer. Returns what was measured."""
    rng = random.Random(seed)
    client = Client(endpoint, pub)
    requests, datagrams = bad_requests(rng, n_zmq), bad_datagrams(rng, n_osc)  # made first: the attacker is not us
    time.sleep(0.3)
    playing = client.request("generate", prompt="dub", endless=True, start="now", seed=1)["id"]
    client.wait(playing, "started")
    latencies, stop = [], threading.Event()

    def poll_status():
        other = Client(endpoint)
        try:
            while not stop.is_set():
                t = time.monotonic()
                other.request("status")
                latencies.append(time.monotonic() - t)
                time.sleep(0.02)
        finally:
            other.close()

    poller = threading.Thread(target=poll_status)
    poller.start()
    codes: dict[str, int] = {}
    t0 = time.monotonic()
    try:
        # ZeroMQ: one reply per request, each with a proper code.
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(endpoint)
        for frame in requests:
            sock.send_multipart([b"", frame])
            assert sock.poll(5000), f"no reply to {frame[:80]!r}"
            reply = json.loads(sock.recv_multipart()[-1])
            assert reply["ok"] is False and reply["code"] in CODES, (frame[:80], reply)
            codes[reply["code"]] = codes.get(reply["code"], 0) + 1
        sock.close(0)
        zmq_s = time.monotonic() - t0
        # OSC: one answer per datagram, under the rate limit (several senders), none of them run.
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        for s in senders:
            s.bind(("127.0.0.1", 0))
            s.settimeout(5)
        answered = 0
        t1 = time.monotonic()
        for i, data in enumerate(datagrams):
            s = senders[i % len(senders)]
            s.sendto(data, osc)
            reply, _ = s.recvfrom(65536)  # an answer to each (a timeout fails the run)
            # a refusal; or the status query, when a cut left it whole but for its type tags (valid OSC 1.0)
            answered += reply.startswith(b"/segue/fail") or reply.startswith(b"/segue/status.reply")
            time.sleep(0.0005)
        osc_s = time.monotonic() - t1
        for s in senders:
            s.close()
    finally:
        stop.set()
        poller.join()
    takes = [t["id"] for t in client.request("status")["status"]["takes"]]
    client.request("stop", take=playing)
    done = client.wait(playing, timeout=30)
    client.close()
    return dict(zmq=n_zmq, osc=n_osc, osc_answered=answered, codes=codes, zmq_s=round(zmq_s, 2),
                osc_s=round(osc_s, 2), status_p50_ms=round(1000 * float(np.percentile(latencies, 50)), 2),
                status_p99_ms=round(1000 * float(np.percentile(latencies, 99)), 2), status_polls=len(latencies),
                still_playing=takes == [playing], state=done["state"], dropped=done["dropped"])
