"""The audio side: a PortAudio duplex stream (sounddevice) or, with no device, a clock that runs in real time.

Both drive the same `process` step once per block: record the input block into the input ring, copy the next
block of the mix bus out, count underruns. `process` is the whole audio callback: no locks, no buffer allocation,
no torch, no logging.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from segue.daemon.rings import InputRing, MixBus
from segue.models.errors import SegueError

INPUT_SECONDS = 90  # the live input kept (the issue asks for at least 60 s)
BUS_SECONDS = 4  # mix written ahead of the playhead at most


class AudioDeviceError(SegueError):
    """No usable audio device, or the one named cannot be opened."""


@dataclass(frozen=True)
class AudioConfig:
    device: str | None = None  # name (substring) or index; None = the default device; "none" = no device
    sample_rate: int | None = None  # None = the device's default rate
    block_size: int = 256
    input_channels: int = 2
    output_channels: int = 2


class Audio:
    """Rings, clock and counters common to both back ends."""

    name = "none"
    host_api = "none"

    def __init__(self, sample_rate: int, in_channels: int, out_channels: int, block: int):
        self.sample_rate, self.in_channels, self.out_channels, self.block = sample_rate, in_channels, out_channels, block
        self.input = InputRing(max(in_channels, 1), INPUT_SECONDS * sample_rate)
        self.bus = MixBus(out_channels, BUS_SECONDS * sample_rate)
        self.output_latency = 0  # samples between handing a block over and hearing it
        self.input_latency = 0  # samples between a sound at the input and its arrival here
        self.xruns = 0  # device-reported over/underflows
        self.xrun_flags = 0  # PortAudio's status bits seen so far (input/output over- and underflow)
        self._last = (0, time.monotonic())  # (bus sample at the last block start, monotonic time of that block)
        self.running = False
        self.error: str | None = None

    def process(self, indata: np.ndarray | None, outdata: np.ndarray) -> None:
        """One audio block. Runs on the audio thread."""
        if indata is None:
            self.input.skip(len(outdata))
        else:
            self.input.write(indata)
        self._last = (self.bus.read_pos, time.monotonic())
        self.bus.play(outdata)

    def now(self) -> float:
        """The clock sample being heard now (output position, less the output latency)."""
        pos, t = self._last
        return pos + (time.monotonic() - t) * self.sample_rate - self.output_latency

    def input_now(self) -> int:
        """Clock sample whose sound is arriving at the input now (recorded input lags by the round trip)."""
        return self.input.end

    def status(self) -> dict:
        return dict(audio_device=self.name, host_api=self.host_api, running=self.running, error=self.error, sample_rate=self.sample_rate,
                    block=self.block, output_latency=self.output_latency, input_latency=self.input_latency,
                    xruns=self.xruns, underruns=self.bus.underruns, xrun_flags=self.xrun_flags, clock=int(self.now()))

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class NullAudio(Audio):
    """No sound card: a thread runs the block step at real time, so takes, timing and the PUB stream behave as
    with a device (the output goes nowhere)."""

    name = "none"

    def __init__(self, sample_rate: int, channels: int = 2, block: int = 256):
        super().__init__(sample_rate, 0, channels, block)
        self._out = np.zeros((block, channels), dtype=np.float32)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="segue-clock", daemon=True)

    def _run(self) -> None:
        period = self.block / self.sample_rate
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self.process(None, self._out)
            n += 1
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def start(self) -> None:
        self.running = True
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.running = False


def _find_device(sd, name: str | None, kind: str) -> int | None:
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    matches = [i for i, d in enumerate(sd.query_devices()) if name.lower() in d["name"].lower()
               and d[f"max_{kind}_channels"] > 0]
    if not matches:
        raise AudioDeviceError(f"no {kind} device matches {name!r}; `segue devices` lists them "
                               "(or use --audio-device none)")
    return matches[0]


class DeviceAudio(Audio):
    """A PortAudio stream through sounddevice (ALSA, JACK, PulseAudio, CoreAudio, WASAPI...)."""

    def __init__(self, cfg: AudioConfig):
        try:
            import sounddevice as sd
        except OSError as exc:  # the PortAudio library itself is missing
            raise AudioDeviceError(f"PortAudio is not installed ({exc}); install libportaudio2 or use "
                                   "--audio-device none") from exc
        self.sd = sd
        self.cfg = cfg
        try:
            out_dev = _find_device(sd, cfg.device, "output")
            in_dev = _find_device(sd, cfg.device, "input") if cfg.input_channels else None
            info = sd.query_devices(out_dev, "output")
        except AudioDeviceError:
            raise
        except Exception as exc:
            raise AudioDeviceError(f"no audio output device ({exc}); start your sound server or JACK, or use "
                                   "--audio-device none") from exc
        rate = cfg.sample_rate or int(info["default_samplerate"])
        in_ch = cfg.input_channels
        if in_ch:
            in_info = sd.query_devices(in_dev, "input")
            in_ch = min(in_ch, int(in_info["max_input_channels"]))
        out_ch = min(cfg.output_channels, int(info["max_output_channels"]))
        super().__init__(rate, in_ch, out_ch, cfg.block_size)
        self.name = info["name"]
        self.host_api = sd.query_hostapis(info["hostapi"])["name"]
        self.devices = (in_dev, out_dev)
        self.stream = None

    def _callback(self, indata, outdata, frames, time_info, status) -> None:
        if status:
            self.xruns += 1
            self.xrun_flags |= int(status._flags)
        self.process(indata if self.in_channels else None, outdata)

    def _finished(self) -> None:
        self.running = False

    def start(self) -> None:
        sd = self.sd
        kwargs = dict(samplerate=self.sample_rate, blocksize=self.block, dtype="float32",
                      callback=self._callback, finished_callback=self._finished, latency="low")
        try:
            if self.in_channels:
                self.stream = sd.Stream(device=self.devices, channels=(self.in_channels, self.out_channels), **kwargs)
            else:
                self.stream = sd.OutputStream(device=self.devices[1], channels=self.out_channels, **kwargs)
            latency = self.stream.latency
            in_lat, out_lat = latency if isinstance(latency, tuple) else (0.0, latency)
            self.input_latency = round(in_lat * self.sample_rate)
            self.output_latency = round(out_lat * self.sample_rate)
            if self.host_api == "JACK Audio Connection Kit":
                # PortAudio's JACK back end hands a callback's output to JACK one period later and does not count
                # that period in the latency it reports (measured: input -> output through PortAudio is one period
                # longer than through a plain JACK client). The clock must know, or takes land a block late.
                self.output_latency += self.block
            self.stream.start()
        except Exception as exc:
            raise AudioDeviceError(f"cannot open audio device {self.name!r} at {self.sample_rate} Hz ({exc}); "
                                   "pick another with --audio-device / --sample-rate, or use --audio-device none"
                                   ) from exc
        self.running = True
        self.error = None

    def close(self) -> None:
        if self.stream is not None:
            try:
                self.stream.stop()
                self.stream.close()
            except Exception:
                pass
        self.running = False


def open_audio(cfg: AudioConfig, fallback_rate: int) -> Audio:
    if cfg.device == "none":
        return NullAudio(cfg.sample_rate or fallback_rate, cfg.output_channels, cfg.block_size)
    return DeviceAudio(cfg)


def list_devices() -> str:
    try:
        import sounddevice as sd
    except OSError as exc:
        raise AudioDeviceError(f"PortAudio is not installed ({exc}); install libportaudio2") from exc
    return str(sd.query_devices())
