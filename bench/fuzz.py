"""The daemon under a fuzz: 100,000 malformed ZeroMQ requests and 100,000 malformed OSC datagrams (tests/fuzz_inputs.py)
sent to `segue serve --model demo --audio-device none` while an endless take plays and another client polls
`status`. Records how long each half took, the answers' codes, `status` latency, and whether the take dropped
anything.

    .venv/bin/python bench/fuzz.py [--quick]     # --quick: 10,000 of each
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_inputs import run_fuzz  # noqa: E402
from jack_rig import Daemon  # noqa: E402


def measure(quick: bool = False) -> dict:
    n = 10_000 if quick else 100_000
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp) / "takes", ["--audio-device", "none", "--midi", "none"])
        try:
            return run_fuzz(daemon.endpoint, daemon.pub, daemon.osc, n, n)
        finally:
            daemon.stop()


if __name__ == "__main__":
    import json

    print(json.dumps(measure("--quick" in sys.argv), indent=1))
