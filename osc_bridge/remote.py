"""A daemon on another machine (a GPU box), as the OSC and MIDI adapters see it, and its audio played here.

`RemoteDaemon` answers like the in-process engine (`daemon.dispatch.LocalEngine`): requests are checked against
the vocabulary here, so bad input is refused at once with the daemon's own codes, then forwarded over ZeroMQ.
`RemotePlayer` reads the daemon's PUB socket: events go to the local transports (OSC notify listeners), audio
chunks go into the local sound card's bus at the right sample.

Time: the daemon's audio clock runs on the other machine. The bridge measures it (the `status` reply carries the
clock read when it was answered; the fastest of a few round trips wins) and plays the daemon's sample S `delay`
seconds after the daemon hears it, so the network and the ZeroMQ hop never make a chunk late. Everything the
musician times here (bundle time tags, the beat position of a `tempo`) is moved by the same amount onto the
daemon's clock, so bar lines still fall where the musician hears them.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import zmq

from segue.daemon.audio_io import Audio
from segue.daemon.client import Client
from segue.daemon.dispatch import error_reply
from segue.daemon.service import Service
from segue.daemon.vocabulary import CommandError, Continue, Generate, Retry, Tempo, parse
from segue.models.errors import SegueError

log = logging.getLogger("segue.bridge")

UNREACHABLE = "daemon_unreachable"
RESYNC_S = 5.0  # how often the clock offset is measured again
PINGS = 5


class BridgeError(SegueError):
    pass


class RemoteDaemon:
    def __init__(self, endpoint: str, delay: float = 0.15, timeout: float = 3.0):
        self.endpoint, self.delay, self.timeout = endpoint, delay, timeout
        # Shared by the OSC, MIDI and player threads: `Client` sends one request at a time, makes a request's
        # relative paths absolute against the bridge's current folder, and replaces its socket after a timeout (a
        # late reply is never taken for the next request's).
        self.client = Client(endpoint, timeout=timeout)
        self.sample_rate = 0
        self.offset = 0.0  # daemon clock sample heard at local monotonic time t: offset + t * sample_rate
        self.rtt = float("inf")
        self.synced_at = 0.0
        self.takes_dir = ""
        if not self.sync_clock():
            self.client.close()
            raise BridgeError(f"no daemon answers on {endpoint}; start `segue serve` there (with --zmq "
                              "tcp://0.0.0.0:5555 to listen beyond its own machine) or fix --daemon")

    def _call(self, request: dict, pcm=None) -> dict:
        try:
            return self.client.call(request, pcm)
        except TimeoutError:
            return error_reply(UNREACHABLE, f"the daemon at {self.endpoint} did not answer within {self.timeout:g} s; "
                                            "is it running and reachable?")

    def sync_clock(self) -> bool:
        """Measure the daemon's clock against this machine's; keeps the fastest round trip. False: no answer."""
        best = None
        for _ in range(PINGS):
            t0 = time.monotonic()
            reply = self._call({"cmd": "status"})
            t1 = time.monotonic()
            if not reply.get("ok"):
                return False
            if best is None or t1 - t0 < best[0]:
                best = (t1 - t0, reply, 0.5 * (t0 + t1))
        rtt, reply, mid = best
        # A slow round trip says little about when the clock was read: keep the earlier measurement unless this
        # one is about as fast, or the earlier one is a minute old (the two clocks drift apart slowly).
        if rtt <= 1.5 * self.rtt or mid - self.synced_at > 60:
            self.sample_rate, self.takes_dir = reply["sample_rate"], reply["status"]["takes_dir"]
            self.offset, self.rtt, self.synced_at = reply["clock"] - mid * self.sample_rate, rtt, mid
        return True

    def remote_sample(self, t: float) -> float:
        """The daemon clock sample the musician hears here at local monotonic time `t`."""
        return self.offset + (t - self.delay) * self.sample_rate

    def local_time(self, sample: float) -> float:
        """When the daemon's clock sample `sample` is heard here (local monotonic seconds)."""
        return (sample - self.offset) / self.sample_rate + self.delay

    # -- what the adapters call -------------------------------------------------------------------------------------
    def clock_sample(self, ahead: float) -> int:
        return int(self.remote_sample(time.monotonic() + ahead))

    def now(self) -> float:
        """The daemon clock sample the musician hears here now (what the OSC and MIDI adapters stamp a message
        with as it arrives)."""
        return self.remote_sample(time.monotonic())

    def answer(self, request, pcm=None, at: int | None = None, origin: str = "zmq",
               received: float | None = None) -> dict:
        """`received`: the daemon clock sample heard here when the message arrived (`now()`), default now."""
        try:
            cmd = parse(request, pcm)
        except CommandError as exc:
            return error_reply(exc.code, exc.message)
        request = dict(request)
        if at is not None and isinstance(cmd, (Generate, Continue, Retry)) and cmd.start is None:
            request["start"] = at  # a bundle's time tag: an absolute time on the daemon's clock
        if isinstance(cmd, Tempo) and cmd.beat is not None:
            # The beat is the one heard here when the message arrived. The daemon anchors it where the request
            # reaches it: half a round trip from now, and the music it plays then is heard here `delay` later.
            since = 0.0 if received is None else max(0.0, (self.now() - received) / self.sample_rate)
            request["beat"] = cmd.beat + (0.5 * self.rtt + self.delay + since) * cmd.bpm / 60.0
        return self._call(request, pcm)

    def close(self) -> None:
        self.client.close()


