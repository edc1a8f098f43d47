"""MIDI: the mapping file, and MIDI through a real JACK MIDI connection into a running engine (notes trigger takes,
a CC moves a setting, MIDI clock sets the tempo)."""

import os
import socket
import subprocess
import time

import pytest
from pythonosc.osc_packet import OscPacket

from jack_rig import JackServer
from segue.osc_bridge.midi_map import MappingError, load_map
from segue.osc_bridge.osc_server import OscServer, encode
from support import start_engine, wait_until


def test_the_shipped_mapping_loads_and_maps():
    m = load_map()
    assert m.on_note(36, 1) == {"cmd": "continue", "source": "live", "last_bars": 2, "bars": 2, "start": "next_bar"}
    assert m.on_note(60, 1) is None
    assert m.on_cc(1, 0, 1) == {"cmd": "set", "temperature": 0.3} and m.on_cc(1, 127, 5)["temperature"] == 1.6
    top_k = [m.on_cc(71, v, 1)["top_k"] for v in (0, 64, 127)]
    assert top_k[0] == 10 and top_k[2] == 500 and top_k[1] < 255  # exponential: the middle is low
    assert m.on_program(1)["prompt"].startswith("lofi")


@pytest.mark.parametrize("text, words", [
    ("[notes]\n36 = { cmd = \"dance\" }", "unknown command"),
    ("[notes]\n200 = { cmd = \"stop\" }", "MIDI number"),
    ("[cc.1]\nset = \"prompt\"\nmin = 0\nmax = 1", "numeric setting"),
    ("[cc.1]\nset = \"temperature\"\nmin = 0\nmax = 500", "at most"),
    ("[cc.1]\nset = \"cfg\"\nmin = 0\nmax = 4\ncurve = \"exp\"", "exp"),
    ("[notes]\n36 = { cmd = \"stop\", channel = 17 }", "channel"),
    ("[pads]\n1 = 2", "unknown section"),
])
def test_bad_mappings_fail_at_load_with_the_reason(tmp_path, text, words):
    p = tmp_path / "map.toml"
    p.write_text(text)
    with pytest.raises(MappingError, match=words):
        load_map(p)


def test_a_learned_mapping_is_saved_and_loads_back(tmp_path):
    from segue.osc_bridge.midi_map import learn_rule, save_map

    m = load_map().with_note(50, learn_rule("note", {"cmd": "generate", "prompt": 'say "hi"', "bars": 2}))
    m = m.with_cc(20, learn_rule("cc", {"set": "top_p", "min": 0.5, "max": 1.0}))
    save_map(m, tmp_path / "midi.toml")
    back = load_map(tmp_path / "midi.toml")
    assert back.on_note(50, 3) == {"cmd": "generate", "prompt": 'say "hi"', "bars": 2}
    assert back.on_cc(20, 127, 1) == {"cmd": "set", "top_p": 1.0} and back.on_note(36, 1) == m.on_note(36, 1)
    assert back.programs == m.programs
    with pytest.raises(MappingError, match="note.*unknown command|unknown command"):
        learn_rule("note", {"cmd": "dance"})
    with pytest.raises(MappingError, match="numeric setting"):
        learn_rule("cc", {"set": "prompt", "min": 0, "max": 1})


