"""The delay pattern: where each codebook's frames sit in the sequence of columns the LM reads and writes.

Column c (c >= 0) holds, in row k, frame `c - 1 - delay[k]` of codebook k; rows whose frame does not exist (before
the start, before a re-prompt window, after a finite end) hold the special token. For delays [0, 1, 2, 3]:

    column      0  1  2  3  4  5 ...
    codebook 0  S  0  1  2  3  4
    codebook 1  S  S  0  1  2  3
    codebook 2  S  S  S  0  1  2
    codebook 3  S  S  S  S  0  1        frame f is complete once column f + 1 + max_delay exists

This matches audiocraft's DelayedPatternProvider and transformers' build_delay_pattern_mask.
"""

from __future__ import annotations

import torch


def columns_from_frames(frames: torch.Tensor, delays: tuple[int, ...], start: int, stop: int, first_frame: int,
                        special: int, ring: int | None = None) -> torch.Tensor:
    """Columns [start, stop) built from a frame buffer.

    frames: [B, K, F] codes; frame f lives at index f (or f % ring when `ring` is given).
    first_frame: frames before it are treated as absent (the start of a stream or of a re-prompt window).
    Returns [B, K, stop - start] int64.
    """
    dev = frames.device
    cols = torch.arange(start, stop, device=dev)  # [n]
    delay = torch.tensor(delays, device=dev)  # [K]
    f = cols[None, :] - 1 - delay[:, None]  # [K, n] frame index of each cell
    absent = f < first_frame
    idx = f.clamp(min=0)
    if ring is not None:
        idx = idx % ring
    B, K, _ = frames.shape
    out = frames.gather(2, idx[None].expand(B, K, -1))  # [B, K, n]
    return out.masked_fill(absent[None], special)

