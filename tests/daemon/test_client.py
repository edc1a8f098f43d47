"""The clients of the daemon (`segue send`, the Python `Client`, the bridge's `RemoteDaemon`): paths relative to the
client's own folder, a reply that comes too late, and the error codes the daemon's engine reports. Over real
ZeroMQ sockets: a real `segue serve --model demo` process, and a scripted ROUTER server for the late reply."""

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from jack_rig import LOOP, Daemon
from segue.daemon.client import Client, DaemonError, client_paths
from segue.daemon.vocabulary import error_code
from segue.models.errors import AudioInputError, ModelFileError, RequestError
from segue.osc_bridge.remote import UNREACHABLE, RemoteDaemon


# -- the rule ---------------------------------------------------------------------------------------------------------
def test_client_paths_makes_the_clients_relative_paths_absolute(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "demo").mkdir()  # a folder named like a built-in model does not shadow it
    home = str(Path("~").expanduser())

    def sent(**req):
        return client_paths(req, cwd=tmp_path)

    assert sent(cmd="continue", source="file", path="loops/a.flac")["path"] == str(tmp_path / "loops/a.flac")
    assert sent(cmd="continue", source="file", path="../a.flac")["path"] == str(tmp_path / "../a.flac")
    assert sent(cmd="continue", source="file", path="/abs/a.flac")["path"] == "/abs/a.flac"
    assert sent(cmd="continue", source="file", path="~/a.flac")["path"] == home + "/a.flac"
    assert sent(cmd="generate", melody="file", melody_path="tune.wav")["melody_path"] == str(tmp_path / "tune.wav")
    assert sent(cmd="set", model="models/mine")["model"] == str(tmp_path / "models/mine")
    for ref in ("facebook/musicgen-small", "demo", "demo-melody", "models/missing", "/abs/model"):
        assert sent(cmd="set", model=ref)["model"] == ref  # hub ids, built-ins, folders that are not here
    # values the daemon must judge reach it as they are
    for value in (12, None, "", ["a"]):
        assert sent(cmd="continue", source="file", path=value)["path"] == value
    assert sent(cmd="set", model=3)["model"] == 3
    for ref in ("x" * 5000, "bad\0name"):  # names no file system holds: passed on for the daemon to refuse
        assert sent(cmd="set", model=ref)["model"] == ref
    assert sent(cmd="status") == {"cmd": "status"}
    req = {"cmd": "continue", "source": "file", "path": "a.flac"}
    client_paths(req, cwd=tmp_path)
    assert req["path"] == "a.flac"  # the caller's dict is left alone


def test_error_codes_of_the_engine():
    assert error_code(RequestError("the text prompt is 901 tokens")) == "bad_request"
    assert error_code(AudioInputError("x.wav holds no audio samples")) == "bad_audio"
    assert error_code(ModelFileError("weights truncated")) == "model_error"


