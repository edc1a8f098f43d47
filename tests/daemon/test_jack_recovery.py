"""The daemon without its sound card and back: the JACK server is killed mid-take and started again.

A module of its own: the shared JACK rig of test_jack.py must be gone before a server is killed (libjack keeps
process-wide state, and a client of another server in this process can crash when one dies).
"""


import pytest
import soundfile as sf

from jack_rig import Daemon, JackServer, Recorder, audio_incidents, excused_cycles
from segue.daemon.client import Client
from support import wait_until

pytestmark = pytest.mark.slow

RATE, BLOCK = 48000, 256




def test_jack_server_killed_mid_take_then_back(tmp_path):
    """The daemon stays up without its sound card, keeps the take going on its stand-in clock, says so in
    `status`, and plays through the server again once it is back."""
    server = JackServer(RATE, BLOCK)
    server.start()
    daemon = client = recorder = None
    try:
        daemon = Daemon(tmp_path / "takes", ["--audio-device", "system", "--sample-rate", str(RATE), "--block-size",
                                             str(BLOCK)], env=server.env)
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        status = lambda: client.request("status")["status"]  # noqa: E731
        rid = client.request("generate", endless=True, start="now", seed=1)["id"]
        path = client.wait(rid, "queued")["path"]
        client.wait(rid, "started")
        clock0 = status()["audio"]["clock"]

        server.kill()
        audio_when = lambda running: lambda: (a := status()["audio"])["running"] == running and a  # noqa: E731
        lost = wait_until(audio_when(False), 5, "the loss in status")
        assert "lost" in lost["error"] and daemon.proc.poll() is None
        grown = sf.info(path).frames
        wait_until(lambda: sf.info(path).frames > grown + RATE // 2, 10, "the take to go on without the device")

        server.start()
        back = wait_until(audio_when(True), 20, "the device to reopen")
        assert back["reopened"] == 1 and back["error"] is None and back["clock"] > clock0
        client.request("stop")
        client.wait(rid, timeout=30)

        recorder = Recorder(server, seconds=30)
        recorder.connect(wait_until(lambda: server.ports("PortAudio:out"), 5, "the daemon's ports"))
        incidents = audio_incidents(client)
        t0 = recorder.client.frame_time
        done = client.wait(client.request("generate", seconds=1.0, start="now", seed=4)["id"], timeout=30)
        recorder.wait_for(recorder.client.frame_time + 2 * BLOCK)
        first, _ = recorder.loud_span(t0, recorder.last_frame)
        take, _ = sf.read(done["path"], dtype="float32", always_2d=True)
        recorder.assert_heard(first, take, excused=excused_cycles(client, incidents))
    finally:
        if client is not None:
            client.close()
        if recorder is not None:
            recorder.close()
        if daemon is not None:
            daemon.stop()
        server.stop()
