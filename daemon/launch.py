"""`segue serve` as a child process, for tools that drive a daemon of their own (`segue demo`, tests, benches):
start it, read its ready line for the ZeroMQ endpoints, stop it with SIGTERM (takes finalized)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from segue.models.errors import SegueError


class ServeProcess:
    """`segue serve --model MODEL --takes TAKES ARGS...` on free local ports.

    Args:
        preexec: run in the child before exec (tests use it to tie the child's life to theirs).
        echo: called with every line the daemon prints (None: kept only in `lines`).
    """

    def __init__(self, takes: Path, args: list[str], model: str = "demo", env: dict | None = None,
                 preexec: Callable[[], None] | None = None, echo: Callable[[str], None] | None = None,
                 timeout: float = 180.0):
        cmd = [sys.executable, "-m", "segue.daemon.cli", "serve", "--model", model, "--zmq", "tcp://127.0.0.1:*",
               "--pub", "tcp://127.0.0.1:*", "--osc", "127.0.0.1:0", "--takes", str(takes), *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=preexec)
        self.lines: list[str] = []
        self.echo = echo
        self.ready_line: str | None = None
        self._ready = threading.Event()
        threading.Thread(target=self._read, name="segue-serve-out", daemon=True).start()
        if not self._ready.wait(timeout) or self.ready_line is None:
            self.stop()
            raise SegueError("segue serve did not start:\n" + "".join(self.lines[-30:]))
        m = re.search(r"zmq (\S+) pub (\S+) \| osc (\S+) \|", self.ready_line)
        self.endpoint, self.pub = m.group(1), m.group(2)
        host, _, port = m.group(3).rpartition(":")
        self.osc = (host, int(port)) if port.isdigit() else None

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if self.echo is not None:
                self.echo(line)
            if line.startswith("segue ready"):
                self.ready_line = line
                self._ready.set()
        self._ready.set()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit status."""
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
