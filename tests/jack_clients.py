"""The tests' own JACK clients, each in a process of its own: `python jack_clients.py play|record SERVER SHM ...`.

Their process callbacks run Python. In the test process they would wait for the interpreter lock whenever the
test's own thread holds it, and on a 2-core box that thread is often preempted by the daemon's model threads while
holding it: the client misses its JACK cycle, and JACK then skips the clients after it in the graph, the daemon
among them (its clock keeps to JACK's frames, but the audio of each skipped cycle is lost, and the recording no
longer equals the take). Here nothing else runs Python: the main thread only blocks on stdin.

  play SERVER SHM FRAMES CHANNELS     plays the loop [FRAMES, CHANNELS] float32 in SHM: sample f % FRAMES at frame f
  record SERVER SHM FRAMES CHANNELS   records into SHM (int64 first frame (-1: none yet), int64 frames recorded,
                                      then float32 [FRAMES, CHANNELS], then one byte per frame: seen)

stdin: one line of port names to connect to (answered "ok"); then end of file: the client closes and the process
exits. stdout: "ready" once the client is active.
"""

from __future__ import annotations

import os
import sys
from multiprocessing import resource_tracker, shared_memory

import numpy as np


def recording_layout(frames: int, channels: int) -> tuple[int, int, int]:
    """(offset of the samples, offset of the seen flags, total bytes) of a recording block."""
    samples = 16
    seen = samples + 4 * frames * channels
    return samples, seen, seen + frames


def main(argv: list[str]) -> int:
    mode, server, shm_name, frames, channels = argv[0], argv[1], argv[2], int(argv[3]), int(argv[4])
    os.environ["JACK_NO_START_SERVER"] = "1"
    import jack

    shm = shared_memory.SharedMemory(shm_name)
    resource_tracker.unregister(shm._name, "shared_memory")  # the test process owns the block and unlinks it
    client = jack.Client(f"segue-{mode}", servername=server, no_start_server=True)
    if mode == "play":
        loop = np.ndarray((frames, channels), np.float32, shm.buf)
        twice = np.concatenate([loop, loop])  # any period-sized window is one slice
        ports = [client.outports.register(f"out_{i}") for i in range(channels)]

        def process(n: int) -> None:
            i = client.last_frame_time % frames
            for c, port in enumerate(ports):
                port.get_array()[:] = twice[i : i + n, c]
    else:
        at, seen_at, _ = recording_layout(frames, channels)
        head = np.ndarray((2,), np.int64, shm.buf)
        buf = np.ndarray((frames, channels), np.float32, shm.buf, at)
        seen = np.ndarray((frames,), np.bool_, shm.buf, seen_at)
        ports = [client.inports.register(f"in_{i}") for i in range(channels)]

        def process(n: int) -> None:
            f = client.last_frame_time
            if head[0] < 0:
                head[0] = f
            i = f - head[0]
            if i + n > frames:
                return
            for c, port in enumerate(ports):
                buf[i : i + n, c] = port.get_array()
            seen[i : i + n] = True
            head[1] = i + n  # last: a reader that sees the count sees the samples

    client.set_process_callback(process)
    client.activate()
    print("ready", flush=True)
    for line in sys.stdin:  # blocks without the interpreter lock
        for mine, other in zip(ports, line.split()):
            if mode == "play":
                client.connect(mine, other)
            else:
                client.connect(other, mine)
        print("ok", flush=True)
    client.deactivate()
    client.close()
    shm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
