"""One generation stream of the LM: KV cache, delay-pattern bookkeeping, sampling settings and RNG.

`LMStream` turns the LM (weights, shared) into a sequence of code frames for B parallel items. Each `step()` feeds
the latest column, draws the next one on the device (CFG batch = B conditional + B null rows), writes it into a
frame ring, and never synchronises with the host. Past the trained context it re-prompts itself from the most
recent frames: a second cache is prefilled a chunk per step in the background and takes over at a column boundary,
so the token stream never pauses.

A melody LM's conditioning is a prefix of input vectors (prefix.py) that fills the first positions of every context:
the caches have room for the longest one, it is prefilled with the prompt at `start`, and a re-prompt feeds it
into the new context chunk by chunk before the columns.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from segue.models.lm.conditioning import Condition, Conditioner, stack_rows
from segue.models.lm.config import MAX_TEXT_TOKENS, LMConfig, ReplanConfig, SamplingParams
from segue.models.lm.cuda_graph import CUDAGraphed, graphs_enabled
from segue.models.lm.model import MusicGenLM
from segue.models.lm.pattern import columns_from_frames
from segue.models.lm.prefix import chroma_offset, prefix_length, write_prefix
from segue.models.lm.sampling import cfg_combine, sample
from segue.models.lm.state import LMState, LMStateSnapshot


def replan_points(cfg: LMConfig, replan: ReplanConfig, prefix: int | None = None) -> tuple[int, int]:
    """(frames kept when re-prompting, column offset at which the background re-prompt starts).

    prefix: positions of conditioning prefix the new context must be fed first (default: a melody LM's largest).
    """
    keep = min(int(replan.keep_seconds * cfg.frame_rate), cfg.context // 2)
    prefix = cfg.max_prefix if prefix is None else prefix
    # The prefix takes whole steps (a chunk each) during which the take moves on by a column each.
    prefix_steps = math.ceil(prefix / replan.chunk)
    catchup_steps = prefix_steps + math.ceil((keep + 2 + prefix_steps) / max(1, replan.chunk - 1)) + 2
    # Last position the active cache may reach before the re-prompted one must have taken over.
    replan_at = cfg.context - 1 - catchup_steps
    if replan_at <= keep:
        raise ValueError("re-prompt window too large for this model's context; lower keep_seconds")
    return keep, replan_at


def max_prompt_frames(cfg: LMConfig, replan: ReplanConfig = ReplanConfig()) -> int:
    """Longest audio prompt a stream accepts: it must be prefilled before re-prompting could start."""
    return replan_points(cfg, replan)[1] - cfg.max_delay - 1


@dataclass
class _Catchup:
    state: LMState
    base: int  # absolute frame where the new context starts


@dataclass(frozen=True)
class StreamSnapshot:
    state: LMStateSnapshot
    col: torch.Tensor
    ring: torch.Tensor
    rng: torch.Tensor
    column: int
    base: int
    n_prompt: int
    total: int | None
    sampling: SamplingParams
    conditions: tuple  # the prompts' conditions (immutable, shared): a later re-prompt needs them
    chroma: torch.Tensor | None  # melody [B, T, n_chroma] (never written, shared), for later re-prompts
    prefix: int


class LMStream:
    """Sampling loop state for B items of one LM.

    Args:
        lm: the weights (never modified).
        conditioner: turns prompts into cross-attention conditions (cached per prompt).
        batch: items generated in lock-step.
        sampling: temperature / top-k / top-p / CFG coefficient / seed.
        max_text: text tokens a prompt may have (fixes the cross-attention shape, or a melody LM's prefix room).
        replan: how to continue past the trained context.
        cuda_graphs: capture the step in a CUDA graph (None = on for CUDA devices unless SEGUE_CUDA_GRAPHS=0).
    """

    def __init__(self, lm: MusicGenLM, conditioner: Conditioner, batch: int = 1,
                 sampling: SamplingParams = SamplingParams(), max_text: int = MAX_TEXT_TOKENS,
                 replan: ReplanConfig = ReplanConfig(), cuda_graphs: bool | None = None):
        cfg = lm.cfg
        self.lm, self.cfg, self.conditioner, self.B = lm, cfg, conditioner, batch
        self.replan = replan
        dev, dt = lm.device, lm.dtype
        self.device = dev
        self.rows = 2 * batch
        self.context = cfg.context
        melody = cfg.takes_melody
        self.prefix_cap = cfg.chroma_length + max_text if melody else 0
        if self.prefix_cap + self.context > lm.positions.shape[0]:
            raise ValueError(f"max_text {max_text} is more than the {MAX_TEXT_TOKENS} text tokens this LM's "
                             "positions cover; lower it")
        self.keep, self.replan_at = replan_points(cfg, replan, self.prefix_cap)
        self.states = [LMState.allocate(cfg, self.rows, self.prefix_cap + self.context, 0 if melody else max_text,
                                        dev, dt)]
        # Melody: every row's conditioning prefix [2B, P, dim], rewritten in place for each context.
        self.prefix_buf = torch.zeros(self.rows, self.prefix_cap, cfg.dim, device=dev, dtype=dt) if melody else None
        self.prefix = 0  # positions the prefix takes at the head of every context (0 without melody)
        self.chroma: torch.Tensor | None = None
        self.ring_size = 2 * self.context
        K = cfg.n_q
        self.ring = torch.full((batch, K, self.ring_size), cfg.special, device=dev, dtype=torch.long)  # [B, K, F]
        self.col = torch.full((batch, K), cfg.special, device=dev, dtype=torch.long)  # latest column [B, K]
        self.inp = torch.full((self.rows, K, 1), cfg.special, device=dev, dtype=torch.long)  # CFG input [2B, K, 1]
        self.delays_t = torch.tensor(cfg.delays, device=dev)
        self.col_t = torch.zeros(1, device=dev, dtype=torch.long)  # device copy of the column being produced
        self.generator = torch.Generator(device=dev)
        self.use_graphs = graphs_enabled(dev, cuda_graphs)
        self._graphs: dict[tuple, CUDAGraphed] = {}
        self.temperature_t = torch.zeros((), device=dev)
        self.top_p_t = torch.zeros((), device=dev)
        self.cfg_t = torch.zeros((), device=dev)
        self.seed: int | None = None
        self.set_sampling(sampling)
        self.active = self.states[0]
        self.catchup: _Catchup | None = None
        self.conditions: list[Condition] = []
        self.column = -1  # index of the latest column (absolute); -1 = not started
        self.base = 0  # absolute frame at which the active cache's context starts
        self.n_prompt = 0
        self.total: int | None = None

    # -- settings -------------------------------------------------------------------------------------------------
    def set_sampling(self, sampling: SamplingParams) -> None:
        """Change sampling between steps. Temperature, top-p and CFG are device scalars (no recapture); a new
        top-k or mode selects another captured graph. The RNG is reseeded only when a different seed is given."""
        self.sampling = sampling
        self.temperature_t.fill_(max(sampling.temperature, 1e-6))
        self.top_p_t.fill_(sampling.top_p)
        self.cfg_t.fill_(sampling.cfg_coef)
        if self.seed is None or (sampling.seed is not None and sampling.seed != self.seed):
            self.reseed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little"))

    def reseed(self, seed: int) -> None:
        self.seed = seed
        self.generator.manual_seed(seed)

    # -- start ----------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def start(self, texts: list[str | None] | None = None, prompt: torch.Tensor | None = None,
              total_frames: int | None = None, chroma: torch.Tensor | None = None) -> None:
        """Condition on `texts` (one per item; None = null condition), prefill `prompt` codes [B, K, T_p] if any.

        total_frames: frames of the whole stream including the prompt, or None for an endless stream.
        chroma: melody LMs only: one-hot chroma [B, T_c, n_chroma], or None for the null melody.
        """
        cfg, B = self.cfg, self.B
        texts = list(texts) if texts is not None else [None] * B
        if len(texts) != B:
            raise ValueError(f"{len(texts)} prompts for a stream of {B} items")
        n_prompt = 0 if prompt is None else prompt.shape[-1]
        if prompt is not None and (prompt.dim() != 3 or prompt.shape[:2] != (B, cfg.n_q)):
            raise ValueError(f"prompt codes must be [{B}, {cfg.n_q}, frames], got {list(prompt.shape)}")
        limit = max_prompt_frames(cfg, self.replan)
        if n_prompt > limit:
            raise ValueError(f"the audio prompt is {n_prompt / cfg.frame_rate:.2f} s; this model's context allows "
                             f"at most {limit / cfg.frame_rate:.2f} s of prompt")
        if total_frames is not None and total_frames <= n_prompt:
            raise ValueError("nothing to generate: total_frames must exceed the prompt")
        self._check_chroma(chroma)
        conditions = [self.conditioner(t) for t in texts]
        if cfg.takes_melody and prefix_length(self.lm, conditions) > self.prefix_cap:
            raise ValueError(f"the text is {prefix_length(self.lm, conditions) - cfg.chroma_length} tokens; this "
                             f"stream holds at most {self.prefix_cap - cfg.chroma_length}")
        self.conditions = conditions
        self.chroma = None if chroma is None else chroma.to(self.device, torch.float32)
        if self.total_exceeds_context(total_frames) and len(self.states) == 1:
            self.states.append(LMState.allocate(cfg, self.rows, self.states[0].capacity, self.states[0].max_text,
                                                self.device, self.lm.dtype))
        self.active, self.catchup, self.base = self.states[0], None, 0
        self.n_prompt, self.total = n_prompt, total_frames
        self._condition(self.active, 0)
        self.active.reset()
        self.ring.fill_(cfg.special)
        if n_prompt:
            self.ring[:, :, :n_prompt] = prompt.to(self.device, torch.long)
        cols = columns_from_frames(self.ring, cfg.delays, 0, n_prompt + 1, 0, cfg.special, self.ring_size)
        x = self.lm.embed(torch.cat([cols, cols], 0))  # [2B, n_prompt + 1, dim]
        if self.prefix:  # melody: the conditioning prefix, then the prompt, in one causal prefill
            x = torch.cat([self.prefix_buf[:, : self.prefix], x], 1)
        logits = self.lm.forward_embeds(x, self.active)[:, :, 0]  # [2B, K, V]
        self.column = n_prompt + 1  # the column this prefill's logits produce
        self.col_t.fill_(self.column)
        self._produce(logits)

    def total_exceeds_context(self, total_frames: int | None) -> bool:
        return total_frames is None or total_frames + self.cfg.max_delay + 1 > self.replan_at

    def _check_chroma(self, chroma: torch.Tensor | None) -> None:
        cfg, B = self.cfg, self.B
        if chroma is None:
            return
        if not cfg.takes_melody:
            raise ValueError("this LM takes no melody; load a MusicGen-Melody model to condition on one")
        if chroma.dim() != 3 or chroma.shape[0] != B or chroma.shape[1] < 1 or chroma.shape[2] != cfg.n_chroma:
            raise ValueError(f"the melody's chroma must be one-hot frames [{B}, T, {cfg.n_chroma}], got "
                             f"{list(chroma.shape)}")
        if not bool(torch.isfinite(chroma).all()):
            raise ValueError("the melody's chroma holds NaN or infinite values")

    def _condition(self, state: LMState, first_frame: int) -> None:
        """Conditioning for a context whose first frame is `first_frame`: the cross-attention keys/values in
        `state`, or (melody) the prefix in `prefix_buf`, which the caller feeds into `state`."""
        if self.cfg.takes_melody:
            self.prefix = write_prefix(self.lm, self.prefix_buf, self.conditions, self.conditioner.null(),
                                       self.chroma, chroma_offset(self.lm, first_frame))
            return
        k, v, mask = stack_rows(self.conditions, self.conditioner.null())
        self.lm.attach_condition(state, k, v, mask, self.B)

    # -- stepping -------------------------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.total is not None and self.column >= self.total + self.cfg.max_delay

    @property
    def frames_ready(self) -> int:
        """Frames complete so far, counted from the stream's first frame (prompt included)."""
        if self.column < 0:
            return 0
        ready = max(self.n_prompt, self.column - self.cfg.max_delay)
        return ready if self.total is None else min(ready, self.total)

    @torch.no_grad()
    def step(self) -> None:
        """Produce the next column (one LM forward for all rows). Raises once a finite stream is done."""
        self._check_steppable()
        if self._prepare_step():
            self._finish_step(self.lm(self.inp, self.active)[:, :, 0])  # [2B, K, V]

    # A step in three parts so that `step_streams` can run the middle one for several streams at once.
    def _check_steppable(self) -> None:
        if self.column < 0:
            raise RuntimeError("start() the stream before stepping it")
        if self.done:
            raise RuntimeError("this stream has produced all its frames")

    def _prepare_step(self) -> bool:
        """Background re-prompt work, then the step itself when a captured graph covers it. Returns True when the
        caller must compute the logits of `self.inp` on `self.active` and hand them to `_finish_step`."""
        self._replan_work()
        if self.use_graphs and not self._forced(self.column + 1):
            self._graph(self.active)()
            self.active.pos += 1  # the graph advanced pos_t on the device
            self.column += 1
            return False
        return True

    def _finish_step(self, logits: torch.Tensor) -> None:
        self.column += 1
        self._produce(logits)

    def _produce(self, logits: torch.Tensor) -> None:
        """Draw column `self.column` from CFG logits, apply the pattern's forced cells, commit it."""
        s = self.sampling
        nxt = sample(cfg_combine(logits, self.cfg_t), self.temperature_t, s.top_k, self.top_p_t, s.top_p > 0,
                     s.greedy, self.generator)  # [B, K]
        self._force(nxt, self.column)
        self._commit(nxt)

    def _commit(self, nxt: torch.Tensor) -> None:
        B, K = self.B, self.cfg.n_q
        self.col.copy_(nxt)
        self.inp[:B, :, 0] = nxt  # the next step's input, for the conditional and the null rows alike
        self.inp[B:, :, 0] = nxt
        idx = (self.col_t - 1 - self.delays_t) % self.ring_size  # [K] frame slot of each row's cell
        self.ring.scatter_(2, idx.view(1, K, 1).expand(B, K, 1), nxt.unsqueeze(-1))
        self.col_t.add_(1)

    def _forced(self, column: int) -> bool:
        lo, hi = column - 1 - self.cfg.max_delay, column - 1  # frames this column touches
        return lo < self.n_prompt or (self.total is not None and hi >= self.total)

    def _force(self, nxt: torch.Tensor, column: int) -> None:
        """Cells whose frame is before the start, inside the prompt, or past a finite end are not sampled."""
        if not self._forced(column):
            return
        for k, d in enumerate(self.cfg.delays):
            f = column - 1 - d
            if f < 0 or (self.total is not None and f >= self.total):
                nxt[:, k] = self.cfg.special
            elif f < self.n_prompt:
                nxt[:, k] = self.ring[:, k, f % self.ring_size]

    def _graph(self, st: LMState) -> CUDAGraphed:
        s = self.sampling
        key = (id(st), s.top_k, s.top_p > 0, s.greedy)
        g = self._graphs.get(key)
        if g is None:
            def run() -> None:
                logits = self.lm.step_static(self.inp, st)  # [2B, K, V]
                nxt = sample(cfg_combine(logits, self.cfg_t), self.temperature_t, s.top_k, self.top_p_t,
                             s.top_p > 0, s.greedy, self.generator)
                self._commit(nxt)

            g = self._graphs[key] = CUDAGraphed(run, True, (self.generator,))
        return g

    # -- frames out -----------------------------------------------------------------------------------------------
    def read_frames(self, start: int, end: int) -> torch.Tensor:
        """Complete frames [start, end) as codes [B, K, end - start] (device tensor, no sync)."""
        if not 0 <= start <= end <= self.frames_ready:
            raise ValueError(f"frames [{start}, {end}) are not ready (ready: {self.frames_ready})")
        if self.column - start >= self.ring_size - self.cfg.max_delay - 1:
            raise ValueError(f"frame {start} has been overwritten; read frames more often")
        idx = torch.arange(start, end, device=self.device) % self.ring_size
        return self.ring.index_select(2, idx)

    # -- past the trained context ---------------------------------------------------------------------------------
    def _replan_work(self) -> None:
        """Background re-prompt: start, feed a chunk, or hand over, so that the next step always fits."""
        if self.total is not None and not self.total_exceeds_context(self.total - self.base) and self.catchup is None:
            return
        fed = self.column - self.base  # positions the active cache will hold after feeding self.column, minus one
        if self.catchup is None:
            if fed < self.replan_at:
                return
            spare = self.states[1] if self.active is self.states[0] else self.states[0]
            spare.reset()
            base = self.column - self.keep
            self._condition(spare, base)
            self.catchup = _Catchup(spare, base)
        cu, P = self.catchup, self.prefix
        if cu.state.pos < P:  # melody: the new context's prefix first, a chunk per step
            self.lm.forward_embeds(self.prefix_buf[:, cu.state.pos : min(cu.state.pos + self.replan.chunk, P)],
                                   cu.state)
        else:
            start = cu.base + cu.state.pos - P
            stop = min(start + self.replan.chunk, self.column)
            if stop > start:
                cols = columns_from_frames(self.ring, self.cfg.delays, start, stop, cu.base, self.cfg.special,
                                           self.ring_size)
                self.lm(torch.cat([cols, cols], 0), cu.state)
        if cu.state.pos >= P and cu.base + cu.state.pos - P == self.column:  # caught up: it feeds the next column
            self.active, self.base, self.catchup = cu.state, cu.base, None
        elif fed >= self.context - 1:
            raise RuntimeError("re-prompt did not catch up in time; raise ReplanConfig.chunk")

    # -- snapshot / restore ---------------------------------------------------------------------------------------
    def snapshot(self) -> StreamSnapshot:
        """Everything needed to resume from here (taken right after `start` it costs only the prompt's cache)."""
        if self.catchup is not None:
            raise RuntimeError("cannot snapshot while re-prompting; snapshot right after start()")
        return StreamSnapshot(self.active.snapshot(), self.col.clone(), self.ring.clone(),
                              self.generator.get_state(), self.column, self.base, self.n_prompt, self.total,
                              self.sampling, tuple(self.conditions), self.chroma, self.prefix)

    def restore(self, snap: StreamSnapshot) -> None:
        """Resume from a snapshot, in place (graph buffers keep their addresses)."""
        self.active, self.catchup = self.states[0], None
        self.active.restore(snap.state)
        self.col.copy_(snap.col)
        self.inp[: self.B, :, 0] = snap.col
        self.inp[self.B :, :, 0] = snap.col
        self.ring.copy_(snap.ring)
        self.column, self.base, self.n_prompt, self.total = snap.column, snap.base, snap.n_prompt, snap.total
        self.conditions, self.chroma, self.prefix = list(snap.conditions), snap.chroma, snap.prefix
        self.col_t.fill_(snap.column + 1)
        if snap.sampling != self.sampling:
            self.set_sampling(snap.sampling)
        self.generator.set_state(snap.rng)


@torch.no_grad()
def step_streams(streams: list[LMStream]) -> None:
    """Step several streams of one LM by a column each, with one batched forward (`MusicGenLM.forward_many`) for
    all those stepping eagerly: the weights are read once per step instead of once per stream.

    Each stream advances exactly as its own `step()` would (column, context, re-prompt, RNG draws), and its logits
    are its own step's up to float rounding: within 1e-4 in float32 (see `forward_many`; bf16/fp16 round at their
    own precision). So its tokens are the ones `step()` would draw except at a near tie, a draw whose decisive
    margin (the top-2 gap of the CFG logits when greedy; of log(p / q) in the exponential race, or a rank swap
    among the top-k, when sampling) is within what that rounding moves; from there on the two are different,
    equally likely takes. A single stream is `step()` bit for bit. Streams on CUDA graphs replay their own graph
    (a captured step has fixed shapes); a re-prompt prefill runs per stream before the batched step. Raises like
    `step()` if any stream is not started or already done, before stepping any of them.
    """
    if not streams:
        return
    lm = streams[0].lm
    if any(s.lm is not lm for s in streams):
        raise ValueError("these streams belong to different LMs; step each LM's streams with its own call")
    if len({id(s) for s in streams}) != len(streams):
        raise ValueError("a stream is listed twice; list each stream once per step")
    for s in streams:
        s._check_steppable()
    eager = [s for s in streams if s._prepare_step()]
    for s, logits in zip(eager, lm.forward_many([s.inp for s in eager], [s.active for s in eager])):
        s._finish_step(logits[:, :, 0])  # [2B, K, V]
