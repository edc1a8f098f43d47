"""`segue serve`: settings (TOML file, then flags), load once, warm up, run the engine and transports until a
signal, then finalize every take and exit cleanly."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import threading
import tomllib
from dataclasses import dataclass
from pathlib import Path

from segue.daemon.audio_io import AudioConfig, open_audio
from segue.daemon.engine import Engine
from segue.daemon.session import EngineConfig
from segue.daemon.takes import lock_folder
from segue.daemon.vocabulary import CommandError, check_number
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
    threads: int | None = None  # torch CPU threads; default: half the CPUs (daemon/cpu.py)
    takes: str = "takes"
    allow: tuple[str, ...] = ()
    pace: str = "realtime"
    chunk_frames: int = 5
    keep_models: int = 0  # models kept loaded after `set model=` replaced them


class SettingsError(SegueError):
    pass


# Settings with a fixed set of values; the numeric ones take their bounds from the vocabulary (`BOUNDS`, shared with
# every other entry point); the rest are text.
CHOICES = {"pace": ("realtime", "asap"), "sync": ("none", "link", "jack"), "midi_api": ("auto", "jack", "alsa")}
NUMERIC = ("sample_rate", "block_size", "input_channels", "output_channels", "threads", "keep_models",
           "chunk_frames")


def _checked(key: str, v, where: str):
    """One setting's value from the config file or a flag, checked; `where` names it in the message."""
    if key in NUMERIC:
        try:
            return check_number(key, v, where)
        except CommandError as exc:
            raise SettingsError(exc.message) from exc
    if key == "allow":
        items = [v] if isinstance(v, str) else v
        if not isinstance(items, (list, tuple)) or not all(isinstance(x, str) for x in items):
            raise SettingsError(f"{where} must be a folder or a list of folders, got {v!r}")
        return tuple(items)
    if key == "audio_device" and isinstance(v, int) and not isinstance(v, bool):
        return str(v)  # a device index
    if not isinstance(v, str):
        raise SettingsError(f"{where} must be text, got {type(v).__name__} {v!r}")
    if key == "dtype":
        from segue.models.loading.builder import AUTO, DTYPE_NAMES, DTYPES, INT8

        if v.lower() not in (*DTYPES, AUTO, INT8):
            raise SettingsError(f"{where} must be {DTYPE_NAMES}, got {v!r}")
    if key in CHOICES and v not in CHOICES[key]:
        raise SettingsError(f"{where} must be {', '.join(CHOICES[key][:-1])} or {CHOICES[key][-1]}, got {v!r}")
    return v


def load_settings(config: str | None, flags: dict) -> ServeSettings:
    """Defaults <- the TOML file's keys (same names as the flags, with '_' or '-') <- flags given. Every value is
    checked (type, range, choices) where it comes from: one SettingsError naming the file's key or the flag."""
    values: dict = {}
    names = {f.name for f in dataclasses.fields(ServeSettings)}
    if config:
        try:
            data = tomllib.loads(Path(config).read_text())
        except OSError as exc:
            raise SettingsError(f"cannot read the config file {config} ({exc.strerror})") from exc
        except UnicodeDecodeError as exc:
            raise SettingsError(f"{config} is not a text file ({exc.reason} at byte {exc.start}); give a TOML "
                                "file of settings") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{config} is not valid TOML ({exc}); fix the file") from exc
        if "serve" in data:
            if len(data) > 1:
                raise SettingsError(f"{config}: settings both under [serve] and outside it "
                                    f"({', '.join(sorted(k for k in data if k != 'serve'))}); put them in one place")
            data = data["serve"]
        if not isinstance(data, dict):
            raise SettingsError(f"{config}: [serve] must be a table of settings")
        for k, v in data.items():
            key = k.replace("-", "_")
            if key not in names:
                raise SettingsError(f"{config}: unknown setting '{k}'; known: {', '.join(sorted(names))}")
            if key in values:
                raise SettingsError(f"{config}: '{k}' is set twice (as {key} and {key.replace('_', '-')}); keep one")
            values[key] = _checked(key, v, f"{config}: {k}")
    values.update({k: _checked(k, v, "--" + k.replace("_", "-")) for k, v in flags.items()
                   if v is not None and k in names})
    s = ServeSettings(**values)
    for flag, ep in (("--zmq", s.zmq), ("--pub", s.pub)):
        if not ENDPOINT.fullmatch(ep):
            raise SettingsError(f"{flag} must be a ZeroMQ endpoint such as tcp://127.0.0.1:5555 (tcp://, ipc:// or "
                                f"inproc://), got {ep!r}")
        if ep.startswith("tcp://"):
            port = ep.rpartition(":")[2]
            if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):  # ZeroMQ wraps 99999 to 34463
                raise SettingsError(f"{flag} {ep}: the port must be 1 to 65535, or * for any free one")
            if not ep.startswith(("tcp://127.0.0.1:", "tcp://localhost:")):
                log.warning("listening on %s: reachable from the network", ep)
    if s.zmq == s.pub and not s.zmq.endswith(":*"):  # two `*` ports are two free ports
        raise SettingsError(f"--zmq and --pub are both {s.zmq}; they need two endpoints")
    if s.osc != "none":
        osc_address(s.osc)
        if not s.osc.startswith(("127.0.0.1:", "localhost:")):
            log.warning("OSC on %s: reachable from the network", s.osc)
    return s


