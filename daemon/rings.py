"""Preallocated rings shared by the audio callback and the engine, indexed by absolute clock sample.

Each ring has one writer and one reader, and each index (a Python int) is written by one side only, so neither
side takes a lock: the audio callback copies, advances its index, and returns.

- `InputRing`: the callback writes every input block; the engine reads the last N seconds when asked.
- `MixBus`: the engine writes the final mix ahead of the playhead; the callback copies it out and zeroes what it
  read, so a block the engine did not fill in time plays as silence and is counted as an underrun.
"""

from __future__ import annotations

import numpy as np


class InputRing:
    def __init__(self, channels: int, capacity: int):
        self.buf = np.zeros((capacity, channels), dtype=np.float32)  # [N, C], frames contiguous like indata
        self.capacity = capacity
        self.end = 0  # clock sample after the newest recorded one (written by the callback only)

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
        i, cap = self.end % self.capacity, self.capacity
        first = min(n, cap - i)
        self.buf[i : i + first] = 0.0
        if first < n:
            self.buf[: n - first] = 0.0
        self.end += n

    def read(self, start: int, stop: int) -> np.ndarray:
        """Engine side: a copy of clock samples [start, stop) as [C, n]; raises if they are not held."""
        end = self.end
        if stop > end:
            raise ValueError(f"input samples up to {stop} are not recorded yet (recorded up to {end})")
        if start < end - self.capacity + 1024 or start < 0:
            raise ValueError(f"input sample {start} is older than the {self.capacity} samples the ring keeps")
        idx = np.arange(start, stop) % self.capacity
        return self.buf[idx].T.copy()


class MixBus:
    def __init__(self, channels: int, capacity: int):
        self.buf = np.zeros((capacity, channels), dtype=np.float32)  # [N, C]
        self.capacity = capacity
        self.read_pos = 0  # next clock sample the callback plays (callback writes it)
        self.filled = 0  # clock sample up to which the engine has written (engine writes it)
        self.underruns = 0  # callback blocks that were not (fully) filled in time

    def play(self, out: np.ndarray) -> None:
        """Callback side: copy the next block into `out` [n, C] and zero it in the ring."""
        n, cap = len(out), self.capacity
        r = self.read_pos
        if self.filled < r + n:
            self.underruns += 1
        i = r % cap
        first = min(n, cap - i)
        out[:first] = self.buf[i : i + first]
        self.buf[i : i + first] = 0.0
        if first < n:
            out[first:] = self.buf[: n - first]
            self.buf[: n - first] = 0.0
        self.read_pos = r + n

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
