import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from segue.daemon.cpu import default_threads
import soundfile as sf
from pythonosc.osc_packet import OscPacket

from jack_rig import Daemon, JackServer, jack_client
from segue.daemon.client import Client
from segue.daemon.serve import SettingsError, load_settings
from segue.osc_bridge.osc_server import encode


def test_flags_override_the_toml_file(tmp_path):
    cfg = tmp_path / "segue.toml"
    cfg.write_text('model = "demo"\nblock-size = 512\nzmq = "tcp://127.0.0.1:6000"\nallow = ["loops"]\n')
    s = load_settings(str(cfg), {"block_size": 128, "model": None})
    assert (s.model, s.block_size, s.zmq, s.allow) == ("demo", 128, "tcp://127.0.0.1:6000", ("loops",))


@pytest.mark.parametrize("text, words", [("model = ", "not valid TOML"), ("volume = 3", "unknown setting"),
                                         ("pace = 'later'", "pace must be"), ("osc = 'nope'", "HOST:PORT"),
                                         ("sync = 'ableton'", "sync must be"),
                                         ("dtype = 'int4'", "segue.toml: dtype must be auto, float32, bfloat16")])
def test_bad_config_is_one_clear_error(tmp_path, text, words):
    cfg = tmp_path / "segue.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError, match=words):
        load_settings(str(cfg), {})


@pytest.mark.parametrize("flags, words", [
    ({"zmq": "tcp://127.0.0.1:99999"}, "the port must be 1 to 65535"),  # ZeroMQ itself wraps it to 34463
    ({"pub": "tcp://127.0.0.1:-5"}, "the port must be 1 to 65535"),
    ({"zmq": "tcp://127.0.0.1:6001", "pub": "tcp://127.0.0.1:6001"}, "they need two endpoints"),
])
def test_endpoints_that_cannot_work_are_refused(flags, words):
    with pytest.raises(SettingsError, match=words):
        load_settings(None, flags)


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "segue.daemon.cli", *args], capture_output=True, text=True,
                              timeout=60)

    r = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot read the config file" in r.stderr
    r = run("send", "status", "--zmq", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert r.returncode == 2 and "is `segue serve` running?" in r.stderr
    r = run("serve", "--model", "demo", "--audio-device", "no-such-card", "--takes", str(tmp_path / "t"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no output device matches" in r.stderr
    r = run("send", "status", "oops")
    assert r.returncode == 2 and "KEY=VALUE" in r.stderr
    r = run("send", "generate", "seconds=0.2", "seconds=0.4", "--zmq", "tcp://127.0.0.1:1", "--timeout", "0.5")
    assert r.returncode == 2 and "seconds given twice" in r.stderr  # not the last one silently
    bad_map = tmp_path / "map.toml"
    bad_map.write_text("[notes]\n36 = { cmd = \"dance\" }\n")
    r = run("serve", "--model", "demo", "--audio-device", "none", "--osc", "none", "--midi-map", str(bad_map),
            "--takes", str(tmp_path / "t"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown command" in r.stderr
    r = run("demo", "--out", str(tmp_path / "demo"), "--audio-device", "no-such-card")
    assert r.returncode == 2 and "no output device matches" in r.stderr


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00", "is not a text file"),
    (b'block_size = 256\nblock-size = 512\n', "is set twice"),
    (b'model = "demo"\n[serve]\nthreads = 1\n', "both under [serve] and outside it"),
    (b'zmq = "bogus://x"\n', "--zmq must be a ZeroMQ endpoint"),
    (b'pub = "127.0.0.1:5556"\n', "--pub must be a ZeroMQ endpoint"),
])
def test_a_config_file_that_is_not_what_it_should_be_is_one_clear_error(tmp_path, content, words):
    cfg = tmp_path / "segue.toml"
    cfg.write_bytes(content)
    with pytest.raises(SettingsError) as e:
        load_settings(str(cfg), {})
    assert words in str(e.value), str(e.value)


def test_serve_fails_on_its_settings_before_loading_the_model(tmp_path):
    """A busy port, a takes folder it cannot make, an --allow folder that is not there: one line, exit 2, at once
    (before the model loads: minutes for a real one)."""
    import zmq

    def serve(*args):
        t = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "serve", "--model", "demo", "--audio-device",
                            "none", "--osc", "none", "--midi", "none", *args], capture_output=True, text=True,
                           timeout=120)
        return r, time.monotonic() - t

    busy = zmq.Context.instance().socket(zmq.ROUTER)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        r, _ = serve("--zmq", f"tcp://127.0.0.1:{port}", "--takes", str(tmp_path / "t"))
    finally:
        busy.close(0)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot listen on" in r.stderr, r.stderr
    assert "Address already in use" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "a-file").write_text("x")
    r, _ = serve("--takes", str(tmp_path / "a-file" / "takes"), "--zmq", "tcp://127.0.0.1:*", "--pub",
                 "tcp://127.0.0.1:*")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "as the takes folder" in r.stderr, r.stderr
    r, _ = serve("--allow", str(tmp_path / "nowhere"), "--takes", str(tmp_path / "t"), "--zmq", "tcp://127.0.0.1:*",
                 "--pub", "tcp://127.0.0.1:*")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no such folder" in r.stderr, r.stderr
    assert not any(p.name.startswith("0") for p in (tmp_path / "t").glob("*"))