@pytest.fixture
def jack():
    server = JackServer()
    server.start()
    old = {k: os.environ.get(k) for k in server.env if k.startswith("JACK_")}
    os.environ.update({k: v for k, v in server.env.items() if k.startswith("JACK_")})
    yield server
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_midi_through_jack_triggers_moves_and_clocks(jack, demo, tmp_path):
    from segue.osc_bridge.midi_input import MidiInput, _backend

    engine, osc = start_engine(demo, tmp_path / "takes", lambda e: OscServer(e, "127.0.0.1", 0))
    midi = MidiInput(engine, load_map(), "segue", "jack", save_to=tmp_path / "learned.toml")
    osc.midi = midi
    midi.start()
    backend, _ = _backend("jack")
    out = backend.open_output("keys", virtual=True, client_name="segue-test-keys")
    try:
        assert midi.names and jack.ports("segue:segue") and jack.ports("segue-test-keys:keys")  # JACK MIDI ports
        subprocess.run(["jack_connect", "segue-test-keys:keys", "segue:segue"], env=jack.env, check=True)
        import mido

        out.send(mido.Message("control_change", control=1, value=127))
        out.send(mido.Message("note_on", note=39, velocity=100))  # generate 4 bars at the next bar
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not engine.status()["takes"]:
            time.sleep(0.05)
        st = engine.status()
        assert st["takes"] and st["defaults"]["temperature"] == 1.6
        out.send(mido.Message("start"))
        t0 = time.monotonic()
        for i in range(24 * 8):  # 8 beats at 100 bpm
            out.send(mido.Message("clock"))
            time.sleep(max(0.0, t0 + (i + 1) * 0.025 - time.monotonic()))
        time.sleep(0.2)
        assert abs(engine.status()["tempo"]["bpm"] - 100) < 2
        out.send(mido.Message("sysex", data=[1, 2, 3] * 50))  # ignored, harmlessly
        out.send(mido.Message("stop"))  # the transport stops: so do the takes
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and engine.status()["takes"]:
            time.sleep(0.05)
        assert not engine.status()["takes"] and midi.received >= 24 * 8

        # MIDI learn over OSC: the next note gets the action, the mapping is saved, and the note then does it.
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(10)
        peer.sendto(encode("/segue/learn", "note", "cmd", "generate", "seconds", 0.3, "start", "now"), osc.address)
        assert OscPacket(peer.recv(4096)).messages[0].message.params == ["learn", "note"]
        out.send(mido.Message("note_on", note=61, velocity=90))
        learned = OscPacket(peer.recv(4096)).messages[0].message
        assert (learned.address, learned.params) == ("/segue/learned", ["note", 61])
        assert "61 = {" in (tmp_path / "learned.toml").read_text()
        assert not engine.status()["takes"]  # learning took the note; it triggered nothing
        out.send(mido.Message("note_on", note=61, velocity=90))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not engine.status()["takes"]:
            time.sleep(0.05)
        assert engine.status()["takes"]
        peer.close()
    finally:
        out.close()
        midi.close()
        osc.close()
        engine.close()


@pytest.mark.slow
def test_raw_midi_garbage_and_running_status_noise_through_jack_change_nothing(jack, demo, tmp_path):
    """Bytes no keyboard should send (truncated messages, stray data bytes, running status, an unterminated sysex,
    undefined status bytes) arrive over a real JACK MIDI connection; segue ignores them and the next note works."""
    import rtmidi

    from segue.osc_bridge.midi_input import MidiInput

    engine, osc = start_engine(demo, tmp_path / "takes", lambda e: OscServer(e, "127.0.0.1", 0))
    midi = MidiInput(engine, load_map(), "segue", "jack")
    midi.start()
    out = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="segue-test-noise")
    try:
        out.open_virtual_port("noise")
        subprocess.run(["jack_connect", "segue-test-noise:noise", "segue:segue"], env=jack.env, check=True)
        # (rtmidi sends at most 3 bytes per event unless it is a sysex; running status is a status-less event)
        garbage = [[0x90, 60], [62, 0], [64, 0], [0xF0, 1, 2, 3], [0xF0, 0x55, 0x90, 39, 100], [0xF4], [0xFD, 0xF5],
                   [0xF0] + [0x55] * 300 + [0xF7], [0xB0, 200, 44], [0xFF, 0xFF], [0xE0], [0xC0, 250]]
        garbage += [[b, 0x80 | (b * 7) % 128, 0x80 | (b * 13) % 128] for b in range(128, 256)]  # data bytes >= 128
        for _ in range(20):
            for raw in garbage:
                out.send_message(raw)
        time.sleep(0.5)
        assert not engine.status()["takes"] and engine.status()["defaults"]["temperature"] == 1.0
        out.send_message([0x90, 39, 100])  # a proper note: generate
        wait_until(lambda: engine.status()["takes"], 10, "a take from the note (MIDI input stopped working after the "
                                                          "noise)")
    finally:
        out.close_port()
        midi.close()
        osc.close()
        engine.close()
