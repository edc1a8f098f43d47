"""The sound card, in a process of its own: `python -m segue.daemon.audio_worker CONFIG_JSON`.

Why a process: the PortAudio callback runs Python, and in the daemon's process it would wait for the interpreter
lock while the engine thread runs the model; and when a JACK server dies, PortAudio cannot be closed or
re-initialised in the process that used it (both calls block for good). Here the callback shares the interpreter
with nothing, and a lost device costs a process that the daemon kills and starts again.

Protocol (one JSON object per line):
  worker -> daemon  {"probe": {name, host_api, sample_rate, in_channels, out_channels}}   the device it found
  daemon -> worker  {"shm": NAME, "layout": [...]}                                        rings to play through
  worker -> daemon  {"ready": {output_latency, input_latency}}                            stream running
  worker -> daemon  {"error": "..."}                                                      then it exits
The callback touches the rings only once the daemon sets the GO counter (so the daemon's stand-in clock and this
callback never both advance them); until then it plays silence.
"""

from __future__ import annotations

import json
import os
import sys
import time

from segue.daemon.rings import GO, XRUN_FLAGS, XRUNS, SharedAudio
from segue.daemon.audio_io import JACK, Audio

LOST = 3  # exit status: the stream stopped on its own (device gone, JACK server died)


def _say(**msg) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _find_device(sd, name: str | None, kind: str) -> int | None:
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    matches = [i for i, d in enumerate(sd.query_devices()) if name.lower() in d["name"].lower()
               and d[f"max_{kind}_channels"] > 0]
    if not matches:
        raise LookupError(f"no {kind} device matches {name!r}; `segue devices` lists them (or use --audio-device "
                          "none)")
    return matches[0]


