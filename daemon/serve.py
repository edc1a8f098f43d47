"""`segue serve`: settings (TOML file, then flags), load once, warm up, run the engine and transports until a
signal, then finalize every take and exit cleanly."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from segue.daemon.audio_io import AudioConfig, open_audio
from segue.daemon.engine import Engine
from segue.daemon.session import EngineConfig
from segue.daemon.zmq_transport import ZmqServer
from segue.models.errors import SegueError

log = logging.getLogger("segue.serve")


@dataclass(frozen=True)
class ServeSettings:
    model: str = "facebook/musicgen-small"
    device: str = "auto"
    dtype: str = "auto"
    audio_device: str | None = None
    sample_rate: int | None = None
    block_size: int = 256
    input_channels: int = 2
    output_channels: int = 2
    zmq: str = "tcp://127.0.0.1:5555"
    pub: str = "tcp://127.0.0.1:5556"
    osc: str = "127.0.0.1:9000"  # HOST:PORT for OSC over UDP, or "none"
    midi: str = "auto"  # "segue" (a virtual input port), "all", a port name, "none"; "auto": segue on ALSA if any
    midi_api: str = "auto"  # jack, alsa or auto (ALSA when its sequencer exists, else JACK)
    midi_map: str | None = None  # TOML mapping (default: the one shipped with segue)
    sync: str = "none"  # tempo leader: "link" (Ableton Link), "jack" (JACK transport) or "none"
    threads: int | None = None  # torch CPU threads; default: every core but one, which is left to the audio
    takes: str = "takes"
    allow: tuple[str, ...] = ()
    pace: str = "realtime"
    chunk_frames: int = 5
    keep_models: int = 0  # models kept loaded after `set model=` replaced them


class SettingsError(SegueError):
    pass


def load_settings(config: str | None, flags: dict) -> ServeSettings:
    """Defaults <- the TOML file's keys (same names as the flags, with '_' or '-') <- flags given."""
    values: dict = {}
    names = {f.name for f in dataclasses.fields(ServeSettings)}
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read the config file {config} ({exc.strerror})") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config} is not valid TOML ({exc}); fix the file") from exc
        data = data.get("serve", data)
        for k, v in data.items():
            key = k.replace("-", "_")
            if key not in names:
                raise SettingsError(f"{config}: unknown setting '{k}'; known: {', '.join(sorted(names))}")
            values[key] = tuple(v) if isinstance(v, list) else v
    values.update({k: v for k, v in flags.items() if v is not None and k in names})
    s = ServeSettings(**values)
    if s.pace not in ("realtime", "asap"):
        raise SettingsError(f"pace must be 'realtime' or 'asap', got {s.pace!r}")
    if not 16 <= s.block_size <= 8192:
        raise SettingsError(f"block size {s.block_size} is out of range (16 to 8192 samples)")
    for ep in (s.zmq, s.pub):
        if ep and ep.startswith("tcp://") and not ep.startswith(("tcp://127.0.0.1:", "tcp://localhost:")):
            log.warning("listening on %s: reachable from the network", ep)
    if not 0 <= s.keep_models <= 16:
        raise SettingsError(f"keep-models must be 0 to 16, got {s.keep_models}")
    if s.threads is not None and not 1 <= s.threads <= 1024:
        raise SettingsError(f"threads must be 1 to 1024, got {s.threads}")
    if s.sync not in ("none", "link", "jack"):
        raise SettingsError(f"sync must be link, jack or none, got {s.sync!r}")
    if s.midi_api not in ("auto", "jack", "alsa"):
        raise SettingsError(f"midi-api must be auto, jack or alsa, got {s.midi_api!r}")
    if s.osc != "none":
        osc_address(s.osc)
        if not s.osc.startswith(("127.0.0.1:", "localhost:")):
            log.warning("OSC on %s: reachable from the network", s.osc)
    return s


def osc_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"--osc must be HOST:PORT (e.g. 127.0.0.1:9000) or none, got {text!r}")
    return host, int(port)


