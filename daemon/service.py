"""A background thread that loops in `_run` until `close` (it checks `self._stop`), then lets go of what it holds
in `_release`."""

from __future__ import annotations

import threading


class Service:
    def __init__(self, name: str):
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        pass

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=2)
        self._release()
