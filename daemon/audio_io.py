"""The audio side: a sound card (PortAudio through sounddevice, in a worker process) or, with no device, a clock
that runs in real time.

Both drive the same `process` step once per block: record the input block into the input ring, copy the next
block of the mix bus out, count underruns. `process` is the whole audio callback: no locks, no buffer allocation,
no torch, no logging.

With a device, the callback runs in `audio_worker.py`'s process over rings in shared memory. A watchdog notices
when the device goes away (a JACK server killed, a USB interface pulled): the daemon stays up, says so in
`status`, keeps time with a stand-in clock (takes go on being written and published), and starts a new worker
every second until the device is back.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace

import numpy as np

from segue.daemon.rings import (BLOCK_NS, BLOCK_POS, BLOCKS, CLOCK_SEQ, GO, LATE, MISSED, XRUN_FLAGS, XRUNS,
                                SharedAudio)
from segue.daemon.service import Service
from segue.models.errors import SegueError

log = logging.getLogger("segue.audio")

INPUT_SECONDS = 90  # the live input kept (the issue asks for at least 60 s)
BUS_SECONDS = 4  # mix written ahead of the playhead at most
JACK = "JACK Audio Connection Kit"  # PortAudio's name for the JACK host API
STALL_S = 1.0  # no audio block for this long while running: the device is gone
RETRY_S = 1.0  # between attempts to reopen a lost device


class AudioDeviceError(SegueError):
    """No usable audio device, or the one named cannot be opened."""


@dataclass(frozen=True)
class AudioConfig:
    device: str | None = None  # name (substring) or index; None = the default; "none"; "auto" = default or none
    sample_rate: int | None = None  # None = the device's default rate
    block_size: int = 256
    input_channels: int = 2
    output_channels: int = 2


class Audio:
    """Rings, clock and counters common to all back ends (`shared` when the callback runs in another process)."""

    name = "none"
    host_api = "none"

    def __init__(self, sample_rate: int, in_channels: int, out_channels: int, block: int,
                 shared: SharedAudio | None = None):
        self.sample_rate, self.in_channels, self.out_channels, self.block = sample_rate, in_channels, out_channels, block
        self.shared = shared or SharedAudio(in_channels, out_channels, INPUT_SECONDS * sample_rate,
                                            BUS_SECONDS * sample_rate)
        self.input, self.bus, self.counters = self.shared.input, self.shared.bus, self.shared.counters
        self.output_latency = 0  # samples between handing a block over and hearing it
        self.input_latency = 0  # samples between a sound at the input and its arrival here
        self.running = False
        self.error: str | None = None
        self.reopened = 0  # times a lost device came back

    def process(self, indata: np.ndarray | None, outdata: np.ndarray, missed: int = 0,
                started_ns: int | None = None) -> None:
        """One audio block. Runs on the audio thread (or in the audio worker). `missed`: samples the device went
        through since the previous block without calling us (they were neither recorded nor played); negative when
        the device hands us again the block it last gave (a callback that ran late read the next cycle's frame, and
        is followed at once by the call for that cycle): the block is then played and recorded again in its place,
        so the rings stay on the device's clock either way. `started_ns`: monotonic time at which the device's cycle
        for this block began, when it says (JACK); otherwise the time of this call stands for it."""
        c = self.counters
        if missed > 0:
            self.input.skip(missed)
            self.bus.skip(missed)
        elif missed < 0:
            self.input.back(-missed)
            self.bus.back(-missed)
            c[LATE] += 1
        c[MISSED] += missed
        if indata is None:
            self.input.skip(len(outdata))
        else:
            self.input.write(indata)
        # The pair (position, time) is read from other threads and processes: odd CLOCK_SEQ while it changes.
        c[CLOCK_SEQ] += 1
        c[BLOCK_POS] = self.bus.read_pos
        c[BLOCK_NS] = time.monotonic_ns() if started_ns is None else started_ns
        c[CLOCK_SEQ] += 1
        self.bus.play(outdata)
        c[BLOCKS] += 1

    @property
    def xruns(self) -> int:
        return int(self.counters[XRUNS])

    def now(self) -> float:
        """The clock sample being heard now (output position, less the output latency)."""
        c = self.counters
        while True:  # a consistent pair: not read while the audio callback was writing it
            seq = int(c[CLOCK_SEQ])
            ns, pos = int(c[BLOCK_NS]), int(c[BLOCK_POS])
            if not seq & 1 and int(c[CLOCK_SEQ]) == seq:
                break
        if ns == 0:
            return 0.0
        ahead = min((time.monotonic_ns() - ns) * 1e-9, 4 * self.block / self.sample_rate)  # a stalled device
        return pos + ahead * self.sample_rate - self.output_latency  # does not run the clock on

    def status(self) -> dict:
        return dict(audio_device=self.name, host_api=self.host_api, running=self.running, error=self.error,
                    reopened=self.reopened, sample_rate=self.sample_rate, block=self.block,
                    output_latency=self.output_latency, input_latency=self.input_latency, xruns=self.xruns,
                    xrun_flags=int(self.counters[XRUN_FLAGS]), missed=int(self.counters[MISSED]),
                    late=int(self.counters[LATE]), underruns=self.bus.underruns, clock=int(self.now()))

    def start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _RealTimeClock(Service):
    """Runs `process` on silent blocks at real time, on its own thread (no device, or while the device is lost)."""

    def __init__(self, audio: Audio):
        super().__init__("segue-clock")
        self.audio = audio
        self._out = np.zeros((audio.block, audio.out_channels), dtype=np.float32)

    def _run(self) -> None:
        period = self.audio.block / self.audio.sample_rate
        t0 = time.monotonic()
        n = 0
        while not self._stop.is_set():
            self.audio.process(None, self._out)
            n += 1
            delay = t0 + n * period - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)


class NullAudio(Audio):
    """No sound card: the block step runs at real time on a thread, so takes, timing and the PUB stream behave as
    with a device (the output goes nowhere)."""

    def __init__(self, sample_rate: int, channels: int = 2, block: int = 256):
        super().__init__(sample_rate, 0, channels, block)
        self._clock = _RealTimeClock(self)

    def start(self) -> None:
        self.running = True
        self._clock.start()

    def close(self) -> None:
        self._clock.close()
        self.running = False


class _Worker:
    """One audio worker process and the lines it prints."""

    def __init__(self, cfg: AudioConfig):
        conf = dict(device=cfg.device, sample_rate=cfg.sample_rate, block_size=cfg.block_size,
                    input_channels=cfg.input_channels, output_channels=cfg.output_channels)
        self.proc = subprocess.Popen([sys.executable, "-m", "segue.daemon.audio_worker", json.dumps(conf)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._read, name="segue-audio-worker-out", daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                pass  # PortAudio/JACK chatter on stdout
        self.lines.put(dict(error=f"the audio worker exited ({self.proc.wait()})"))

    def expect(self, key: str, timeout: float = 15.0) -> dict:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            msg = dict(error=f"the audio device did not answer within {timeout:g} s")
        if key not in msg:
            self.kill()
            raise AudioDeviceError(msg.get("error", f"unexpected answer from the audio worker: {msg}"))
        return msg[key]

    def send(self, **msg) -> None:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


class DeviceAudio(Audio):
    """A PortAudio stream (ALSA, JACK, PulseAudio, CoreAudio, WASAPI...) driven from an audio worker process."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        worker = _Worker(cfg)
        probe = worker.expect("probe")
        super().__init__(probe["sample_rate"], probe["in_channels"], probe["out_channels"], cfg.block_size,
                         SharedAudio(probe["in_channels"], probe["out_channels"], INPUT_SECONDS * probe["sample_rate"],
                                     BUS_SECONDS * probe["sample_rate"], shared=True))
        self.name, self.host_api = probe["name"], probe["host_api"]
        self.worker: _Worker | None = worker
        self._standin: _RealTimeClock | None = None
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watchdog, name="segue-audio-watch", daemon=True)

    def _connect(self, worker: _Worker) -> None:
        """Hand `worker` the rings and wait until its stream runs (the GO counter stays 0: it plays silence)."""
        worker.send(shm=self.shared.name, layout=list(self.shared.layout))
        ready = worker.expect("ready")
        self.output_latency, self.input_latency = ready["output_latency"], ready["input_latency"]

    def start(self) -> None:
        self._connect(self.worker)
        self.counters[GO] = 1
        self.running, self.error = True, None
        self._watch.start()

    def _watchdog(self) -> None:
        blocks, seen = -1, time.monotonic()
        while not self._stop.wait(0.1):
            if self.running:
                n = int(self.counters[BLOCKS])
                if n != blocks:
                    blocks, seen = n, time.monotonic()
                if not self.worker.alive() or time.monotonic() - seen > STALL_S:
                    self._lost()
            elif self._stop.wait(RETRY_S) is False:
                self._reopen()

    def _lost(self) -> None:
        self.counters[GO] = 0
        self.worker.kill()
        self.running = False
        self.error = (f"audio device {self.name!r} lost; segue keeps time without it and reopens it when it is "
                      "back")
        log.warning(self.error)
        self._standin = _RealTimeClock(self)  # the song goes on: takes keep being written and published
        self._standin.start()

    def _reopen(self) -> None:
        try:
            worker = _Worker(self.cfg)
            probe = worker.expect("probe")
            if (probe["sample_rate"], probe["in_channels"], probe["out_channels"]) != (
                    self.sample_rate, self.in_channels, self.out_channels):
                worker.kill()
                self.error = (f"audio device {probe['name']!r} came back at {probe['sample_rate']} Hz with "
                              f"{probe['in_channels']}/{probe['out_channels']} channels, not as before; "
                              "restart segue serve to use it")
                return
            self._connect(worker)
        except AudioDeviceError:
            return  # not back yet
        self._standin.close()  # from here on only the new worker's callback moves the rings
        self._standin = None
        self.worker = worker
        self.counters[GO] = 1
        self.running, self.error = True, None
        self.reopened += 1
        log.warning("audio device %r reopened", self.name)

    def close(self) -> None:
        self._stop.set()
        if self._watch.is_alive():
            self._watch.join(timeout=3)
        self.counters[GO] = 0
        if self._standin is not None:
            self._standin.close()
        if self.worker is not None:
            self.worker.kill()
        self.running = False
        self.shared.close(unlink=True)


def open_audio(cfg: AudioConfig, fallback_rate: int) -> Audio:
    """`device` "none": no sound card; "auto": the default one when there is one, else none (said in the log)."""
    if cfg.device not in ("none", "auto"):
        return DeviceAudio(cfg)
    if cfg.device == "auto":
        try:
            return DeviceAudio(replace(cfg, device=None))
        except AudioDeviceError as exc:
            log.warning("no sound card (%s): takes and the PUB stream only", exc)
    return NullAudio(cfg.sample_rate or fallback_rate, cfg.output_channels, cfg.block_size)


def list_devices() -> str:
    try:
        import sounddevice as sd
    except OSError as exc:
        raise AudioDeviceError(f"PortAudio is not installed ({exc}); install libportaudio2") from exc
    listing = str(sd.query_devices())
    return "Audio devices (--audio-device NAME|INDEX):\n" + (listing or "  none (no sound card, no JACK server)")