# -- a real daemon ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """`segue serve --model demo` started from this process's folder; `user` is another folder, holding loops/
    (besides the takes, one of the folders the daemon may read) and an empty folder mymodel/ (the other: a model
    folder must be in one for `set model=`)."""
    root = tmp_path_factory.mktemp("clients")
    user = root / "user"
    (user / "loops").mkdir(parents=True)
    (user / "mymodel").mkdir()
    shutil.copy(LOOP, user / "loops")
    (user / "notes.txt").write_text("not in an allowed folder")
    d = Daemon(root / "takes", ["--audio-device", "none", "--midi", "none", "--allow", str(user / "loops"),
                                "--allow", str(user / "mymodel")])
    yield d, user
    d.stop()


def _send(daemon, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    d, _ = daemon
    return subprocess.run([sys.executable, "-m", "segue.daemon.cli", "send", *args, "--zmq", d.endpoint, "--pub",
                           d.pub], cwd=cwd, capture_output=True, text=True, timeout=120)


def _sidecar(done: dict) -> dict:
    return json.loads(Path(done["path"]).with_suffix(".json").read_text())


def _takes_dir(d) -> str:
    c = Client(d.endpoint)
    try:
        return c.request("status")["status"]["takes_dir"]
    finally:
        c.close()


def test_segue_send_takes_a_relative_path_in_its_own_folder(daemon):
    _, user = daemon
    r = _send(daemon, user, "continue", "source=file", "path=loops/" + LOOP.name, "seconds=0.5", "start=now",
              "seed=1", "--wait")
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout.strip().splitlines()[-1])
    assert done["event"] == "done" and done["state"] == "done"
    meta = _sidecar(done)
    assert meta["source"] == "file" and meta["path"] == str((user / "loops" / LOOP.name).resolve())
    assert meta["prompt_frames"] > 0


def test_segue_send_bad_paths_are_one_line_naming_the_folders(daemon):
    d, user = daemon
    takes, loops = str(Path(_takes_dir(d)).resolve()), str((user / "loops").resolve())
    r = _send(daemon, user, "continue", "source=file", "path=loops/missing.flac", "seconds=0.5", "--wait")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"bad_audio: {loops}/missing.flac does not exist" in r.stderr
    assert takes in r.stderr and loops in r.stderr
    assert "a relative path that reaches the daemon is taken in it" in r.stderr
    r = _send(daemon, user, "continue", "source=file", "path=notes.txt", "--wait")  # here, but not allowed
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"path_not_allowed: {(user / 'notes.txt').resolve()} is outside" in r.stderr
    assert takes in r.stderr and loops in r.stderr and "--allow" in r.stderr
    r = _send(daemon, user, "continue", "source=file", "path=12", "--wait")  # not a string: the daemon's bad_type
    assert r.returncode == 2 and "bad_type" in r.stderr
    r = _send(daemon, user, "status")
    assert r.returncode == 0 and json.loads(r.stdout)["status"]["model"] == "demo"  # it keeps serving


def test_daemon_takes_a_relative_path_in_its_takes_folder_and_says_so(daemon):
    """What reaches the daemon relative (from OSC, or a client of its own) is taken in the takes folder."""
    d, user = daemon
    takes = Path(_takes_dir(d)).resolve()
    raw = Client(d.endpoint, d.pub)
    try:
        rid = raw.exchange([json.dumps(dict(cmd="continue", source="file", path="nothing.flac")).encode()])["id"]
        with pytest.raises(DaemonError) as e:
            raw.wait(rid, timeout=30)
        assert e.value.code == "bad_audio" and e.value.reply["id"] == rid
        message = e.value.reply["message"]
        assert message.startswith(f"{takes}/nothing.flac does not exist; this daemon reads files in {takes} (the "
                                  "takes folder: a relative path that reaches the daemon is taken in it; ")
        assert message.endswith(f"), {(user / 'loops').resolve()}, {(user / 'mymodel').resolve()}")
        rid = raw.exchange([json.dumps(dict(cmd="continue", source="file", path="../x.flac")).encode()])["id"]
        with pytest.raises(DaemonError) as e:
            raw.wait(rid, timeout=30)
        assert e.value.code == "path_not_allowed"
        assert e.value.reply["message"].startswith(f"../x.flac (taken as {takes.parent / 'x.flac'}) is outside")
    finally:
        raw.close()


def test_client_request_takes_a_relative_path_in_its_own_folder(daemon, monkeypatch):
    d, user = daemon
    monkeypatch.chdir(user)
    client = Client(d.endpoint, d.pub)
    try:
        rid = client.request("continue", source="file", path=f"loops/{LOOP.name}", last_seconds=1.0, seconds=0.5,
                             start="now", seed=2)["id"]
        meta = _sidecar(client.wait(rid))
        assert meta["path"] == str((user / "loops" / LOOP.name).resolve()) and meta["last_seconds"] == 1.0
        # `set model=` with a folder here sends the folder's absolute path; a hub id goes as it is
        rid = client.request("set", model="mymodel")["id"]
        with pytest.raises(DaemonError) as e:
            client.wait(rid, timeout=60)
        assert e.value.code == "model_error" and str(user / "mymodel") in e.value.reply["message"]
        rid = client.request("set", model="facebook/musicgen-small")["id"]
        with pytest.raises(DaemonError) as e:
            client.wait(rid, timeout=60)
        assert "facebook/musicgen-small" in e.value.reply["message"] and str(user) not in e.value.reply["message"]
        assert client.request("status")["status"]["model"] == "demo"
    finally:
        client.close()


def test_the_bridge_takes_a_relative_path_in_its_own_folder(daemon, monkeypatch):
    d, user = daemon
    monkeypatch.chdir(user)
    remote = RemoteDaemon(d.endpoint)
    events = Client(d.endpoint, d.pub)
    try:
        reply = remote.answer(dict(cmd="continue", source="file", path=f"loops/{LOOP.name}", seconds=0.5,
                                   start="now", seed=3))
        assert reply["ok"], reply
        meta = _sidecar(events.wait(reply["id"]))
        assert meta["path"] == str((user / "loops" / LOOP.name).resolve())
        reply = remote.answer(dict(cmd="continue", source="file", path="loops/missing.flac"))
        with pytest.raises(DaemonError) as e:
            events.wait(reply["id"], timeout=30)
        assert e.value.code == "bad_audio" and str((user / "loops").resolve() / "missing.flac") in str(e.value)
        reply = remote.answer(dict(cmd="continue", source="file", path=7))  # refused by the bridge itself
        assert reply == dict(ok=False, code="bad_type", message="'path' must be a string, got int")
        assert remote.answer(dict(cmd="status"))["ok"]
    finally:
        events.close()
        remote.close()


def test_a_text_prompt_longer_than_the_model_takes_is_bad_request(daemon):
    """The demo model's T5 takes 256 tokens; 300 words are 901. The user's input, not a model failure."""
    d, _ = daemon
    client = Client(d.endpoint, d.pub)
    try:
        rid = client.request("generate", prompt="dub " * 300, seconds=0.5, start="now")["id"]
        with pytest.raises(DaemonError) as e:
            client.wait(rid, timeout=30)
        ev = e.value.reply
        assert ev["event"] == "error" and ev["id"] == rid and ev["code"] == "bad_request"
        assert ev["message"] == "the text prompt is 901 tokens; the limit is 256, shorten it"
        done = client.wait(client.request("generate", prompt="dub", seconds=0.5, start="now", seed=1)["id"])
        assert done["state"] == "done"  # the daemon keeps serving
    finally:
        client.close()


# -- a reply that comes too late --------------------------------------------------------------------------------------
class ScriptedRouter:
    """A ROUTER socket that answers every request with `{"ok": true, "echo": request}` (a status request as a
    daemon would, for `RemoteDaemon`'s clock), `late` seconds late for the requests `is_late` picks."""

    def __init__(self, is_late, late: float):
        self.is_late, self.late = is_late, late
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.endpoint = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.late_sent = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        pending = []  # (due, frames)
        while not self._stop.is_set():
            if self.sock.poll(5):
                ident, body, *_ = self.sock.recv_multipart()
                req = json.loads(body)
                reply = dict(ok=True, echo=req)
                if req.get("cmd") == "status":
                    reply.update(clock=0, sample_rate=48000, status=dict(takes_dir="/takes"))
                due = time.monotonic() + (self.late if self.is_late(req) else 0.0)
                pending.append((due, [ident, json.dumps(reply).encode()], self.is_late(req)))
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                self.sock.send_multipart(item[1])
                if item[2]:
                    self.late_sent.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def router():
    r = ScriptedRouter(lambda req: req.get("bpm") == 100, late=0.6)
    yield r
    r.close()


def test_a_late_reply_is_never_taken_for_the_next_requests(router):
    client = Client(router.endpoint, timeout=0.3)
    try:
        with pytest.raises(TimeoutError, match="no reply from the daemon"):
            client.request("tempo", bpm=100)
        assert router.late_sent.wait(5)
        time.sleep(0.1)  # the late reply has been sent: it would be the next thing read on the old socket
        assert client.request("tempo", bpm=120)["echo"] == {"cmd": "tempo", "bpm": 120}
        assert client.request("status")["echo"] == {"cmd": "status"}
    finally:
        client.close()


def test_the_bridge_shares_the_client_and_its_late_reply_rule(router):
    remote = RemoteDaemon(router.endpoint, timeout=0.3)
    try:
        reply = remote.answer(dict(cmd="tempo", bpm=100))
        assert reply["ok"] is False and reply["code"] == UNREACHABLE and "did not answer within 0.3 s" in \
            reply["message"]
        assert router.late_sent.wait(5)
        time.sleep(0.1)
        assert remote.answer(dict(cmd="tempo", bpm=120))["echo"] == {"cmd": "tempo", "bpm": 120}
        # The OSC, MIDI and player threads share it: every reply reaches the thread that asked.
        wrong = []

        def ask(k: int) -> None:
            for i in range(20):
                bpm = 200 + 20 * k + i  # never 100, the late one
                got = remote.answer(dict(cmd="tempo", bpm=bpm))
                if got.get("echo") != {"cmd": "tempo", "bpm": bpm}:
                    wrong.append((bpm, got))

        threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert wrong == []
    finally:
        remote.close()


def test_no_daemon_is_a_clear_error_each_time():
    client = Client("tcp://127.0.0.1:9", timeout=0.2)
    try:
        for _ in range(2):
            with pytest.raises(TimeoutError, match="tcp://127.0.0.1:9 within 0.2 s; is `segue serve` running"):
                client.request("status")
    finally:
        client.close()