@pytest.mark.parametrize("args, words", [
    (["--timeout", "nan"], "--timeout must be"), (["--timeout", "-1"], "--timeout must be"),
    (["--timeout", "1e300"], "--timeout must be"), (["--zmq", "bogus://x"], "cannot reach the daemon"),
])
def test_send_refuses_bad_flags_in_one_line(args, words):
    r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "send", "status", *args], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


def test_midi_asked_for_where_it_cannot_open_is_one_clear_error(tmp_path):
    env = dict(os.environ, JACK_DEFAULT_SERVER="segue-no-such-server", JACK_NO_START_SERVER="1")
    r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "serve", "--model", "demo", "--audio-device", "none",
                        "--osc", "none", "--midi", "segue", "--midi-api", "jack", "--takes", str(tmp_path / "t")],
                       capture_output=True, text=True, timeout=120, env=env)
    last = r.stderr.strip().splitlines()[-1]  # libjack prints its own lines before
    assert r.returncode == 2 and last.startswith("segue: error: cannot open MIDI input through jack"), r.stderr


@pytest.mark.slow
def test_sigterm_finalizes_takes_and_exits_cleanly(tmp_path):
    """`segue serve` as a process: SIGTERM mid-take -> the take's files are complete and valid, exit status 0."""
    daemon = Daemon(tmp_path / "takes", ["--audio-device", "none"])
    try:
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        rid = client.request("generate", prompt="pad", endless=True, start="now", seed=1)["id"]
        client.wait(rid, "progress", timeout=30)
        # A second daemon on the same takes folder would number its takes alike and write over these (and take
        # this playing take for a crash's leftover): it stops at start, in one line, before loading its model.
        (side,) = (tmp_path / "takes").glob("*.json")
        before = side.read_text()
        r = subprocess.run([sys.executable, "-m", "segue.daemon.cli", "serve", "--model", "demo", "--audio-device",
                            "none", "--osc", "none", "--midi", "none", "--zmq", "tcp://127.0.0.1:*", "--pub",
                            "tcp://127.0.0.1:*", "--takes", str(tmp_path / "takes")], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"another segue daemon (process {daemon.proc.pid})" in r.stderr and "--takes" in r.stderr
        assert json.loads(side.read_text())["state"] == json.loads(before)["state"] == "playing"
        client.close()
        assert daemon.signal(signal.SIGTERM) == 0, daemon.output
    finally:
        daemon.stop()
    (meta_path,) = (tmp_path / "takes").glob("*.json")
    meta = json.loads(meta_path.read_text())
    assert meta["state"] == "stopped"
    # `segue generate`'s default thread count (test_cli.py), said in the ready line and kept with the take
    threads = default_threads()
    assert meta["threads"] == threads and f", {threads} thread" in daemon.ready_line
    pcm, sr = sf.read(str(tmp_path / "takes" / meta["wav"]), dtype="float32", always_2d=True)
    assert sr == 48000 and len(pcm) == meta["samples"] > 0
    codes = np.load(tmp_path / "takes" / meta["codes"])
    assert codes.shape == (4, meta["frames"] + meta["prompt_frames"])
    # cut where playback was when the signal came, so the file holds what was heard, not what was generated ahead
    assert abs(pcm[-1]).max() < 0.05 * np.abs(pcm).max() + 1e-6
    assert "Traceback" not in daemon.output


@pytest.mark.slow
def test_after_sigkill_every_take_is_complete_or_says_it_is_partial_and_none_is_written_over(tmp_path):
    """A daemon killed mid-take (SIGKILL: nothing finalized): on the next start the take's sidecar says
    `interrupted` with the samples its WAV holds (it had said `playing`, 0 samples, for good), and the next take
    gets a new number."""
    takes = tmp_path / "takes"
    daemon = Daemon(takes, ["--audio-device", "none"])
    try:
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        rid = client.request("generate", prompt="pad", endless=True, start="now", seed=1)["id"]
        client.wait(rid, "progress", timeout=30)
        client.wait(rid, "progress", timeout=30)  # 2 s generated: the sidecar has been updated on the way
        client.close()
        daemon.signal(signal.SIGKILL)
    finally:
        daemon.stop()
    (side,) = takes.glob("*.json")
    assert json.loads(side.read_text())["state"] == "playing"  # what the kill left
    daemon = Daemon(takes, ["--audio-device", "none"])
    try:
        meta = json.loads(side.read_text())
        assert meta["state"] == "interrupted" and meta["samples"] == sf.info(str(takes / meta["wav"])).frames > 0
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        new = client.wait(client.request("generate", prompt="pad", seconds=0.3, start="now", seed=2)["id"])
        assert new["id"] == rid + 1 and json.loads(side.read_text()) == meta  # the old take is untouched
        client.close()
    finally:
        daemon.stop()


@pytest.mark.slow
def test_pace_asap_renders_takes_faster_than_real_time(tmp_path):
    """`--pace asap`: no playback clock holds a take back; it is rendered as fast as the model goes."""
    daemon = Daemon(tmp_path / "takes", ["--pace", "asap"])
    try:
        client = Client(daemon.endpoint, daemon.pub, timeout=10)
        assert client.request("status")["status"]["pace"] == "asap"
        osc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # the OSC transport is up in the same process
        osc.settimeout(5)
        osc.sendto(encode("/segue/sync", 3), daemon.osc)
        assert OscPacket(osc.recv(1024)).messages[0].message.address == "/segue/synced"
        osc.close()
        t = time.monotonic()
        done = client.wait(client.request("generate", prompt="pad", seconds=6.0, start="next_bar", seed=1)["id"])
        took = time.monotonic() - t
        client.close()
    finally:
        daemon.stop()
    assert done["samples"] == 6 * 48000 and done["state"] == "done"
    assert took < 6.0, f"a 6 s take took {took:.1f} s to render"  # the demo model runs several times real time


def _devices(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segue.daemon.cli", "devices"], capture_output=True, text=True,
                          timeout=60, env=env)


def test_devices_without_a_jack_server_says_so_once(tmp_path):
    env = dict(os.environ, JACK_DEFAULT_SERVER=f"segue-none-{os.getpid()}", JACK_NO_START_SERVER="1")
    out = _devices(env)
    assert out.returncode == 0, out.stderr
    midi = out.stdout.split("MIDI inputs")[1]
    assert "jack: none (" in midi and "not running" in midi
    assert "Audio devices" in out.stdout
    assert "Jack" not in out.stderr  # libjack's own complaints stay out of the listing


@pytest.mark.slow
def test_devices_lists_the_jack_server_and_its_midi_sources(tmp_path):
    """On a JACK server: PortAudio's JACK device (what `--audio-device system` opens) and a JACK client's MIDI
    output (what `--midi keys --midi-api jack` opens)."""

    server = JackServer()
    server.start()
    try:
        keys = jack_client(server, "segue-test-keys")
        keys.midi_outports.register("keys")
        keys.activate()
        out = _devices(server.env)
        keys.deactivate()
        keys.close()
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    audio, midi = out.stdout.split("MIDI inputs")
    assert "system" in audio and "JACK Audio Connection Kit" in audio
    jack_lines = midi.split("jack:")[1].split("alsa:")[0]
    assert "segue-test-keys:keys" in jack_lines
