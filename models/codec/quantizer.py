"""Residual vector quantizer: K codebooks, each coding what the previous ones left over."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ResidualVQ(nn.Module):
    """`codebooks [K, bins, D]`; only the embeddings are kept (the EMA training buffers are dropped at load)."""

    def __init__(self, n_q: int, bins: int, dim: int):
        super().__init__()
        self.n_q, self.bins, self.dim = n_q, bins, dim
        self.codebooks = nn.Parameter(torch.zeros(n_q, bins, dim), requires_grad=False)

    def encode(self, z: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """z [B, D, T] -> codes [B, K, T] (nearest neighbour in squared Euclidean distance, residual after each)."""
        n_q = self.n_q if n_q is None else n_q
        B, D, T = z.shape
        residual = z
        codes = []
        for k in range(n_q):
            embed = self.codebooks[k]  # [bins, D]
            x = residual.permute(0, 2, 1).reshape(-1, D)  # [B*T, D]
            # Same expression (and op order) as EnCodec so that the arg-max picks the same entry.
            dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.t() + embed.t().pow(2).sum(0, keepdim=True))
            idx = dist.max(dim=-1).indices.view(B, T)  # [B, T]
            codes.append(idx)
            residual = residual - F.embedding(idx, embed).permute(0, 2, 1)
        return torch.stack(codes, 1)  # [B, K, T]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, T] with k <= K -> z [B, D, T]: sum of the first k codebooks' entries."""
        z = torch.zeros((), device=codes.device, dtype=self.codebooks.dtype)
        for k in range(codes.shape[1]):
            z = z + F.embedding(codes[:, k], self.codebooks[k])  # [B, T, D]
        return z.permute(0, 2, 1)
