"""OSC over real UDP sockets against a running engine (demo model, no sound card), and liblo's own tools."""

import socket
import subprocess
import time

import pytest
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket

from segue.osc_bridge.osc_server import RATE_LIMIT, OscServer, encode
from support import start_engine

RATE = 48000


@pytest.fixture
def osc(demo, tmp_path):
    engine, server = start_engine(demo, tmp_path / "takes", lambda e: OscServer(e, "127.0.0.1", 0))
    yield engine, server
    server.close()
    engine.close()


class Peer:
    """A UDP socket that sends OSC to the daemon and reads what comes back to it."""

    def __init__(self, to):
        self.to = to
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, address, *args):
        self.sock.sendto(encode(address, *args), self.to)

    def recv(self, address=None, timeout=10.0):
        """The next message (to `address`, skipping others) as (address, args)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data, _ = self.sock.recvfrom(65536)
            except socket.timeout:
                break
            for tm in OscPacket(data).messages:
                if address is None or tm.message.address == address:
                    return tm.message.address, list(tm.message.params)
        raise TimeoutError(f"nothing to {address} within {timeout} s")

    def close(self):
        self.sock.close()


def test_generate_is_acknowledged_and_notified_to_the_end(osc):
    engine, server = osc
    p = Peer(server.address)
    p.send("/segue/notify", 1)
    assert p.recv("/segue/done") == ("/segue/done", ["notify", 1])
    p.send("/segue/generate", "dub", "seconds", 0.5, "start", "now", "seed", 4.0)
    _, (cmd, rid) = p.recv("/segue/done")
    assert cmd == "generate"
    _, args = p.recv("/segue/take/started")
    assert args[0] == rid
    _, (path, done_id, state) = p.recv("/segue/take/done")
    assert done_id == rid and state == "done" and path.endswith(".wav")
    time.sleep(0.1)  # the takes list is refreshed by the engine loop
    p.send("/segue/takes", 1)
    assert p.recv("/segue/takes.reply") == ("/segue/takes.reply", [path])
    p.close()


def test_sync_status_and_refusals(osc):
    engine, server = osc
    p = Peer(server.address)
    p.send("/segue/sync", 7)
    assert p.recv() == ("/segue/synced", [7])
    p.send("/segue/status")
    _, st = p.recv("/segue/status.reply")
    assert st[0] == "demo" and st[2] == "none" and st[9] == RATE and len(st) == 13
    p.send("/segue/tempo")
    _, (cmd, message, code) = p.recv("/segue/fail")
    assert (cmd, code) == ("tempo", "missing") and "bpm" in message
    p.send("/segue/tempo", 2000)
    _, (cmd, message, code) = p.recv("/segue/fail")
    assert code == "out_of_range"
    p.send("/segue/continue", "take", "take", 999)  # accepted, refused later by the engine: a fail all the same
    _, (cmd, rid) = p.recv("/segue/done")
    _, (cmd, message, code) = p.recv("/segue/fail")
    assert (cmd, code) == ("continue", "no_such_take")
    p.send("/segue/takes", "many")
    _, (cmd, message, code) = p.recv("/segue/fail")
    assert (cmd, code) == ("takes", "bad_type")
    p.sock.sendto(b"\x00garbage that is not OSC", server.address)
    _, (_, _, code) = p.recv("/segue/fail")
    assert code == "bad_request"
    p.send("/segue/sync", 8)
    assert p.recv("/segue/synced") == ("/segue/synced", [8])  # still serving
    p.close()


def test_switch_to_a_melody_model_and_follow_a_melody_over_osc(osc, tmp_path):
    import numpy as np
    import soundfile as sf

    engine, server = osc
    tune = tmp_path / "takes" / "tune.wav"
    t = np.arange(RATE) / RATE
    sf.write(str(tune), (0.3 * np.sin(2 * np.pi * 392.0 * t)).astype(np.float32), RATE)
    p = Peer(server.address)
    p.send("/segue/set", "model", "demo-melody")
    _, (cmd, rid) = p.recv("/segue/done")
    assert cmd == "set"
    deadline = time.monotonic() + 60
    while engine.status()["model"] != "demo-melody":
        assert time.monotonic() < deadline, "the model was never switched"
        time.sleep(0.05)
    p.send("/segue/notify", 1)
    p.recv("/segue/done")
    p.send("/segue/generate", "piano", "melody", "file", "melody_path", str(tune), "seconds", 0.3, "start", "now")
    _, (cmd, rid) = p.recv("/segue/done")
    _, (path, done_id, state) = p.recv("/segue/take/done")
    assert done_id == rid and state == "done" and path.endswith(".wav")
    p.send("/segue/generate", "melody", "take", "melody_take", rid, "seconds", 0.3, "start", "now")
    _, (cmd, rid2) = p.recv("/segue/done")
    _, (path, done_id, state) = p.recv("/segue/take/done")
    assert done_id == rid2 and state == "done"
    p.send("/segue/set", "model", "")
    _, (cmd, message, code) = p.recv("/segue/fail")
    assert (cmd, code) == ("set", "bad_type")
    p.close()


def test_a_bundle_in_the_future_starts_the_take_then(osc):
    engine, server = osc
    p = Peer(server.address)
    p.send("/segue/notify", 1)
    p.recv("/segue/done")
    b = OscBundleBuilder(time.time() + 1.0)
    m = OscMessageBuilder("/segue/generate")
    for a in ("pad", "seconds", 0.2, "seed", 1):
        m.add_arg(a)
    b.add_content(m.build())
    clock = engine.audio.now()
    p.sock.sendto(b.build().dgram, server.address)
    _, (rid, start, _) = p.recv("/segue/take/queued")
    assert abs((start - clock) / RATE - 1.0) < 0.05  # on the audio clock, where the time tag said
    p.recv("/segue/take/done")
    p.close()


def test_a_flood_is_rate_limited_and_the_daemon_stays_responsive(osc):
    engine, server = osc
    p = Peer(server.address)
    p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # room for the answers sent before the limit
    status = encode("/segue/sync", 1)
    t = time.monotonic()
    for _ in range(10_000):
        p.sock.sendto(status, server.address)
    assert time.monotonic() - t < 5
    _, (_, message, code) = p.recv("/segue/fail")  # told once, not once per message
    assert code == "rate_limited" and str(RATE_LIMIT) in message
    time.sleep(1.1)  # a new rate window
    q = Peer(server.address)
    q.send("/segue/sync", 99)
    assert q.recv("/segue/synced", timeout=5) == ("/segue/synced", [99])
    # What reached the server beyond the limit was dropped in the receive thread (the rest the kernel's UDP buffer
    # dropped first); the engine and its clock never noticed.
    assert server.dropped > 0
    assert engine.audio.bus.underruns <= 1
    p.close()
    q.close()


def _oscdump(port: int):
    return subprocess.Popen(["oscdump", "-L", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_liblo_oscsend_and_oscdump(osc):
    """liblo's tools drive it: oscsend names oscdump's port as the reply port, sends a continue of a take, and
    oscdump prints /segue/done and the take's events."""
    engine, server = osc
    host, port = server.address
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    listen = probe.getsockname()[1]
    probe.close()
    dump = _oscdump(listen)
    try:
        time.sleep(0.3)
        send = lambda *a: subprocess.run(["oscsend", host, str(port), *a], check=True, timeout=10)  # noqa: E731
        send("/segue/notify", "ii", "1", str(listen))
        send("/segue/generate", "ssfss", "pad", "seconds", "0.4", "start", "now")
        deadline = time.monotonic() + 30
        lines = []
        while time.monotonic() < deadline and not any("/segue/take/done" in x for x in lines):
            line = dump.stdout.readline()
            if line:
                lines.append(line)
        text = "".join(lines)
        assert '/segue/done si "notify" 1' in text, text
        assert '/segue/done si "generate" 1' in text, text
        assert "/segue/take/started ii 1 " in text and '"done"' in text.split("/segue/take/done")[1], text
    finally:
        dump.kill()
        dump.wait()
