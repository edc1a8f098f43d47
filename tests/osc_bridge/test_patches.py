"""The patches in max_patches/: every OSC address they use exists in the address table, every command of the table
is reachable from the Max for Live patch (parsed from its JSON), and Pd itself, running the shipped Pd patch,
reaches a running daemon and triggers a take. (Max is not available here: the Max patch is checked, not run.)"""

import json
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from segue.osc_bridge.addresses import ADDRESSES, BY_PATH, OUTGOING, PREFIX
from segue.osc_bridge.osc_server import OscServer
from support import start_engine

PATCHES = Path(__file__).parents[2] / "max_patches"


def pd_addresses(text: str) -> set[str]:
    """OSC addresses a Pd patch formats: [oscformat segue generate] -> /segue/generate."""
    return {"/" + "/".join(m.split()) for m in re.findall(r"oscformat ([^;\\]+?)\s*;", text)}


def test_every_address_in_the_pd_patch_is_in_the_table():
    used = pd_addresses((PATCHES / "segue.pd").read_text())
    assert used and used <= set(BY_PATH), used - set(BY_PATH)
    # the patch covers the commands a player needs on stage
    assert {f"{PREFIX}/{c}" for c in ("generate", "continue", "stop", "retry", "set", "status", "notify")} <= used


def _free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.slow
@pytest.mark.parametrize("reply_port_last", [False, True], ids=["reply-port-first", "reply-port-last"])
def test_pd_runs_the_patch_and_it_drives_the_daemon(demo, tmp_path, reply_port_last):
    """Either order of `segue-port` and `segue-reply-port` works: moving the reply port alone tells segue too (it
    once only moved the patch's listener, and every answer went on to the old port)."""
    engine, osc = start_engine(demo, tmp_path / "takes", lambda e: OscServer(e, "127.0.0.1", 0))
    reply_port = _free_udp_port()
    ports = [f"segue-reply-port {reply_port}", f"segue-port {osc.address[1]}"]
    if reply_port_last:
        ports.reverse()
    pd = subprocess.Popen(["pd", "-nogui", "-nosound", "-nomidi", "-noprefs", "-stderr",
                           "-send", ports[0], "-send", ports[1],
                           "-send", "segue-ui generate", "-send", "segue-ui status",
                           str(PATCHES / "segue.pd")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not engine.status()["takes"]:
            time.sleep(0.05)
        takes = engine.status()["takes"]
        assert takes, "the patch's generate never reached the daemon"
        time.sleep(1.0)  # the replies reach Pd's netreceive and its print
    finally:
        pd.terminate()
        out, _ = pd.communicate(timeout=10)
        osc.close()
        engine.close()
    assert "error:" not in out and "segue fail" not in out, out  # Pd loaded every object; nothing was refused
    assert "segue: segue done generate" in out, out  # Pd received the daemon's answer on its reply port
    assert "segue: segue status.reply demo" in out, out


def _max_patch() -> tuple[dict, dict, list]:
    patcher = json.loads((PATCHES / "segue.maxpat").read_text())["patcher"]
    boxes = {b["box"]["id"]: b["box"] for b in patcher["boxes"]}
    return patcher, boxes, [ln["patchline"] for ln in patcher["lines"]]


def test_the_max_patch_is_well_formed_and_uses_only_table_addresses():
    _, boxes, lines = _max_patch()
    for ln in lines:  # every cord joins existing boxes at outlets and inlets they have
        (src, o), (dst, i) = ln["source"], ln["destination"]
        assert src in boxes and dst in boxes, ln
        assert o < boxes[src]["numoutlets"] and i < boxes[dst]["numinlets"], ln
    texts = [b.get("text", "") for b in boxes.values() if b["maxclass"] != "comment"]
    used = {a for t in texts for a in re.findall(r"/segue/[a-z._/]+", t)}
    known = set(BY_PATH) | {path for path, _ in OUTGOING} | {a.reply for a in ADDRESSES if a.reply}
    assert used <= known, used - known
    kinds = [b["maxclass"] for b in boxes.values()]
    assert kinds.count("live.dial") == 3 and "live.menu" in kinds and "textedit" in kinds
    dials = [b["saved_attribute_attributes"]["valueof"]["parameter_longname"] for b in boxes.values()
             if b["maxclass"] == "live.dial" and b.get("parameter_enable")]  # automatable in Live
    assert dials == ["Temperature", "CFG", "Top-k"]
    assert any(t.startswith("buffer~") for t in texts) and any(t.startswith("udpreceive") for t in texts)


def test_every_command_in_the_table_reaches_udpsend_in_the_max_patch():
    _, boxes, lines = _max_patch()
    send = next(k for k, b in boxes.items() if b.get("text", "").startswith("udpsend"))
    feeds: dict[str, set] = {}
    for ln in lines:
        feeds.setdefault(ln["source"][0], set()).add(ln["destination"][0])

    def reaches(box: str, seen=None) -> bool:
        seen = seen or set()
        if box == send:
            return True
        seen.add(box)
        return any(reaches(d, seen) for d in feeds.get(box, ()) if d not in seen)

    sent = {a for k, b in boxes.items() if reaches(k) for a in re.findall(r"/segue/[a-z._/]+", b.get("text", ""))}
    assert {a.path for a in ADDRESSES} <= sent, {a.path for a in ADDRESSES} - sent
    # Live's tempo and song position become /segue/tempo; Live stopping becomes /segue/stop
    observers = {b["text"] for b in boxes.values() if b.get("text", "").startswith("live.observer")}
    assert {"live.observer tempo", "live.observer current_song_time", "live.observer is_playing"} <= observers
