"""MusicGen-Melody's conditioning prefix: projected chroma, then projected text, fed before the audio tokens.

A melody LM has no cross-attention. Each CFG row's sequence is

    [ chroma (chroma_length frames) | text (S vectors) | audio columns ... ]

with positions running over the whole of it, as in audiocraft (fuser `prepend: [self_wav, description]`, which
puts the chroma in front of the text) and transformers (`cat([audio_hidden_states, text_states])`). No attention
mask covers the prefix: padded text positions are zero vectors and are attended like any other (both references
do the same). Null rows (CFG) have zero text of the same length and a one-hot chroma at bin 0.

The chroma is fitted to `chroma_length` frames by tiling (shorter) or truncating (longer). A context that starts
later in the take (a re-prompt past the trained 30 s) takes the window that starts at that time, read periodically,
so the melody keeps following the take; audiocraft likewise re-cuts the melody at each extension's time offset.
"""

from __future__ import annotations

import torch

from segue.models.lm.conditioning import Condition
from segue.models.lm.model import MusicGenLM


def null_chroma(rows: int, n_chroma: int, device: torch.device) -> torch.Tensor:
    """The unconditional melody: one frame, one-hot at bin 0 (what a silent input gives), [rows, 1, n_chroma]."""
    x = torch.zeros(rows, 1, n_chroma, device=device)
    x[:, :, 0] = 1
    return x


def chroma_window(chroma: torch.Tensor, length: int, offset: int = 0) -> torch.Tensor:
    """chroma [B, T, C] -> [B, length, C]: frames offset, offset + 1, ... read periodically (period T).

    offset 0 is transformers' and audiocraft's fit: the first `length` frames, or the frames repeated end to end.
    """
    T = chroma.shape[1]
    idx = (torch.arange(length, device=chroma.device) + offset) % T
    return chroma.index_select(1, idx)


def chroma_offset(lm: MusicGenLM, first_frame: int) -> int:
    """Chroma frame heard at codec frame `first_frame` (where a context starts)."""
    cfg = lm.cfg
    return round(first_frame / cfg.frame_rate * cfg.chroma_rate)


def prefix_length(lm: MusicGenLM, conds: list[Condition]) -> int:
    """Positions the prefix of these conditions takes: the chroma and the longest text."""
    return lm.cfg.chroma_length + max(c.length for c in conds)


@torch.no_grad()
def write_prefix(lm: MusicGenLM, out: torch.Tensor, conds: list[Condition], null: Condition,
                 chroma: torch.Tensor | None, offset: int = 0) -> int:
    """Write the prefix of B conditional rows then B null rows into out [2B, >= P, dim]; returns P.

    conds: the B texts' conditions (projected text in `memory`); chroma: one-hot [B, T, n_chroma], or None for
    the null melody on the conditional rows too (what transformers does when it is given no melody).
    """
    cfg = lm.cfg
    B, L = len(conds), cfg.chroma_length
    P = prefix_length(lm, conds)
    if out.shape[0] != 2 * B or out.shape[1] < P:
        raise ValueError(f"prefix buffer {list(out.shape)} cannot hold {2 * B} rows of {P} positions")
    null_c = chroma_window(null_chroma(B, cfg.n_chroma, out.device), L)  # [B, L, n_chroma]
    real_c = null_c if chroma is None else chroma_window(chroma.to(out.device), L, offset)
    out[:B, :L] = lm.project_chroma(real_c)  # [B, L, dim]
    out[B:, :L] = lm.project_chroma(null_c)
    out[:, L:P].zero_()  # text padding and the null rows' text: zero vectors, attended without a mask
    for i, c in enumerate(conds):
        out[i, L : L + c.length] = c.memory[0]  # [S_i, dim], padded positions of the text already zero
    return P
