"""Text conditioning: T5 (through transformers) -> projection -> cross-attention keys/values, cached per prompt.

An empty or missing prompt is audiocraft's null condition: no token, zero memory. CFG pairs every conditional
row with such a null row. A melody LM has no cross-attention: its condition keeps the projected text itself
(`memory`), which becomes part of the prefix fed before the audio (prefix.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from segue.models.lm.model import MusicGenLM


@dataclass(frozen=True)
class Condition:
    """What one row of a stream attends to. mask: [1, S] bool. cross_k/v: [L, 1, H, S, D] for cross-attention LMs;
    memory: [1, S, dim], the projected text with padding zeroed, for melody LMs (the other fields are None)."""

    text: str | None
    cross_k: torch.Tensor | None
    cross_v: torch.Tensor | None
    mask: torch.Tensor
    memory: torch.Tensor | None = None

    @property
    def length(self) -> int:
        return self.mask.shape[1]


class TextEncoder:
    """A T5 encoder and its tokenizer, run in float32 (as audiocraft does, whatever the LM's dtype)."""

    def __init__(self, tokenizer, encoder: torch.nn.Module):
        self.tokenizer = tokenizer
        self.encoder = encoder.float().eval()

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: torch.device) -> "TextEncoder":
        self.encoder.to(device)
        return self

    def token_count(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    @torch.no_grad()
    def encode(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """text -> (states [1, S, text_dim] float32, mask [1, S] bool)."""
        tok = self.tokenizer([text], return_tensors="pt", padding=True)
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        states = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.float(), mask.bool()


class Conditioner:
    """Turns prompts into `Condition`s for one LM, remembering the last `cache_size` prompts."""

    def __init__(self, lm: MusicGenLM, text: TextEncoder | None, cache_size: int = 64):
        self.lm, self.text, self.cache_size = lm, text, cache_size
        self._cache: OrderedDict[str, Condition] = OrderedDict()

    def null(self) -> Condition:
        cfg = self.lm.cfg
        mask = torch.zeros(1, 1, dtype=torch.bool, device=self.lm.device)
        if not cfg.cross_attention:  # one zero vector, as audiocraft's null text
            return Condition(None, None, None, mask, torch.zeros(1, 1, cfg.dim, device=self.lm.device,
                                                                 dtype=self.lm.dtype))
        shape = (cfg.num_layers, 1, cfg.num_heads, 1, cfg.head_dim)
        zeros = torch.zeros(shape, device=self.lm.device, dtype=self.lm.dtype)
        return Condition(None, zeros, zeros, mask)

    @torch.no_grad()
    def __call__(self, text: str | None) -> Condition:
        if not text:
            return self.null()
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        if self.text is None:
            raise ValueError("this model has no text encoder; generate without a text prompt")
        states, mask = self.text.encode(text)
        memory = self.lm.project_text(states.to(self.lm.device), mask.to(self.lm.device))  # [1, S, dim]
        if self.lm.cfg.cross_attention:
            k, v = self.lm.cross_kv(memory)
            cond = Condition(text, k, v, mask.to(self.lm.device))
        else:
            cond = Condition(text, None, None, mask.to(self.lm.device), memory)
        self._cache[text] = cond
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return cond


def stack_rows(conds: list[Condition], null: Condition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Conditional rows then as many null rows (the CFG batch): cross_k/v [L, 2B, H, S, D], mask [2B, S]."""
    rows = list(conds) + [null] * len(conds)
    S = max(c.length for c in rows)

    def pad(x: torch.Tensor, n: int) -> torch.Tensor:
        return torch.nn.functional.pad(x, (0, 0, 0, n))

    k = torch.cat([pad(c.cross_k, S - c.length) for c in rows], 1)
    v = torch.cat([pad(c.cross_v, S - c.length) for c in rows], 1)
    mask = torch.cat([torch.nn.functional.pad(c.mask, (0, S - c.length)) for c in rows], 0)
    return k, v, mask
