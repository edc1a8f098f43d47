"""Prompt and melody audio read from disk off the engine thread, each within a deadline.

A file in an allowed folder may sit on a disk that does not answer (a network share that went away, a failing
drive); even a regular file's read can then block for minutes. The engine thread must keep mixing, so a request
whose prompt or melody comes from a file or a take is parked while a thread of its own reads it, and set up when
the read comes back (`ReadDone`, through the engine's inbox). A read that takes longer than `READ_TIMEOUT_S` fails
its request with `bad_audio`. A stuck reader keeps its thread and its place: at most `MAX_READS` reads are out at
once and `MAX_WAITING` requests wait for a place, so stuck reads cannot pile up threads either.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from segue.daemon.vocabulary import BUSY, CommandError

READ_TIMEOUT_S = 5.0  # seconds a prompt or melody file may take, waiting included (60 s of WAV reads in ~0.1 s)
MAX_READS = 4  # reads out at once; a stuck one holds its place until it returns
MAX_WAITING = 32  # requests waiting for a place; more are `busy`


@dataclass(frozen=True)
class ReadDone:
    """A reader thread's result (engine-internal, never parsed from a request): what `job` returned, or the error
    it raised."""

    rid: int
    result: object = None
    error: BaseException | None = None


@dataclass
class Parked:
    """A request waiting for its read: what the engine needs to set it up when the read comes back."""

    what: str  # the files it reads, for the timeout's message
    deadline: float  # time.monotonic()
    request: tuple  # (the command, the time it was received)


class Reads:
    """Reads in flight and waiting. `start`, `finish`, `expired` and `cancel` are called on the engine thread
    only; a reader touches nothing here but the semaphore, and hands its result to `post`."""

    def __init__(self, post: Callable[[ReadDone], None], timeout: float = READ_TIMEOUT_S, limit: int = MAX_READS,
                 waiting: int = MAX_WAITING):
        self.post, self.timeout, self.limit, self.waiting = post, timeout, limit, waiting
        self._slots = threading.BoundedSemaphore(limit)
        self.parked: dict[int, Parked] = {}
        self._queue: deque[tuple[int, Callable[[], object]]] = deque()

    def start(self, rid: int, what: str, job: Callable[[], object], request: tuple) -> None:
        """Read on a thread of its own as soon as one of `limit` places is free: `job()` runs there, and its result
        reaches `post` as a `ReadDone`. The deadline counts from now.

        Raises CommandError(BUSY) when `waiting` requests already wait for a place (reads stuck on a disk that does
        not answer)."""
        self._queue = deque((r, j) for r, j in self._queue if r in self.parked)  # drop the expired and cancelled
        if len(self._queue) >= self.waiting:
            raise CommandError(BUSY, f"{len(self._queue)} requests are waiting for file reads that do not return; "
                                     "continue from the live input or a take in memory, or try again later")
        self.parked[rid] = Parked(what, time.monotonic() + self.timeout, request)
        self._queue.append((rid, job))
        self._pump()

    def _pump(self) -> None:
        """Start waiting reads while places are free (those expired or cancelled meanwhile are dropped)."""
        while self._queue:
            rid, job = self._queue[0]
            if rid in self.parked and not self._slots.acquire(blocking=False):
                return
            self._queue.popleft()
            if rid in self.parked:
                threading.Thread(target=self._read, args=(rid, job), name=f"segue-read-{rid}", daemon=True).start()

    def _read(self, rid: int, job: Callable[[], object]) -> None:
        try:
            done = ReadDone(rid, result=job())
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the request that asked
            done = ReadDone(rid, error=exc)
        finally:
            self._slots.release()  # before posting: the engine starts the next waiting read when it gets this
        self.post(done)

    def finish(self, done: ReadDone) -> Parked | None:
        """The parked request `done` belongs to (None when it timed out or was cancelled meanwhile); the next
        waiting read starts."""
        self._pump()
        return self.parked.pop(done.rid, None)

    def expired(self, now: float) -> list[tuple[int, Parked]]:
        """Parked requests past their deadline, removed (a late result is dropped)."""
        late = [(rid, p) for rid, p in self.parked.items() if now >= p.deadline]
        for rid, _ in late:
            del self.parked[rid]
        return late

    def cancel(self, rid: int) -> Parked | None:
        return self.parked.pop(rid, None)