def serve(s: ServeSettings, ready=print, stop: threading.Event | None = None) -> None:
    import torch

    from segue.daemon.model_slot import checked_load
    from segue.models.loading.builder import load_model, parse_device, resolve_dtype
    from segue.models.loading.hub import fetch

    # The audio callback (and JACK, and the other clients) must find a core free when its deadline comes: on a CPU
    # box the model gets every core but one.
    torch.set_num_threads(s.threads or max(1, (os.cpu_count() or 2) - 1))
    device = parse_device(s.device)
    dtype = resolve_dtype(s.dtype, device)
    model = load_model(s.model, device, dtype)
    if model.lm is None:
        raise SettingsError(f"{s.model} has no language model; serve a MusicGen or AudioGen model")
    audio_device = "none" if s.pace == "asap" else s.audio_device
    audio = open_audio(AudioConfig(audio_device, s.sample_rate, s.block_size, s.input_channels, s.output_channels),
                       fallback_rate=48000)
    cfg = EngineConfig(Path(s.takes), tuple(Path(p) for p in s.allow), chunk_frames=s.chunk_frames, pace=s.pace,
                       keep_models=s.keep_models)
    transports: list = []  # every transport hears every event
    engine = Engine(model, audio, cfg, emit=lambda ev: [t.event(ev) for t in transports],
                    load=lambda ref: checked_load(ref, device, dtype, fetch, load_model))
    try:  # from here on, whatever fails closes what was opened (the audio with the engine)
        engine.warm_up()
        zmq_server = ZmqServer(engine, s.zmq, s.pub)
        engine.mixer.publish = zmq_server.audio
        transports.append(zmq_server)
        osc = None
        if s.osc != "none":
            from segue.osc_bridge.osc_server import OscServer

            host, port = osc_address(s.osc)
            try:
                osc = OscServer(engine, host, port)
            except OSError as exc:
                raise SettingsError(f"cannot listen for OSC on {s.osc} ({exc.strerror}); pick another with --osc "
                                    "HOST:PORT or turn it off with --osc none") from exc
            transports.append(osc)
        midi = _open_midi(s, engine)
        if midi is not None:
            transports.append(midi)
            if osc is not None:
                osc.midi = midi  # /segue/learn
        sync = _open_sync(s, engine)
        if sync is not None:
            transports.append(sync)
        stop = stop_on_signals(stop)
        engine.start()
        for t in transports:
            t.start()
        st = audio.status()
        ready(f"segue ready: model {model.info.ref} ({model.info.kind}, {model.sample_rate} Hz) on {model.device}"
              f" | audio {st['audio_device']} {audio.sample_rate} Hz, block {audio.block}, "
              f"latency out {1000 * audio.output_latency / audio.sample_rate:.1f} ms "
              f"in {1000 * audio.input_latency / audio.sample_rate:.1f} ms"
              f" | {engine.rate:.2f}x real time, first chunk {1000 * engine.first_latency:.0f} ms"
              f" | zmq {zmq_server.endpoint} pub {zmq_server.pub_endpoint}"
              f" | osc {'%s:%d' % osc.address if osc else 'off'}"
              f" | midi {midi.label if midi else 'off'}"
              f" | sync {s.sync}"
              f" | takes {cfg.takes_dir}", flush=True)
        stop.wait()
    finally:
        for t in transports:
            t.close()
        engine.close()


def stop_on_signals(stop: threading.Event | None) -> threading.Event:
    """The event that ends `serve` / `bridge`: the one given, or a new one that SIGTERM and SIGINT set (signal
    handlers can only be installed from the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    return stop


def _open_sync(s: ServeSettings, engine):
    from segue.osc_bridge.tempo_sync import SyncError, open_sync

    try:
        return open_sync(s.sync, engine)
    except SyncError as exc:
        raise SettingsError(str(exc)) from exc


def _open_midi(s: ServeSettings, engine):
    """The MIDI input the settings ask for; with "auto", None (and one log line) when no MIDI API is usable."""
    if s.midi == "none":
        return None
    from segue.osc_bridge.midi_input import MidiError, MidiInput, alsa_sequencer
    from segue.osc_bridge.midi_map import load_map

    mapping = load_map(s.midi_map)  # a bad mapping stops the start, whatever the port
    if s.midi == "auto" and s.midi_api == "auto" and not alsa_sequencer():
        # JACK MIDI only when asked for: a JACK client in this process joins the audio graph's deadline while
        # the model runs here.
        log.warning("no ALSA sequencer: MIDI input off (use --midi segue --midi-api jack for JACK MIDI)")
        return None
    try:
        return MidiInput(engine, mapping, "segue" if s.midi == "auto" else s.midi, s.midi_api,
                         Path(s.midi_map) if s.midi_map else None)
    except MidiError as exc:
        if s.midi != "auto":
            raise SettingsError(str(exc)) from exc
        log.warning("no MIDI input (%s)", exc)
        return None
