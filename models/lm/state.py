"""Per-stream LM state: the KV cache, the conditioning's cross-attention keys/values, and positions.

Everything is allocated once, at the stream's full context, and updated in place: restoring a snapshot copies
back into the same tensors, so a CUDA graph captured against them stays valid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segue.models.lm.config import LMConfig


@dataclass
class LMState:
    k: torch.Tensor  # [L, R, H, C, D] self-attention keys, R = rows (conditional rows, then null rows for CFG)
    v: torch.Tensor  # [L, R, H, C, D]
    cross_k: torch.Tensor  # [L, R, H, S_max, D]
    cross_v: torch.Tensor  # [L, R, H, S_max, D]
    cross_mask: torch.Tensor  # [R, 1, 1, S_max] bool, True = attend
    arange: torch.Tensor  # [C] positions, for the static step's mask
    pos_t: torch.Tensor  # [1] int64 device copy of `pos` (read by the static step, no host sync)
    pos: int = 0  # positions filled so far (host)
    cross_len: int = 0  # text tokens in use (host), <= S_max
    cross_full: bool = True  # every row attends to all `cross_len` tokens (no mask needed)
    # Folded cross-attention of the conditional rows (see MusicGenLM.fold_cross), used by the eager forward.
    # fold_rows None: not folded; 0: no text at all, cross-attention contributes nothing.
    fold_a: torch.Tensor | None = None  # [L, B, H, S, dim]
    fold_b: torch.Tensor | None = None  # [L, B, H, S, dim]
    fold_bias: torch.Tensor | None = None  # [B, 1, 1, S] additive mask (0 / -inf), None when no padding
    fold_rows: int | None = None

    @classmethod
    def allocate(cls, cfg: LMConfig, rows: int, context: int, max_text: int, device: torch.device,
                 dtype: torch.dtype) -> "LMState":
        L, H, D = cfg.num_layers, cfg.num_heads, cfg.head_dim
        kv = (L, rows, H, context, D)
        cross = (L, rows, H, max_text, D)
        return cls(
            k=torch.zeros(kv, device=device, dtype=dtype),
            v=torch.zeros(kv, device=device, dtype=dtype),
            cross_k=torch.zeros(cross, device=device, dtype=dtype),
            cross_v=torch.zeros(cross, device=device, dtype=dtype),
            cross_mask=torch.ones(rows, 1, 1, max_text, device=device, dtype=torch.bool),
            arange=torch.arange(context, device=device),
            pos_t=torch.zeros(1, device=device, dtype=torch.long),
        )

    @property
    def capacity(self) -> int:
        return self.k.shape[3]

    @property
    def max_text(self) -> int:
        return self.cross_k.shape[3]

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def advance(self, n: int) -> None:
        self.pos += n
        self.pos_t.fill_(self.pos)

    def reset(self) -> None:
        """Forget every position (the cache contents are simply overwritten later)."""
        self.pos = 0
        self.pos_t.zero_()

    def set_condition(self, cross_k: torch.Tensor, cross_v: torch.Tensor, mask: torch.Tensor) -> None:
        """Write conditioning for all rows: cross_k/v [L, R, H, S, D], mask [R, S] bool (True = real token).

        Rows without any real token (a null condition) get zero keys/values and attend to all of them, which makes
        their cross-attention exactly zero: the same result as audiocraft's all-zero null condition.
        """
        S = cross_k.shape[3]
        if S > self.max_text:
            raise ValueError(f"the text is {S} tokens; this stream holds at most {self.max_text}")
        empty = ~mask.any(dim=1)  # [R]
        mask = mask | empty[:, None]
        self.cross_k.zero_()
        self.cross_v.zero_()
        self.cross_k[:, :, :, :S] = cross_k * (~empty).view(1, -1, 1, 1, 1).to(cross_k.dtype)
        self.cross_v[:, :, :, :S] = cross_v * (~empty).view(1, -1, 1, 1, 1).to(cross_v.dtype)
        self.cross_mask.zero_()
        self.cross_mask[:, 0, 0, :S] = mask
        self.cross_len = S
        self.cross_full = bool(mask.all())
        self.set_fold(None, None, None, None)

    def set_fold(self, fold_a: torch.Tensor | None, fold_b: torch.Tensor | None, mask: torch.Tensor | None,
                 rows: int | None) -> None:
        self.fold_a, self.fold_b, self.fold_rows = fold_a, fold_b, rows
        self.fold_bias = None
        if mask is not None and not bool(mask.all()):
            self.fold_bias = torch.zeros(mask.shape, device=mask.device, dtype=fold_a.dtype).masked_fill(
                ~mask, float("-inf"))

    def snapshot(self) -> "LMStateSnapshot":
        """Copy of the filled part of the cache plus the conditioning; cheap when few positions are used."""
        p = self.pos
        return LMStateSnapshot(self.k[:, :, :, :p].clone(), self.v[:, :, :, :p].clone(), self.cross_k.clone(),
                               self.cross_v.clone(), self.cross_mask.clone(), p, self.cross_len, self.cross_full,
                               (self.fold_a, self.fold_b, self.fold_bias, self.fold_rows))

    def restore(self, snap: "LMStateSnapshot") -> None:
        """Copy a snapshot back into these very tensors (addresses unchanged)."""
        p = snap.pos
        self.k[:, :, :, :p].copy_(snap.k)
        self.v[:, :, :, :p].copy_(snap.v)
        self.cross_k.copy_(snap.cross_k)
        self.cross_v.copy_(snap.cross_v)
        self.cross_mask.copy_(snap.cross_mask)
        self.pos, self.cross_len, self.cross_full = p, snap.cross_len, snap.cross_full
        # Folded tensors are never written after creation, so the snapshot shares them instead of copying.
        self.fold_a, self.fold_b, self.fold_bias, self.fold_rows = snap.fold
        self.pos_t.fill_(p)


@dataclass(frozen=True)
class LMStateSnapshot:
    k: torch.Tensor
    v: torch.Tensor
    cross_k: torch.Tensor
    cross_v: torch.Tensor
    cross_mask: torch.Tensor
    pos: int
    cross_len: int
    cross_full: bool
    fold: tuple
