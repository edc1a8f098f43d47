"""MusicGen's transformer LM: weights plus pure forward functions that read and write an `LMState`.

Layer (pre-norm, no biases): x += SelfAttn(LN1(x)); x += CrossAttn(LN_cross(x), text); x += FFN(LN2(x)).
Input: the sum of K codebook embeddings (2049 rows each, row 2048 = special token) plus sinusoidal positions.
Output: K heads of `card` logits. Cross-attention keys/values depend only on the conditioning, so they are computed
once per prompt (`cross_kv`) and kept in the state; self-attention keys/values go into the state's preallocated
KV cache at their absolute position.

MusicGen-Melody has no cross-attention: its conditioning (projected chroma, then projected text) is a prefix of
input vectors fed through `forward_embeds` before the audio tokens (see prefix.py), so it lives in the KV cache's
first positions and the audio starts after it.
"""

from __future__ import annotations

import math
from itertools import accumulate
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from segue.models.lm.config import LMConfig
from segue.models.lm.quant import Int8Linear
from segue.models.lm.state import LMState


def sinusoids(positions: int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[positions, dim] table, cos first then sin, frequencies max_period ** (-i / (half - 1)) (audiocraft/HF)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(max_period) / (half - 1)))
    phase = torch.arange(positions, dtype=torch.float32)[:, None] * freqs[None]  # [P, half]
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=1)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    B, T, _ = x.shape
    return x.view(B, T, heads, -1).transpose(1, 2)  # [B, H, T, D]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # [B, T, H*D]


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        d = cfg.dim
        self.norm1 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.wqkv = nn.Linear(d, 3 * d, bias=False)  # packed q, k, v (audiocraft's in_proj_weight)
        self.wo = nn.Linear(d, d, bias=False)
        if cfg.cross_attention:  # melody LMs have none: no weights are allocated for it
            self.norm_cross = nn.LayerNorm(d, eps=cfg.norm_eps)
            self.cq = nn.Linear(d, d, bias=False)
            self.ckv = nn.Linear(d, 2 * d, bias=False)  # applied once per conditioning, never per step
            self.co = nn.Linear(d, d, bias=False)
        self.norm2 = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(d, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, d, bias=False)


def _mm(h: torch.Tensor, w) -> torch.Tensor:
    """h [M, in] @ w: a float weight view [in, out], or an `Int8Linear` (int8 LM on CPU)."""
    return torch.mm(h, w) if isinstance(w, torch.Tensor) else w(h)


def _addmm(x: torch.Tensor, h: torch.Tensor, w) -> torch.Tensor:
    """x + h @ w (one fused `addmm` for a float weight)."""
    return torch.addmm(x, h, w) if isinstance(w, torch.Tensor) else x + w(h)


class LayerViews(NamedTuple):
    """One layer's weights as the eager step uses them: LayerNorm affine pairs and projections transposed to
    [in, out] (views, no copies) for `addmm`, or `Int8Linear`s in an int8 LM (see `_mm`). The cross-attention ones
    are None in a melody LM."""

    n1_w: torch.Tensor
    n1_b: torch.Tensor
    wqkv_t: torch.Tensor | Int8Linear
    wo_t: torch.Tensor | Int8Linear
    nc_w: torch.Tensor | None
    nc_b: torch.Tensor | None
    cq_t: torch.Tensor | Int8Linear | None
    co_t: torch.Tensor | Int8Linear | None
    n2_w: torch.Tensor
    n2_b: torch.Tensor
    fc1_t: torch.Tensor | Int8Linear
    fc2_t: torch.Tensor | Int8Linear


