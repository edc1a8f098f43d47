"""Helpers shared by every streaming state: fixed-capacity tails, snapshot and in-place restore.

A streaming state is a plain dataclass of tensors and host ints. Snapshots are deep copies; restoring copies the
saved values back *into* the live tensors so that anything holding their addresses (a CUDA graph, another thread's
view) keeps working.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch

S = TypeVar("S")


class Tail:
    """A fixed-capacity time buffer `[B, C, capacity]` of which the first `n` samples are valid.

    Allocated once; `set` copies new contents in place, so the state never grows.
    """

    def __init__(self, batch: int, channels: int, capacity: int, device: torch.device, dtype: torch.dtype):
        self.buf = torch.zeros(batch, channels, capacity, device=device, dtype=dtype)
        self.n = 0

    def get(self) -> torch.Tensor:
        return self.buf[..., : self.n]  # [B, C, n]

    def set(self, x: torch.Tensor) -> None:
        n = x.shape[-1]
        if n > self.buf.shape[-1]:
            raise RuntimeError(f"streaming tail overflow: {n} > capacity {self.buf.shape[-1]}")
        self.buf[..., :n].copy_(x)
        self.n = n

    def __deepcopy__(self, memo: dict) -> "Tail":
        new = Tail.__new__(Tail)
        new.buf = self.buf.clone()
        new.n = self.n
        return new


def snapshot(state: S) -> S:
    """Deep copy of a streaming state (tensors cloned, ints copied)."""
    import copy

    return copy.deepcopy(state)


def restore_(dst: Any, src: Any) -> None:
    """Copy `src` into `dst` in place: tensors with `copy_`, everything else by assignment, recursively."""
    if dst is None and src is None:
        return
    if isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, Tail):
        dst.buf.copy_(src.buf)
        dst.n = src.n
    elif isinstance(dst, (list, tuple)):
        if len(dst) != len(src):
            raise ValueError("cannot restore a state into one of a different structure")
        for d, s in zip(dst, src):
            restore_(d, s)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            d, s = getattr(dst, f.name), getattr(src, f.name)
            if isinstance(d, (torch.Tensor, Tail, list, tuple)) or dataclasses.is_dataclass(d):
                restore_(d, s)
            else:
                setattr(dst, f.name, s)
    else:
        raise TypeError(f"cannot restore a value of type {type(dst).__name__} in place")
