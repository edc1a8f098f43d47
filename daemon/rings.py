"""Preallocated rings shared by the audio callback and the engine, indexed by absolute clock sample.

Each ring has one writer and one reader, and each index is written by one side only, so neither side takes a
lock: the audio callback copies, advances its index, and returns. Buffers and indexes may live in shared memory
(`SharedAudio`), so that the callback can run in another process (see audio_worker.py): indexes are int64 cells,
which both sides read and write whole.

- `InputRing`: the callback writes every input block; the engine reads the last N seconds when asked.
- `MixBus`: the engine writes the final mix ahead of the playhead; the callback copies it out and zeroes what is
  behind it, so a block the engine did not fill in time plays as silence and is counted as an underrun.

Both rings follow the device's frame counter, not a count of callbacks: cycles the device ran without us are skipped
(`skip`), and a block the device hands us a second time (a callback that ran late read the next cycle's frame) is
played and recorded again in its place (`back`).
"""

from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

import numpy as np

# Cells of the counters array shared by the audio callback and the engine.
(IN_END, BUS_READ, BUS_FILLED, UNDERRUNS, XRUNS, XRUN_FLAGS, BLOCK_POS, BLOCK_NS, BLOCKS, GO, MISSED, CLOCK_SEQ, LATE,
 BUS_ZEROED) = range(14)
N_COUNTERS = 16


def _cell(i: int, doc: str) -> property:
    def get(self) -> int:
        return int(self.counters[i])

    def set(self, value: int) -> None:
        self.counters[i] = value

    return property(get, set, doc=doc)


def _clear(buf: np.ndarray, start: int, n: int) -> None:
    """Zero `n` ring cells from absolute sample `start` on, across the wrap (no allocation)."""
    cap = len(buf)
    i = start % cap
    first = min(n, cap - i)
    buf[i : i + first] = 0.0
    if first < n:
        buf[: n - first] = 0.0


