"""The patches in max_patches/: every OSC address they use exists in the address table, and Pd itself, running
the shipped Pd patch, reaches a running daemon and triggers a take."""

import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

from segue.osc_bridge.addresses import BY_PATH, PREFIX
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
def test_pd_runs_the_patch_and_it_drives_the_daemon(demo, tmp_path):
    engine, osc = start_engine(demo, tmp_path / "takes", lambda e: OscServer(e, "127.0.0.1", 0))
    reply_port = _free_udp_port()
    pd = subprocess.Popen(["pd", "-nogui", "-nosound", "-nomidi", "-noprefs", "-stderr",
                           "-send", f"segue-reply-port {reply_port}", "-send", f"segue-port {osc.address[1]}",
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