ENDPOINT = re.compile(r"(tcp|ipc|inproc)://\S+")


def osc_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise SettingsError(f"--osc must be HOST:PORT (e.g. 127.0.0.1:9000) or none, got {text!r}")
    return host, int(port)


def serve(s: ServeSettings, ready=print, stop: threading.Event | None = None) -> None:
    import torch

    from segue.daemon.cpu import default_threads, oversubscribed
    from segue.daemon.model_slot import checked_load, client_fetch
    from segue.models.loading.builder import load_model, parse_device, resolve_dtype

    # The audio callback (and JACK, the DAW, the other clients) must find a core free when its deadline comes, and
    # the model's threads must not wait for cores others hold (daemon/cpu.py).
    torch.set_num_threads(s.threads or default_threads())
    if s.threads and (warning := oversubscribed(s.threads)) is not None:
        log.warning("%s", warning)
    device = parse_device(s.device)
    dtype = resolve_dtype(s.dtype, device)
    # What can fail on the user's settings fails now, before minutes of loading: the takes folder, the sockets.
    for folder in s.allow:
        if not Path(folder).expanduser().is_dir():
            what = "is a file, not a folder" if Path(folder).expanduser().exists() else "no such folder"
            raise SettingsError(f"--allow {folder}: {what}; give a folder that exists")
    cfg = EngineConfig(_takes_folder(s.takes), tuple(Path(p).expanduser().resolve() for p in s.allow),
                       chunk_frames=s.chunk_frames, pace=s.pace, keep_models=s.keep_models)
    transports: list = []  # every transport hears every event
    try:  # from here on, whatever fails closes what was opened
        transports.append(_listen_zmq(s))
        if s.osc != "none":
            transports.append(_listen_osc(s.osc))
    except BaseException:
        for t in transports:
            t.close()
        raise
    zmq_server, osc = transports[0], (transports[1] if len(transports) > 1 else None)
    engine = None
    try:
        model = load_model(s.model, device, dtype)
        if model.lm is None:
            raise SettingsError(f"{s.model} has no language model; serve a MusicGen or AudioGen model")
        audio_device = "none" if s.pace == "asap" else s.audio_device
        audio = open_audio(AudioConfig(audio_device, s.sample_rate, s.block_size, s.input_channels,
                                       s.output_channels), fallback_rate=48000)
        engine = Engine(model, audio, cfg, emit=lambda ev: [t.event(ev) for t in transports],
                        load=lambda ref: checked_load(ref, device, dtype, client_fetch, load_model))
        engine.warm_up()
        for t in transports:
            t.attach(engine)
        engine.mixer.publish = zmq_server.audio
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
        ready(f"segue ready: model {model.info.ref} ({model.info.kind}, {model.sample_rate} Hz) on {model.device}, "
              f"LM {model.lm.precision}, {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''}"
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
        if engine is not None:
            engine.close()


def _takes_folder(takes: str) -> Path:
    """The takes folder, made if needed; absolute, so that the paths in events and `status` mean the same to a
    client in another folder."""
    folder = Path(takes).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"cannot use {takes} as the takes folder ({exc.strerror}); pick another with "
                            "--takes DIR") from exc
    if not os.access(folder, os.W_OK):
        raise SettingsError(f"cannot write takes to {folder}; pick another folder with --takes DIR")
    lock_folder(folder).close()  # another daemon's folder: said now, before the model loads (the engine locks it)
    return folder


def _listen_zmq(s: ServeSettings) -> ZmqServer:
    import zmq

    try:
        return ZmqServer(None, s.zmq, s.pub)
    except zmq.ZMQError as exc:
        why = ("another segue (or another program) may be listening there: stop it, or pick"
               if exc.errno == zmq.EADDRINUSE else "check the address (a local interface, an existing folder for "
               "ipc://), or pick")
        raise SettingsError(f"cannot listen on {s.zmq} / {s.pub} ({exc.strerror}); {why} other endpoints with "
                            "--zmq and --pub") from exc


def _listen_osc(address: str):
    from segue.osc_bridge.osc_server import OscServer

    host, port = osc_address(address)
    try:
        return OscServer(None, host, port)
    except OSError as exc:
        raise SettingsError(f"cannot listen for OSC on {address} ({exc.strerror}); pick another with --osc "
                            "HOST:PORT or turn it off with --osc none") from exc


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