class RemotePlayer(Service):
    """The daemon's PUB stream: events to `transports`, audio into the local bus at the daemon's time + delay."""

    def __init__(self, remote: RemoteDaemon, pub: str, audio: Audio, transports: list):
        super().__init__("segue-bridge-play")
        self.remote, self.audio, self.transports = remote, audio, transports
        self.sub = zmq.Context.instance().socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for topic in (b"event", b"audio"):
            self.sub.setsockopt(zmq.SUBSCRIBE, topic)
        self.sub.connect(pub)
        self.next_remote: int | None = None  # where the last chunk ended, on the daemon's clock ...
        self.next_local = 0  # ... and on the local one
        self.late = 0  # samples that arrived after their time here (raise --delay)
        self.chunks = 0
        self._resampler = None
        if remote.sample_rate != audio.sample_rate:
            import soxr

            self._soxr = soxr
            log.warning("daemon at %d Hz, sound card at %d Hz: resampling", remote.sample_rate, audio.sample_rate)

    def _run(self) -> None:
        next_sync = time.monotonic() + RESYNC_S
        bus, horizon = self.audio.bus, int(0.05 * self.audio.sample_rate)
        while not self._stop.is_set():
            # Nothing else writes this bus: keep it "filled" with the silence the callback leaves behind, so only a
            # stall of this thread counts as an underrun.
            bus.filled = max(bus.filled, bus.read_pos + horizon)
            if self.sub.poll(10):
                topic, *frames = self.sub.recv_multipart()
                try:
                    if topic == b"event":
                        ev = json.loads(frames[0])
                        for t in self.transports:
                            t.event(ev)
                    else:
                        self._audio(json.loads(frames[0]), frames[1])
                except Exception:
                    log.exception("PUB message")
            if time.monotonic() >= next_sync:
                next_sync = time.monotonic() + RESYNC_S
                self.remote.sync_clock()

    def _audio(self, header: dict, payload: bytes) -> None:
        ch = header["channels"]
        pcm = np.frombuffer(payload, np.float32).reshape(-1, ch)  # [n, C]
        start, n = header["start"], len(pcm)
        out_ch = self.audio.bus.buf.shape[1]
        if ch != out_ch:
            pcm = np.repeat(pcm[:, :1], out_ch, axis=1) if ch == 1 else pcm[:, :out_ch]
        sr_l = self.audio.sample_rate
        contiguous = start == self.next_remote
        if self.remote.sample_rate != sr_l:
            if not contiguous or self._resampler is None:
                self._resampler = self._soxr.ResampleStream(self.remote.sample_rate, sr_l, out_ch, dtype="float32")
            pcm = self._resampler.resample_chunk(pcm)
        placed = self.audio.now() + (self.remote.local_time(start) - time.monotonic()) * sr_l
        if not contiguous or abs(placed - self.next_local) > 0.002 * sr_l:
            self.next_local = round(placed)  # a new run of sound (or the clocks drifted apart): place it afresh
        written = self.audio.bus.write(self.next_local, pcm)
        self.late += len(pcm) - written
        self.next_remote, self.next_local = start + n, self.next_local + len(pcm)
        self.chunks += 1

    def _release(self) -> None:
        self.sub.close()
