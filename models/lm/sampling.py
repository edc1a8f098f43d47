"""Drawing the next tokens on the device, without a host synchronisation.

A categorical sample is argmax(p / q) with q ~ Exponential(1) (the Gumbel-max trick in another guise): one
elementwise op and an argmax, no `torch.multinomial` and no `.item()`.

Each token of the codebook has its own q, drawn for all of them whatever is filtered (top-k, top-p). Drawn per rank
instead, two tokens whose probabilities differ by a rounding error would trade their q when they trade places, and
a take would depend on the last bit of its logits (batched against alone, one BLAS against another). Per token, only
the race itself (two tokens within rounding of p / q) or the filter's edge can turn on it.
"""

from __future__ import annotations

import torch


def cfg_combine(logits: torch.Tensor, coef: torch.Tensor | float) -> torch.Tensor:
    """logits [2B, ...] (conditional rows first, then null rows) -> uncond + coef * (cond - uncond), [B, ...]."""
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * coef


def _noise(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """q ~ Exp(1), one per token: [..., V] like `probs`."""
    return torch.empty_like(probs).exponential_(1, generator=generator)


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor | float,
    top_k: int,
    top_p: torch.Tensor | float,
    use_top_p: bool,
    greedy: bool,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [..., V] float32 -> token ids [...] (int64), following audiocraft's rules.

    Greedy -> argmax. Otherwise softmax(logits / temperature), then nucleus (`use_top_p`) or top-k filtering with
    renormalisation, then one categorical draw. `top_k` and the two flags fix the shapes (a captured graph is
    specific to them); `temperature` and `top_p` may be device scalars changed between steps.
    """
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)  # [..., V]
    q = _noise(probs, generator)  # [..., V]
    # Renormalising what the filter keeps scales every p / q alike: the argmax is the same without it.
    if use_top_p:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: drop an entry once the mass before it exceeds top_p.
        drop = (sorted_probs.cumsum(dim=-1) - sorted_probs) > top_p
        race = sorted_probs.masked_fill(drop, 0.0) / q.gather(-1, order)
        return order.gather(-1, torch.argmax(race, dim=-1, keepdim=True)).squeeze(-1)
    if 0 < top_k < probs.shape[-1]:
        top_probs, top_idx = probs.topk(top_k, dim=-1)  # [..., k]
        race = top_probs / q.gather(-1, top_idx)
        return top_idx.gather(-1, torch.argmax(race, dim=-1, keepdim=True)).squeeze(-1)
    return torch.argmax(probs / q, dim=-1)