class InputRing:
    end = _cell(IN_END, "clock sample after the newest recorded one (written by the callback only)")

    def __init__(self, channels: int, capacity: int, buf: np.ndarray | None = None,
                 counters: np.ndarray | None = None):
        self.buf = np.zeros((capacity, channels), np.float32) if buf is None else buf  # [N, C], frames contiguous
        self.capacity = capacity
        self.counters = np.zeros(N_COUNTERS, np.int64) if counters is None else counters

    def write(self, block: np.ndarray) -> None:
        """Callback side: append one [n, C] block (no allocation)."""
        n, cap = len(block), self.capacity
        i = self.end % cap
        first = min(n, cap - i)
        self.buf[i : i + first] = block[:first]
        if first < n:
            self.buf[: n - first] = block[first:]
        self.end += n

    def skip(self, n: int) -> None:
        """Callback side with no input device: the clock advances over silence."""
        _clear(self.buf, self.end, n)
        self.end += n

    def back(self, n: int) -> None:
        """Callback side: the device hands us again the last `n` samples it gave (n <= the last block); the next
        `write` records them again in their place."""
        self.end -= n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Engine side: a copy of clock samples [start, stop) as [C, n]; raises if they are not held."""
        end = self.end
        if stop > end:
            raise ValueError(f"input samples up to {stop} are not recorded yet (recorded up to {end})")
        if start < end - self.capacity + 1024 or start < 0:
            raise ValueError(f"input sample {start} is older than the {self.capacity} samples the ring keeps")
        out = np.empty((self.buf.shape[1], stop - start), np.float32)  # [C, n]
        i, n = start % self.capacity, stop - start
        first = min(n, self.capacity - i)  # two slices around the wrap: a copy, no index array
        out[:, :first] = self.buf[i : i + first].T
        out[:, first:] = self.buf[: n - first].T
        return out


class MixBus:
    read_pos = _cell(BUS_READ, "next clock sample the callback plays (callback writes it)")
    filled = _cell(BUS_FILLED, "clock sample up to which the engine has written (engine writes it)")
    underruns = _cell(UNDERRUNS, "callback blocks that were not (fully) filled in time")
    zeroed = _cell(BUS_ZEROED, "clock sample up to which the played ring is zeroed (callback writes it)")

    def __init__(self, channels: int, capacity: int, buf: np.ndarray | None = None,
                 counters: np.ndarray | None = None):
        self.buf = np.zeros((capacity, channels), np.float32) if buf is None else buf  # [N, C]
        self.capacity = capacity
        self.counters = np.zeros(N_COUNTERS, np.int64) if counters is None else counters

    def play(self, out: np.ndarray) -> None:
        """Callback side: copy the next block into `out` [n, C], and zero the ring behind it.

        The block just played is zeroed one call later, not now: a device that hands us the same block again
        (`back`) gets the same samples again."""
        n, cap = len(out), self.capacity
        r = self.read_pos
        if self.filled < r + n:
            self.underruns += 1
        i = r % cap
        first = min(n, cap - i)
        out[:first] = self.buf[i : i + first]
        if first < n:
            out[first:] = self.buf[: n - first]
        z = self.zeroed
        if z < r:  # everything played (or skipped) before this block: one lap of the ring at most
            lo = max(z, r - cap)
            _clear(self.buf, lo, r - lo)
            self.zeroed = r
        self.read_pos = r + n

    def skip(self, n: int) -> None:
        """Callback side: `n` samples the device played without us (a cycle the server skipped us for) are gone:
        the playhead moves past them, so that what follows stays on the device's clock. The next `play` zeroes
        them."""
        self.read_pos += n

    def back(self, n: int) -> None:
        """Callback side: the device asks again for the last `n` samples it was given (n <= the last block, which
        `play` keeps until the playhead has passed it)."""
        self.read_pos = max(self.read_pos - n, self.zeroed)

    def write(self, start: int, block: np.ndarray) -> int:
        """Engine side: place the mix [n, C] at clock samples [start, start + n); returns samples written.

        Samples already played (the engine was late) are dropped; samples further ahead than the ring holds are
        refused (the caller writes them later).
        """
        n = len(block)
        lo = max(start, self.read_pos)
        hi = min(start + n, self.read_pos + self.capacity)
        if hi <= lo:
            return 0
        idx = np.arange(lo, hi) % self.capacity
        self.buf[idx] = block[lo - start : hi - start]
        self.filled = max(self.filled, hi)
        return hi - lo


class SharedAudio:
    """The input ring, the mix bus and their counters in one block of memory: private to this process, or
    (`shared=True`) a named shared-memory block another process attaches to with `attach`."""

    def __init__(self, in_channels: int, out_channels: int, in_capacity: int, bus_capacity: int,
                 shared: bool = False, name: str | None = None):
        self.layout = (in_channels, out_channels, in_capacity, bus_capacity)
        cin = max(in_channels, 1)
        sizes = (8 * N_COUNTERS, 4 * in_capacity * cin, 4 * bus_capacity * out_channels)
        self.shm = None
        if shared or name:
            self.shm = shared_memory.SharedMemory(name=name, create=name is None, size=sum(sizes))
            if name is not None:
                # Attached, not owned: this process's resource tracker must not unlink the block when it exits
                # (a worker killed with its device would otherwise take the rings away from the next one).
                resource_tracker.unregister(self.shm._name, "shared_memory")
            mem = self.shm.buf
        else:
            mem = bytearray(sum(sizes))
        self.counters = np.ndarray((N_COUNTERS,), np.int64, buffer=mem, offset=0)
        if name is None:
            self.counters[:] = 0
        in_buf = np.ndarray((in_capacity, cin), np.float32, buffer=mem, offset=sizes[0])
        bus_buf = np.ndarray((bus_capacity, out_channels), np.float32, buffer=mem, offset=sizes[0] + sizes[1])
        self.input = InputRing(cin, in_capacity, in_buf, self.counters)
        self.bus = MixBus(out_channels, bus_capacity, bus_buf, self.counters)

    @property
    def name(self) -> str | None:
        return None if self.shm is None else self.shm.name

    @classmethod
    def attach(cls, name: str, layout: tuple[int, int, int, int]) -> "SharedAudio":
        return cls(*layout, name=name)

    def close(self, unlink: bool = False) -> None:
        if self.shm is None:
            return
        # numpy views must go before the mapping can close
        self.counters = self.input = self.bus = None
        try:
            self.shm.close()
        except BufferError:
            pass  # a view is still alive somewhere: the mapping goes with the process
        if unlink:
            self.shm.unlink()
