"""`segue bridge`: the OSC and MIDI adapters on the musician's machine, the daemon on another (a GPU box).

Commands go to the daemon over ZeroMQ; its events come back to OSC listeners; its audio stream (the PUB socket)
plays on the local sound card `delay` seconds after the daemon's clock, with every time the musician gives moved
onto the daemon's clock by the same amount (osc_bridge/remote.py).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from segue.daemon.audio_io import AudioConfig, open_audio
from segue.daemon.serve import SettingsError, _open_midi, osc_address, stop_on_signals
from segue.osc_bridge.remote import BridgeError, RemoteDaemon, RemotePlayer


@dataclass(frozen=True)
class BridgeSettings:
    daemon: str = "tcp://127.0.0.1:5555"
    pub: str | None = None  # default: the daemon's host, its port + 1
    osc: str = "127.0.0.1:9000"
    midi: str = "auto"
    midi_api: str = "auto"
    midi_map: str | None = None
    audio_device: str | None = "auto"
    sample_rate: int | None = None  # default: the daemon's
    block_size: int = 256
    delay: float = 0.15  # seconds the local playback runs behind the daemon's clock (network + jitter headroom)


def pub_endpoint(daemon: str) -> str:
    m = re.fullmatch(r"(tcp://.+):(\d+)", daemon)
    if not m:
        raise SettingsError(f"--daemon must be tcp://HOST:PORT, got {daemon!r}")
    return f"{m.group(1)}:{int(m.group(2)) + 1}"


def bridge(s: BridgeSettings, ready=print, stop: threading.Event | None = None) -> None:
    if not 0.0 <= s.delay <= 5.0:
        raise SettingsError(f"--delay must be 0 to 5 seconds, got {s.delay}")
    pub = s.pub or pub_endpoint(s.daemon)
    host, port = osc_address(s.osc)
    try:
        remote = RemoteDaemon(s.daemon, s.delay)
    except BridgeError as exc:
        raise SettingsError(str(exc)) from exc
    opened: list = [remote]
    transports: list = []
    try:
        audio = open_audio(AudioConfig(s.audio_device, s.sample_rate or remote.sample_rate, s.block_size, 0, 2),
                           fallback_rate=remote.sample_rate)
        opened.append(audio)
        from segue.osc_bridge.osc_server import OscServer

        try:
            osc = OscServer(remote, host, port)
        except OSError as exc:
            raise SettingsError(f"cannot listen for OSC on {s.osc} ({exc.strerror}); pick another with --osc") from exc
        transports.append(osc)
        midi = _open_midi(s, remote)
        if midi is not None:
            transports.append(midi)
            osc.midi = midi
        player = RemotePlayer(remote, pub, audio, transports)
        opened.append(player)
        stop = stop_on_signals(stop)
        audio.start()
        player.start()
        for t in transports:
            t.start()
        st = audio.status()
        ready(f"segue bridge ready: daemon {s.daemon} pub {pub} ({remote.sample_rate} Hz, round trip "
              f"{1000 * remote.rtt:.1f} ms) | audio {st['audio_device']} {audio.sample_rate} Hz, delay "
              f"{1000 * s.delay:.0f} ms | osc {'%s:%d' % osc.address} "
              f"| midi {midi.label if midi else 'off'} |", flush=True)
        stop.wait()
    finally:
        for t in transports:
            t.close()
        for thing in reversed(opened):
            thing.close()
