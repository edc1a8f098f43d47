"""A thin CUDA-graph wrapper with an off switch: capture a no-argument step once, replay it afterwards.

The step must read and write only tensors allocated before capture (the stream's state and static buffers).
Off on CPU, off when SEGUE_CUDA_GRAPHS=0, and it falls back to eager execution (once, with a warning) if capture
fails, so a graph problem costs speed, never correctness.
"""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch

log = logging.getLogger(__name__)


def graphs_enabled(device: torch.device, requested: bool | None = None) -> bool:
    if requested is False or device.type != "cuda" or not torch.cuda.is_available():
        return False
    return os.environ.get("SEGUE_CUDA_GRAPHS", "1") != "0"


class CUDAGraphed:
    """Runs `fn()` eagerly for `warmup` calls (on a side stream, as capture requires), then captures and replays."""

    def __init__(self, fn: Callable[[], None], enabled: bool, generators: tuple[torch.Generator, ...] = (),
                 warmup: int = 2):
        self.fn, self.enabled, self.generators, self.warmup = fn, enabled, generators, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.calls = 0

    def __call__(self) -> None:
        if not self.enabled:
            self.fn()
            return
        if self.graph is not None:
            self.graph.replay()
            return
        if self.calls < self.warmup:
            self.calls += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            return
        try:
            graph = torch.cuda.CUDAGraph()
            for gen in self.generators:
                graph.register_generator_state(gen)
            with torch.cuda.graph(graph):
                self.fn()
        except Exception as exc:  # capture is an optimisation: fall back to eager and say so once
            log.warning("CUDA graph capture failed (%s); running this step eagerly", exc)
            self.enabled = False
            self.fn()
            return
        self.graph = graph
        graph.replay()  # capture records the work without doing it