class MusicGenLM(nn.Module):
    """Weights of the LM. Holds no per-stream data: every forward takes the `LMState` it reads and updates."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.cfg = cfg
        K, V, d = cfg.n_q, cfg.card, cfg.dim
        self.emb = nn.Parameter(torch.zeros(K, V + 1, d), requires_grad=False)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))
        self.out_norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.heads = nn.Parameter(torch.zeros(K, V, d), requires_grad=False)
        self.cond_proj = nn.Linear(cfg.text_dim, d) if cfg.cond_proj else None
        # Melody: one-hot chroma frames -> input vectors (transformers skips it when n_chroma == dim).
        self.chroma_proj = nn.Linear(cfg.n_chroma, d) if cfg.takes_melody and cfg.n_chroma != d else None
        self.register_buffer("positions", sinusoids(cfg.max_positions, d, cfg.max_period), persistent=False)
        self.register_buffer("emb_offsets", torch.arange(K) * (V + 1), persistent=False)
        self.requires_grad_(False)  # inference weights: no autograd graph, ever
        self._views: list[LayerViews] | None = None
        # An int8 LM (CPU): per layer, its step projections quantized (see `quantize_int8`); the float weights stay
        # for what runs once per take (the cross-attention keys and values) and for the state dict.
        self.int8: list[dict[str, Int8Linear]] | None = None
        self.int8_heads: Int8Linear | None = None

    # The eager step touches ~10 weights per layer; reading them through nn.Module attribute lookups and making
    # fresh `.t()` views each time costs ~2 ms per small-model step on CPU. They are gathered once, and dropped
    # whenever the module's tensors are moved or reassigned.
    def _apply(self, fn, recurse=True):
        self._views = None
        return super()._apply(fn, recurse)

    def load_state_dict(self, *args, **kwargs):
        self._views = None
        return super().load_state_dict(*args, **kwargs)

    def layer_views(self) -> list["LayerViews"]:
        if self._views is None:
            cross = self.cfg.cross_attention
            q = self.int8 or [{} for _ in self.layers]
            self._views = [LayerViews(
                l.norm1.weight, l.norm1.bias, qi.get("wqkv", l.wqkv.weight.t()), qi.get("wo", l.wo.weight.t()),
                l.norm_cross.weight if cross else None, l.norm_cross.bias if cross else None,
                qi.get("cq", l.cq.weight.t()) if cross else None, qi.get("co", l.co.weight.t()) if cross else None,
                l.norm2.weight, l.norm2.bias, qi.get("fc1", l.fc1.weight.t()), qi.get("fc2", l.fc2.weight.t()))
                for l, qi in zip(self.layers, q)]
        return self._views

    def quantize_int8(self) -> "MusicGenLM":
        """Quantize the projections a step runs (attention in/out, cross-attention query/out, FFN, output heads)
        to int8 with per-output-channel scales, from this LM's float32 weights (see quant.py). CPU only; the
        step then runs them through fbgemm. Returns self."""
        if self.device.type != "cpu" or self.dtype != torch.float32:
            raise ValueError(f"int8 quantizes a float32 LM on the CPU (this one is {self.dtype} on {self.device})")
        names = ("wqkv", "wo", "fc1", "fc2") + (("cq", "co") if self.cfg.cross_attention else ())
        self.int8 = [{n: Int8Linear(getattr(l, n).weight) for n in names} for l in self.layers]
        self.int8_heads = Int8Linear(self.heads.view(self.cfg.n_q * self.cfg.card, -1))
        self._views = None
        return self

    def drop_int8(self) -> "MusicGenLM":
        """Back to the float weights alone (see `quant.int8_is_faster`). Returns self."""
        self.int8 = self.int8_heads = None
        self._views = None
        return self

    @property
    def precision(self) -> str:
        """What the step's weights are: "int8", or the float dtype's name ("float32", "bfloat16", ...)."""
        return "int8" if self.int8 is not None else str(self.dtype).removeprefix("torch.")

    @classmethod
    def from_state(cls, cfg: LMConfig, state: dict[str, torch.Tensor]) -> "MusicGenLM":
        """Build directly from a complete state dict, without allocating random weights first (no 2x peak)."""
        with torch.device("meta"):
            lm = cls(cfg)
        lm.load_state_dict(state, assign=True)  # keeps requires_grad=False from __init__
        lm.positions = sinusoids(cfg.max_positions, cfg.dim, cfg.max_period).to(lm.heads.device)
        lm.emb_offsets = torch.arange(cfg.n_q, device=lm.heads.device) * (cfg.card + 1)
        return lm

    @property
    def device(self) -> torch.device:
        return self.heads.device

    @property
    def dtype(self) -> torch.dtype:
        return self.heads.dtype

    # -- conditioning ---------------------------------------------------------------------------------------------
    def project_text(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Text-encoder states [B, S, text_dim] -> cross-attention memory [B, S, dim]; padded tokens zeroed."""
        x = states.to(self.dtype)
        if self.cond_proj is not None:
            x = self.cond_proj(x)
        return x * mask[..., None].to(x.dtype)

    def project_chroma(self, chroma: torch.Tensor) -> torch.Tensor:
        """Chroma frames [B, T, n_chroma] -> prefix vectors [B, T, dim] (melody LMs)."""
        x = chroma.to(self.dtype)
        return self.chroma_proj(x) if self.chroma_proj is not None else x

    def cross_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory [B, S, dim] -> cross-attention keys and values, each [L, B, H, S, D]."""
        H = self.cfg.num_heads
        ks, vs = [], []
        for layer in self.layers:
            k, v = layer.ckv(memory).chunk(2, dim=-1)
            ks.append(_split_heads(k, H))
            vs.append(_split_heads(v, H))
        return torch.stack(ks), torch.stack(vs)

    def fold_cross(self, cross_k: torch.Tensor, cross_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross keys/values [L, B, H, S, D] -> folded keys and values [L, B, H, S, dim].

        With the memory fixed for a whole take, cross-attention is linear in it:
            scores_h = (h Wq_h^T) K_h^T / sqrt(D) = h (K_h Wq_h / sqrt(D))^T
            out      = sum_h P_h V_h Wo_h^T       = sum_h P_h (V_h Wo_h^T)
        so Wq and Wo are applied to the S memory rows once per prompt instead of to the query at every step. A
        step then reads 2·H·S·dim numbers instead of the 2·dim² of `cq` and `co` (8x less for a 12-token prompt).
        """
        H, D, d = self.cfg.num_heads, self.cfg.head_dim, self.cfg.dim
        fa, fb = [], []
        for i, layer in enumerate(self.layers):
            wq = layer.cq.weight.view(H, D, d)  # rows h*D .. (h+1)*D belong to head h
            wo = layer.co.weight.view(d, H, D)  # columns likewise
            fa.append(torch.einsum("bhsk,hkd->bhsd", cross_k[i], wq) * D**-0.5)
            fb.append(torch.einsum("bhsk,dhk->bhsd", cross_v[i], wo))
        return torch.stack(fa), torch.stack(fb)

    def attach_condition(self, state: LMState, cross_k: torch.Tensor, cross_v: torch.Tensor, mask: torch.Tensor,
                         cond_rows: int, fold: bool | None = None) -> None:
        """Give `state` its conditioning: every row's cross K/V (for the static step) and the folded form for the
        conditional rows (the null rows' cross-attention is exactly zero) when `fold`, or by default when it reads
        fewer bytes per step (fewer than head_dim text tokens)."""
        state.set_condition(cross_k, cross_v, mask)
        S = cross_k.shape[3]
        real = mask[:cond_rows].any()
        if not bool(real):
            state.set_fold(None, None, None, 0)  # no text anywhere: cross-attention contributes nothing
        elif fold or (fold is None and S * self.cfg.num_heads < self.cfg.dim):
            fa, fb = self.fold_cross(state.cross_k[:, :cond_rows, :, :S], state.cross_v[:, :cond_rows, :, :S])
            state.set_fold(fa, fb, state.cross_mask[:cond_rows, :, :, :S], cond_rows)

    # -- forward --------------------------------------------------------------------------------------------------
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [R, K, T] (special = card) -> summed codebook embeddings [R, T, dim]."""
        flat = self.emb.view(-1, self.cfg.dim)
        idx = tokens + self.emb_offsets[None, :, None]  # [R, K, T]
        return flat[idx].sum(1)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        R, T, _ = x.shape
        K, V = self.cfg.n_q, self.cfg.card
        # One GEMM over the K heads stacked as [K * card, dim] (a view, never copied).
        if self.int8_heads is not None:
            logits = self.int8_heads(self.out_norm(x).reshape(R * T, -1)).view(R, T, K * V)  # [R, T, K * card]
        else:
            logits = F.linear(self.out_norm(x), self.heads.view(K * V, -1))  # [R, T, K * card]
        return logits.view(R, T, K, V).transpose(1, 2).float()  # [R, K, T, card]

    def forward(self, tokens: torch.Tensor, state: LMState, last_only: bool = True) -> torch.Tensor:
        """Feed `tokens [R, K, T]` at positions state.pos .. state.pos + T - 1 (eager: prefill or one step).

        Writes their keys/values into the cache, advances `state.pos`, returns logits [R, K, T or 1, card].
        """
        return self.forward_embeds(self.embed(tokens), state, last_only)

    def forward_embeds(self, x: torch.Tensor, state: LMState, last_only: bool = True) -> torch.Tensor:
        """`forward` from input vectors x [R, T, dim] (token embeddings, or a melody LM's conditioning prefix).

        The residual stream is kept 2-D ([R*T, dim]) so that every projection that feeds it is one fused
        `addmm` (GEMM + residual add): at a step the GEMMs are bound by reading the weights, and on CPU the
        rest is per-op overhead worth removing.
        """
        R, T, _ = x.shape
        start, end = state.pos, state.pos + T
        if end > state.capacity:
            raise RuntimeError(f"KV cache full: {end} positions > {state.capacity}; re-prompt before this point")
        H, D, d, eps = self.cfg.num_heads, self.cfg.head_dim, self.cfg.dim, self.cfg.norm_eps
        cross = self.cfg.cross_attention
        x = (x.to(self.dtype) + self.positions[start:end].to(self.dtype)).reshape(R * T, d)  # [R*T, d]
        if T == 1:
            mask, causal = None, False
        elif start == 0:
            mask, causal = None, True
        else:  # a chunk of prompt after earlier positions: query i sees keys 0 .. start + i
            q_pos = torch.arange(start, end, device=x.device)
            mask, causal = torch.arange(end, device=x.device)[None, :] <= q_pos[:, None], False
        for i, w in enumerate(self.layer_views()):
            h = F.layer_norm(x, (d,), w.n1_w, w.n1_b, eps)
            q, k, v = _mm(h, w.wqkv_t).view(R, T, 3, H, D).permute(2, 0, 3, 1, 4)  # [R, H, T, D]
            state.k[i, :, :, start:end] = k
            state.v[i, :, :, start:end] = v
            a = F.scaled_dot_product_attention(q, state.k[i, :, :, :end], state.v[i, :, :, :end],
                                               attn_mask=mask, is_causal=causal)  # [R, H, T, D]
            x = _addmm(x, a.transpose(1, 2).reshape(R * T, d), w.wo_t)
            if cross:
                h = F.layer_norm(x, (d,), w.nc_w, w.nc_b, eps)
                self._add_cross(h, x, i, w, state, R, T)
            h = F.layer_norm(x, (d,), w.n2_w, w.n2_b, eps)
            x = _addmm(x, F.gelu(_mm(h, w.fc1_t)), w.fc2_t)
        state.advance(T)
        x = x.view(R, T, d)
        return self._logits(x[:, -1:] if last_only else x)

    def forward_many(self, tokens: list[torch.Tensor], states: list[LMState]) -> list[torch.Tensor]:
        """One position for each of several independent streams: tokens[i] [R_i, K, 1] at states[i].pos.

        Returns logits [R_i, K, 1, card] per stream and advances every state. The weight GEMMs (what a step costs:
        reading the weights) run once over all streams' rows; attention stays per stream, over its own cache,
        position and conditioning.

        What each stream gets is what `forward` on it alone gives up to float rounding, not bit for bit: a BLAS
        picks its kernel, and so the order of each row's sums, by the GEMM's row count (MKL on an AMD EPYC rounds a
        2-row GEMM unlike the same rows inside a 4-, 8- or 12-row one; cuBLAS chooses by shape too), so a stream's
        rows depend on the other streams' presence in the last bits. In float32 the logits stay within 1e-4 of the
        stream's own step (measured on that EPYC: at most 2.4e-6 for the demo model over 400 steps, 5.6e-6 at
        musicgen-small's shape). Keys and values written to the cache carry the same rounding. A single state is
        `forward` itself, bit for bit.
        """
        if len(tokens) != len(states):
            raise ValueError(f"{len(tokens)} token tensors for {len(states)} states; pass one per state")
        if len({id(s) for s in states}) != len(states):
            raise ValueError("the same state is listed twice; step each stream once per call")
        for t, s in zip(tokens, states):
            if t.dim() != 3 or t.shape[1:] != (self.cfg.n_q, 1) or t.shape[0] != s.rows:
                raise ValueError(f"tokens must be [{s.rows}, {self.cfg.n_q}, 1] for a state of {s.rows} rows, "
                                 f"got {list(t.shape)}")
            if s.pos + 1 > s.capacity:
                raise RuntimeError(f"KV cache full: {s.pos + 1} positions > {s.capacity}; re-prompt before this point")
        if len(states) <= 1:
            return [self.forward(t, s) for t, s in zip(tokens, states)]
        H, D, d, eps = self.cfg.num_heads, self.cfg.head_dim, self.cfg.dim, self.cfg.norm_eps
        rows = [s.rows for s in states]
        N = sum(rows)
        ends = list(accumulate(rows))
        spans = list(zip([0] + ends[:-1], ends))  # each stream's rows in the stacked batch
        # Each stream's position from its device counter: no host-to-device copy, so no synchronisation.
        pos = torch.cat([s.pos_t.expand(r) for s, r in zip(states, rows)])  # [N]
        x = self.embed(torch.cat(tokens)).view(N, d) + self.positions.index_select(0, pos).to(self.dtype)  # [N, d]
        for i, w in enumerate(self.layer_views()):
            h = F.layer_norm(x, (d,), w.n1_w, w.n1_b, eps)
            qkv = _mm(h, w.wqkv_t)  # [N, 3d]
            att = []
            for (a, b), s in zip(spans, states):
                q, k, v = qkv[a:b].view(b - a, 1, 3, H, D).permute(2, 0, 3, 1, 4)  # [R, H, 1, D]
                p = s.pos
                s.k[i, :, :, p : p + 1] = k
                s.v[i, :, :, p : p + 1] = v
                o = F.scaled_dot_product_attention(q, s.k[i, :, :, : p + 1], s.v[i, :, :, : p + 1])  # [R, H, 1, D]
                att.append(o.reshape(b - a, d))  # one position: heads are already adjacent
            x = _addmm(x, torch.cat(att), w.wo_t)
            if self.cfg.cross_attention:  # every stream of one LM has the same layers
                h = F.layer_norm(x, (d,), w.nc_w, w.nc_b, eps)
                for (a, b), s in zip(spans, states):  # row slices of x are views: the cross-attention adds in place
                    self._add_cross(h[a:b], x[a:b], i, w, s, b - a, 1)
            h = F.layer_norm(x, (d,), w.n2_w, w.n2_b, eps)
            x = _addmm(x, F.gelu(_mm(h, w.fc1_t)), w.fc2_t)
        for s in states:
            s.advance(1)
        return list(self._logits(x.view(N, 1, d)).split(rows))  # [R_i, K, 1, card] each

    def _add_cross(self, h: torch.Tensor, x: torch.Tensor, i: int, w: LayerViews, state: LMState, R: int,
                   T: int) -> None:
        """Add layer i's cross-attention for `state` into x [R*T, d] in place (x may be a view of more rows)."""
        if state.fold_rows is not None:
            self._folded_cross(h, x, i, state, T)
        else:
            self._cross(h, x, i, w, state, R, T)

    def _cross(self, h: torch.Tensor, x: torch.Tensor, i: int, w: LayerViews, state: LMState, R: int,
               T: int) -> None:
        """Cross-attention as published: query projection, attention over the cached text keys/values."""
        H, D, d = self.cfg.num_heads, self.cfg.head_dim, self.cfg.dim
        S = state.cross_len
        q = _mm(h, w.cq_t).view(R, T, H, D).transpose(1, 2)  # [R, H, T, D]
        mask = None if state.cross_full else state.cross_mask[..., :S]
        a = F.scaled_dot_product_attention(q, state.cross_k[i, :, :, :S], state.cross_v[i, :, :, :S], attn_mask=mask)
        a = a.transpose(1, 2).reshape(R * T, d)
        if isinstance(w.co_t, torch.Tensor):
            x.addmm_(a, w.co_t)
        else:
            x.add_(w.co_t(a))  # x may be a view of more rows: added in place

    @staticmethod
    def _folded_cross(h: torch.Tensor, x: torch.Tensor, i: int, state: LMState, T: int) -> None:
        """Cross-attention through the folded memory (see `fold_cross`), added into the conditional rows of x."""
        n = state.fold_rows
        if n == 0:
            return
        fa, fb = state.fold_a[i], state.fold_b[i]  # [n, H, S, d] each
        _, H, S, d = fa.shape
        # GEMMs over [H*S, d] views: nothing is copied (einsum would copy the folded tensors every step). One
        # conditional row (the usual stream) takes plain 2-D GEMMs, several take a batched one (bmm with a batch
        # of one runs ~50 us slower per call on CPU).
        if n == 1:
            scores = torch.mm(h[:T], fa.view(H * S, d).t()).view(1, T, H, S)
        else:
            scores = torch.bmm(h[: n * T].view(n, T, d), fa.view(n, H * S, d).transpose(1, 2)).view(n, T, H, S)
        if state.fold_bias is not None:
            scores = scores + state.fold_bias.view(n, 1, 1, S)
        p = torch.softmax(scores, dim=-1).view(n, T, H * S)
        # The null rows' cross-attention is exactly zero: they are left as they are.
        if n == 1:
            x[:T].addmm_(p[0], fb.view(H * S, d))
        else:
            x[: n * T].view(n, T, d).baddbmm_(p, fb.view(n, H * S, d))

    def step_static(self, tokens: torch.Tensor, state: LMState) -> torch.Tensor:
        """One position with every shape fixed (for CUDA-graph capture): tokens [R, K, 1] -> logits [R, K, card].

        The position is read from the device tensor `state.pos_t`; attention spans the whole cache with a mask, and
        the cross-attention spans the padded text with its mask, so neither the prompt nor the position changes a
        shape. A melody LM's prefix is part of the cache, covered by the same mask. Advances `state.pos_t` on the device; the caller keeps the host counter.
        """
        H, d = self.cfg.num_heads, self.cfg.dim
        pos = state.pos_t  # [1]
        x = self.embed(tokens) + self.positions.index_select(0, pos).to(self.dtype)  # [R, 1, d]
        seen = (state.arange <= pos).view(1, 1, 1, -1)  # [1, 1, 1, C]
        cross_mask = state.cross_mask  # [R, 1, 1, S_max]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.wqkv(layer.norm1(x)).split(d, dim=-1)
            q, k, v = _split_heads(q, H), _split_heads(k, H), _split_heads(v, H)  # [R, H, 1, D]
            state.k[i].index_copy_(2, pos, k)
            state.v[i].index_copy_(2, pos, v)
            a = F.scaled_dot_product_attention(q, state.k[i], state.v[i], attn_mask=seen)
            x = x + layer.wo(_merge_heads(a))
            if self.cfg.cross_attention:
                q = _split_heads(layer.cq(layer.norm_cross(x)), H)
                a = F.scaled_dot_product_attention(q, state.cross_k[i], state.cross_v[i], attn_mask=cross_mask)
                x = x + layer.co(_merge_heads(a))
            x = x + layer.fc2(F.gelu(layer.fc1(layer.norm2(x))))
        state.pos_t.add_(1)
        return self._logits(x)[:, :, 0]
