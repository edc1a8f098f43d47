"""`segue bridge`: OSC here, the daemon elsewhere. The daemon runs without a sound card (as on a headless GPU box);
the bridge runs on JACK as a separate process, takes OSC, forwards it over ZeroMQ, passes the events back, and plays
the daemon's audio stream on its own sound card: what JACK records from the bridge is the take, sample for sample."""

import subprocess
import sys
import time

import pytest
import soundfile as sf

from jack_rig import Daemon, JackServer, Recorder, _die_with_parent
from test_osc_server import Peer

pytestmark = pytest.mark.slow

RATE, BLOCK = 48000, 256


class Bridge:
    def __init__(self, args: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "segue.daemon.cli", "bridge", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=_die_with_parent)
        self.lines = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("segue bridge ready"):
                host, _, port = line.split("| osc ")[1].split()[0].rpartition(":")
                self.osc = (host, int(port))
                return
        raise AssertionError("segue bridge did not start:\n" + "".join(self.lines))

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(20)


def test_the_bridge_forwards_osc_and_plays_the_daemons_stream_exactly(tmp_path):
    server = JackServer(RATE, BLOCK)
    server.start()
    daemon = bridge = peer = recorder = None
    try:
        daemon = Daemon(tmp_path / "takes", ["--audio-device", "none", "--sample-rate", str(RATE), "--midi", "none"])
        bridge = Bridge(["--daemon", daemon.endpoint, "--pub", daemon.pub, "--audio-device", "system",
                         "--sample-rate", str(RATE), "--osc", "127.0.0.1:0", "--midi", "none"], env=server.env)
        recorder = Recorder(server, seconds=30)
        recorder.connect(server.ports("PortAudio:out"))
        peer = Peer(bridge.osc)

        # Bad input is refused by the bridge itself, with the daemon's codes.
        peer.send("/segue/generate", "bars", "four")
        assert peer.recv("/segue/fail")[1][0] == "generate"

        peer.send("/segue/notify", 1)
        assert peer.recv("/segue/done")[1][0] == "notify"
        t0 = recorder.client.frame_time
        peer.send("/segue/generate", "seconds", 1.0, "start", "now", "seed", 4)
        _, (cmd, rid) = peer.recv("/segue/done")
        assert cmd == "generate"
        _, args = peer.recv("/segue/take/done", timeout=60)  # an event of the daemon, passed on by the bridge
        path, done_id, state = args
        assert done_id == rid and state == "done"
        time.sleep(0.5)  # the bridge plays `delay` (0.15 s) behind the daemon
        recorder.wait_for(recorder.client.frame_time + 2 * BLOCK)
        first, last = recorder.loud_span(t0, recorder.last_frame)
        take, sr = sf.read(path, dtype="float32", always_2d=True)
        assert sr == RATE
        recorder.assert_heard(first, take)
        assert abs((last - first + 1) - len(take)) <= BLOCK

        peer.send("/segue/status")
        assert peer.recv("/segue/status.reply")[1][0] == "demo"
        assert bridge.stop() == 0
        bridge = None
    finally:
        if peer is not None:
            peer.close()
        if recorder is not None:
            recorder.close()
        if bridge is not None:
            bridge.proc.kill()
        if daemon is not None:
            daemon.stop()
        server.stop()


def test_the_bridge_says_what_to_do_when_no_daemon_answers():
    out = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "bridge", "--daemon", "tcp://127.0.0.1:9",
                          "--audio-device", "none", "--midi", "none"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "no daemon answers on tcp://127.0.0.1:9" in out.stderr
    out = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "bridge", "--daemon", "gpu-box:5555"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "tcp://HOST:PORT" in out.stderr
    out = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "bridge", "--delay", "-1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--delay must be 0 to 5 seconds" in out.stderr