class _JackCycles:
    """Frames of the JACK graph that went by without our callback, and when the current cycle began.

    A client that is late (or stopped) is not called for the cycles it missed; counting callbacks, the clock would
    then fall a block behind the song for good at each one. JACK's frame counter at the start of the current cycle
    (read through a client of our own that is never activated, so it costs the graph nothing) says how many frames
    passed since the previous callback.

    The clock is read between callbacks by extrapolating from the last one. The moment a callback runs wanders
    within the cycle (by a millisecond and more on a busy box); JACK's own estimate of when the cycle began
    (`jack_get_cycle_times`, its delay-locked loop) does not, so a `tempo` stamped on arrival lands to a fraction
    of a millisecond.
    """

    def __init__(self):
        os.environ.setdefault("JACK_NO_START_SERVER", "1")
        import ctypes
        import ctypes.util

        import jack

        self.client = jack.Client("segue-clock", no_start_server=True)
        self.prev: int | None = None
        # JACK-Client binds neither call: libjack's own, through ctypes, with the out-arguments allocated once.
        lib = ctypes.CDLL(ctypes.util.find_library("jack") or "libjack.so.0")
        lib.jack_get_time.restype = ctypes.c_uint64
        lib.jack_get_cycle_times.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32),
                                             ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64),
                                             ctypes.POINTER(ctypes.c_float)]
        self._cycle_times = lib.jack_get_cycle_times
        self._ptr = int(jack._ffi.cast("uintptr_t", self.client._ptr))
        self._frames, self._usecs, self._next = ctypes.c_uint32(), ctypes.c_uint64(), ctypes.c_uint64()
        self._period = ctypes.c_float()
        self._out = (ctypes.byref(self._frames), ctypes.byref(self._usecs), ctypes.byref(self._next),
                     ctypes.byref(self._period))
        # JACK's microseconds run on the monotonic clock less a constant: measured once, over the tightest read.
        reads = []
        for _ in range(5):
            a = time.monotonic_ns()
            j = lib.jack_get_time()
            reads.append((time.monotonic_ns() - a, (a + time.monotonic_ns()) // 2 - 1000 * j))
        self.offset_ns = min(reads)[1]

    def cycle_start_ns(self) -> int | None:
        """Monotonic nanoseconds at which the current cycle's first frame was due (None: JACK cannot say)."""
        if self._cycle_times(self._ptr, *self._out) != 0:
            return None
        return 1000 * self._usecs.value + self.offset_ns

    def missed(self, frames: int) -> int:
        """Frames JACK went through since our previous callback beyond its `frames`: positive for cycles it ran
        without us; -frames when this callback serves the cycle the previous one already read. That happens when a
        callback runs late: by the time it reads the frame counter JACK has begun the next cycle, and it is then
        called again, at once, for that cycle (seen under CPU load: counting the first read as a missed cycle and
        ignoring the second put every later take a block early)."""
        f = self.client.last_frame_time
        gap = 0 if self.prev is None else ((f - self.prev - frames + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)
        self.prev = f  # JACK frames are uint32: the difference is taken modulo 2**32, signed
        return gap if gap >= -frames else 0  # the counter never goes back further than a cycle


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[0])
    try:
        import sounddevice as sd
    except OSError as exc:  # the PortAudio library itself is missing
        _say(error=f"PortAudio is not installed ({exc}); install libportaudio2 or use --audio-device none")
        return 2
    try:
        out_dev = _find_device(sd, cfg["device"], "output")
        in_dev = _find_device(sd, cfg["device"], "input") if cfg["input_channels"] else None
        info = sd.query_devices(out_dev, "output")
        in_ch = cfg["input_channels"]
        if in_ch:
            in_ch = min(in_ch, int(sd.query_devices(in_dev, "input")["max_input_channels"]))
    except LookupError as exc:
        _say(error=str(exc))
        return 2
    except Exception as exc:
        _say(error=f"no audio output device ({exc}); start your sound server or JACK, or use --audio-device none")
        return 2
    rate = cfg["sample_rate"] or int(info["default_samplerate"])
    out_ch = min(cfg["output_channels"], int(info["max_output_channels"]))
    host_api = sd.query_hostapis(info["hostapi"])["name"]
    _say(probe=dict(name=info["name"], host_api=host_api, sample_rate=rate, in_channels=in_ch, out_channels=out_ch))
    line = sys.stdin.readline()
    if not line:
        return 0
    msg = json.loads(line)
    shared = SharedAudio.attach(msg["shm"], tuple(msg["layout"]))
    audio = Audio(rate, in_ch, out_ch, cfg["block_size"], shared)
    c = shared.counters
    cycles = None
    if host_api == JACK:
        try:
            cycles = _JackCycles()
        except Exception:  # noqa: BLE001 - without it the clock counts callbacks, as on other host APIs
            cycles = None

    def callback(indata, outdata, frames, time_info, status) -> None:
        missed = cycles.missed(frames) if cycles is not None else 0
        if not c[GO]:
            outdata.fill(0.0)
            return
        if status:
            c[XRUNS] += 1
            c[XRUN_FLAGS] |= int(status._flags)
        audio.process(indata if in_ch else None, outdata, missed,
                      cycles.cycle_start_ns() if cycles is not None else None)

    def output_callback(outdata, frames, time_info, status) -> None:  # an output-only stream: no input block
        callback(None, outdata, frames, time_info, status)

    kwargs = dict(samplerate=rate, blocksize=cfg["block_size"], dtype="float32", latency="low")
    try:
        if in_ch:
            stream = sd.Stream(device=(in_dev, out_dev), channels=(in_ch, out_ch), callback=callback, **kwargs)
        else:
            stream = sd.OutputStream(device=out_dev, channels=out_ch, callback=output_callback, **kwargs)
        latency = stream.latency
        in_lat, out_lat = latency if isinstance(latency, tuple) else (0.0, latency)
        out_lat = round(out_lat * rate)
        if host_api == JACK:
            # PortAudio's JACK back end hands a callback's output to JACK one period later and does not count that
            # period in the latency it reports (measured: input -> output through PortAudio takes one period more
            # than through a plain JACK client). The clock must know, or takes land a block late.
            out_lat += cfg["block_size"]
        stream.start()
    except Exception as exc:
        _say(error=f"cannot open audio device {info['name']!r} at {rate} Hz ({exc}); pick another with "
                   "--audio-device / --sample-rate, or use --audio-device none")
        return 2
    _say(ready=dict(output_latency=out_lat, input_latency=round(in_lat * rate)))
    parent = os.getppid()
    while stream.active and os.getppid() == parent:
        time.sleep(0.05)
    # Never close the stream or terminate PortAudio here: with the JACK server gone both block forever.
    os._exit(LOST if os.getppid() == parent else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
