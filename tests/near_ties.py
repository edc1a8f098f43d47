"""One computation done two ways (streams stepped together vs alone, a captured graph vs the eager step, segue vs
transformers, the streaming codec vs its full pass, GPU vs CPU) compared by what is guaranteed, not bit for bit.

A GEMM is not bit-identical to one over more or fewer rows on every CPU/BLAS or GPU (MKL on an AMD EPYC rounds a
2-row GEMM unlike the same rows inside an 8-row one), nor are two implementations' kernels, so the logits differ
by float rounding. The guarantee (`step_streams`, `MusicGenLM.forward_many`, `pump_takes`): in float32 the logits
agree within `LOGIT_ATOL`, so a drawn token is the same unless its draw is a near tie, one whose decisive margin
(`decisive_margin`) is within what that difference can move. From the first such draw on, the two are different
takes and are no longer compared. Likewise a codec code may differ only where the quantizer's choice is a near tie
(`assert_codes_equal_up_to_near_ties`).

- `LockstepComparison` / `assert_same_takes` and the `*_equals_alone` helpers: both sides in lock step, every draw
  recorded (`DrawRecorder`): raw logits within `LOGIT_ATOL`, the same RNG state before a random draw, the same
  tokens, or a first difference only at a near tie.
- `assert_generates`: segue's greedy tokens against another implementation's, up to its first near tie.
- `assert_codes_equal_up_to_near_ties`: residual-VQ codes against those of latents within `LATENT_ATOL`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import segue.models.lm.stream as stream_mod

# float32 logits of one step computed two ways differ by at most this. Measured on a 2-core AMD EPYC (MKL):
# <= 2.4e-6 for the test and demo models over hundreds of steps, re-prompts included, and 5.6e-6 at
# musicgen-small's shape (dim 1024, 24 layers, random weights) over 60 steps; 1e-4 leaves ~18x headroom.
LOGIT_ATOL = 1e-4


@dataclass
class Draw:
    """One `sample` call of a stream: what decided its tokens."""

    logits: torch.Tensor  # raw CFG logits [2B, K, V] (conditional rows, then null rows)
    scores: torch.Tensor  # CFG-combined logits [B, K, V]: what the sampler draws from
    cfg_coef: float
    temperature: float
    top_k: int
    use_top_p: bool
    greedy: bool
    rng: torch.Tensor | None  # the generator's state before the draw
    tokens: torch.Tensor  # drawn [B, K], before the delay pattern's forced cells


class DrawRecorder:
    """While entered, records every draw of every LM stream, keyed by the stream (its generator).

    Wraps `cfg_combine` and `sample` as stream.py calls them: every step, eager or the static one a CUDA graph
    captures, calls the two back to back. A draw inside a CUDA-graph capture is not recorded (a replay runs no
    Python), so a graph stream has records only for its eager and warm-up steps.
    """

    def __init__(self):
        self._draws: dict[int, list[Draw]] = {}
        self._pending: tuple[torch.Tensor, float] | None = None

    def __enter__(self) -> "DrawRecorder":
        self._combine, self._sample = stream_mod.cfg_combine, stream_mod.sample
        stream_mod.cfg_combine, stream_mod.sample = self._record_combine, self._record_sample
        return self

    def __exit__(self, *exc) -> None:
        stream_mod.cfg_combine, stream_mod.sample = self._combine, self._sample

    @staticmethod
    def _capturing() -> bool:
        return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()

    def _record_combine(self, logits, coef):
        out = self._combine(logits, coef)
        if not self._capturing():
            self._pending = (logits.detach().float().clone(), float(coef))
        return out

    def _record_sample(self, scores, temperature, top_k, top_p, use_top_p, greedy, generator=None):
        if self._capturing():
            return self._sample(scores, temperature, top_k, top_p, use_top_p, greedy, generator)
        rng = generator.get_state() if generator is not None else None
        tokens = self._sample(scores, temperature, top_k, top_p, use_top_p, greedy, generator)
        logits, coef = self._pending
        self._pending = None
        self._draws.setdefault(id(generator), []).append(Draw(
            logits, scores.detach().float().clone(), coef, float(temperature), top_k, use_top_p, greedy, rng,
            tokens.clone()))
        return tokens

    def pop(self, stream) -> list[Draw]:
        """The draws `stream` made since the last pop."""
        return self._draws.pop(id(stream.generator), [])

    def only(self) -> list[Draw]:
        """Every draw of the one stream that drew (for a stream made out of sight, as `generate_frames` does)."""
        assert len(self._draws) == 1, f"{len(self._draws)} streams drew; pop them by stream"
        return next(iter(self._draws.values()))


def token_threshold(draw: Draw) -> float:
    """How far (max norm, in CFG-combined logits) `LOGIT_ATOL` on the raw logits can move the scores."""
    return (1 + 2 * abs(draw.cfg_coef)) * LOGIT_ATOL


def _regenerate_q(draw: Draw, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The exponential variates the sampler took for this draw (same generator state, one per token)."""
    gen = torch.Generator(device=device)
    gen.set_state(draw.rng)
    return torch.empty(shape, device=device).exponential_(1, generator=gen)


def decisive_margin(draw: Draw) -> torch.Tensor:
    """[B, K]: how far (max norm, in CFG-combined logits) the scores must move before the drawn token changes.

    Greedy: half the top-2 gap. Sampling: the exponential race argmax(p / q), one q ~ Exp(1) per token: half the
    race's top-2 gap in log(p / q) among the tokens the filter keeps, and for top-k also the filter's edge when a
    swap of the k-th and the (k+1)-th token would hand the race to another token (half their score gap).
    Temperature T scales log p by 1 / T. Checks that the reconstructed draw gives the recorded tokens (the margin
    is of the draw that happened). Top-p: NotImplementedError.
    """
    scores = draw.scores.double()  # [B, K, V]
    B, K, V = scores.shape
    if draw.greedy:
        top = scores.topk(2, dim=-1).values
        return ((top[..., 0] - top[..., 1]) / 2).float().cpu()
    if draw.use_top_p:
        raise NotImplementedError("decisive_margin covers greedy and top-k draws; no test compares top-p ones")
    T = draw.temperature
    probs = torch.softmax(draw.scores / T, dim=-1)  # [B, K, V] float32, as the sampler computes it
    q = _regenerate_q(draw, (B, K, V), probs.device)
    race = scores / T - q.double().log()  # [B, K, V] log(p / q) up to a constant per cell
    if 0 < draw.top_k < V:
        k = draw.top_k
        top_probs, top_idx = probs.topk(k, dim=-1)  # the sampler's own ops, in float32: the token it drew
        drawn = top_idx.gather(-1, torch.argmax(top_probs / q.gather(-1, top_idx), dim=-1, keepdim=True)).squeeze(-1)
        ranked = probs.topk(k + 1, dim=-1).indices  # [B, K, k + 1]: the top k, then the next token
        kept = race.gather(-1, ranked[..., :k])  # [B, K, k]
        top = kept.topk(2, dim=-1).values
        margin = (top[..., 0] - top[..., 1]) / 2
        # The k-th and the (k+1)-th trade places: it matters when the k-th won, or the (k+1)-th would win.
        edge_k, edge_next = ranked[..., k - 1], ranked[..., k]
        edge_race = race.gather(-1, edge_next[..., None]).squeeze(-1)
        turns = (drawn == edge_k) | (edge_race > top[..., 0])
        gap = (scores.gather(-1, edge_k[..., None]) - scores.gather(-1, edge_next[..., None])).squeeze(-1) / T / 2
        margin = torch.where(turns, torch.minimum(margin, gap), margin)
    else:
        drawn = torch.argmax(probs / q, dim=-1)
        top = race.topk(2, dim=-1).values
        margin = (top[..., 0] - top[..., 1]) / 2
    assert torch.equal(drawn, draw.tokens), "the reconstructed draw is not the sampler's: update decisive_margin"
    return (margin.clamp(min=0) * T).float().cpu()


def _first_difference(ref: Draw | None, cand: Draw | None, ref_col: torch.Tensor, cand_col: torch.Tensor,
                      what: str) -> bool:
    """Check one step of one stream; True when its tokens differ (legitimately: a near tie)."""
    if ref is not None and cand is not None:
        torch.testing.assert_close(cand.logits, ref.logits, atol=LOGIT_ATOL, rtol=0, msg=lambda m: f"{what}: {m}")
        if not ref.greedy:  # a greedy draw takes no random numbers
            assert ref.rng is not None and cand.rng is not None and torch.equal(ref.rng, cand.rng), \
                f"{what}: the two sides' generators were in different states before the draw"
    if torch.equal(ref_col, cand_col):
        return False
    assert ref is not None, f"{what}: tokens differ where the reference recorded no draw"
    differ = (ref_col != cand_col).cpu()  # [B, K]; cells the delay pattern forces never differ
    margin, limit = decisive_margin(ref)[differ], token_threshold(ref)
    assert bool((margin <= limit).all()), (
        f"{what}: tokens differ at a draw that is no near tie (decisive margin {margin.max().item():.3g} > "
        f"{limit:.3g}, what logits within {LOGIT_ATOL:g} can move): the two computations disagree")
    return True


class LockstepComparison:
    """Reference streams and candidate streams (the same takes computed another way) stepped in lock step.

    Call `check()` after every round in which both sides stepped: each pair's logits within `LOGIT_ATOL`, the same
    generator state before each draw, the same tokens until a first difference, which must be a near tie; from it
    on the pair is no longer compared token by token. The reference side must step eagerly (every draw recorded);
    a candidate on a captured CUDA graph records none after capture, and its logits are then not compared.
    """

    def __init__(self, reference: list, candidate: list):
        self.reference, self.candidate = reference, candidate
        self.rounds = 0
        self.diverged: list[int | None] = [None] * len(reference)  # round of the first difference, per pair
        self.first_column: list[int | None] = [None] * len(reference)  # the column drawn there
        self.recorder = DrawRecorder()

    def __enter__(self) -> "LockstepComparison":
        self.recorder.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.recorder.__exit__(*exc)

    def check(self) -> None:
        self.rounds += 1
        for i, (a, b) in enumerate(zip(self.reference, self.candidate)):
            ra, rb = self.recorder.pop(a), self.recorder.pop(b)
            assert a.column == b.column, f"stream {i}: at column {b.column}, the reference at {a.column}"
            assert len(ra) <= 1 and len(rb) <= len(ra), f"stream {i}: {len(ra)} and {len(rb)} draws in one step"
            if self.diverged[i] is not None or not ra:
                continue
            what = f"stream {i}, round {self.rounds}, column {a.column}"
            if _first_difference(ra[0], rb[0] if rb else None, a.col, b.col, what):
                self.diverged[i], self.first_column[i] = self.rounds, a.column

    def same_frames(self, i: int, cfg) -> int:
        """Frames of pair i that are the same take on both sides: all of them, or those whose every cell was
        drawn before the first difference (frame f's cell k is drawn at column f + 1 + delay_k)."""
        c = self.first_column[i]
        return int(1e12) if c is None else max(0, c - 1 - cfg.max_delay)


def _frame_reader(got: dict):
    def read(s):
        done = sum(f.shape[-1] for f in got[id(s)])
        got[id(s)].append(s.read_frames(done, s.frames_ready).cpu())
    return read


def assert_same_takes(reference: list, candidate: list, step_candidates, steps: int | None = None
                      ) -> LockstepComparison:
    """The streams `reference`, each stepped alone, and the same takes `candidate`, stepped by
    `step_candidates(streams)`, in lock step for `steps` rounds (None: until all are done): at every step logits
    within `LOGIT_ATOL` and the same tokens up to a near tie (`LockstepComparison`); at the same column and context
    at the end; the same frames, read as a player would, as they come (a stream's ring holds only two contexts of
    frames), up to the first difference. Returns the comparison (`diverged`: each pair's round of its first
    difference, or None)."""
    got = {id(s): [] for s in reference + candidate}
    read = _frame_reader(got)
    with LockstepComparison(reference, candidate) as cmp:
        while steps is None or cmp.rounds < steps:
            live = [i for i, s in enumerate(reference) if not s.done]
            assert live == [i for i, s in enumerate(candidate) if not s.done]
            if not live and steps is None:
                break
            for i in live:
                reference[i].step()
            step_candidates([candidate[i] for i in live])
            cmp.check()
            for i in live:
                read(reference[i])
                read(candidate[i])
    for i, (a, b) in enumerate(zip(reference, candidate)):
        assert (a.column, a.base, a.frames_ready) == (b.column, b.base, b.frames_ready)
        fa, fb = torch.cat(got[id(a)], -1), torch.cat(got[id(b)], -1)
        assert fa.shape == fb.shape
        n = min(cmp.same_frames(i, a.cfg), fa.shape[-1])
        assert torch.equal(fb[..., :n], fa[..., :n])
    return cmp


def stepped_together_equals_alone(alone: list, together: list, steps: int | None = None) -> LockstepComparison:
    """The streams `alone` stepped one by one and the same streams `together` stepped in one call (`step_streams`):
    the same takes as `assert_same_takes` checks them."""
    from segue.models.lm.stream import step_streams

    return assert_same_takes(alone, together, step_streams, steps)


def batched_equals_alone(make) -> list:
    """Streams from `make(False)` stepped one by one and streams from `make(True)` stepped together
    (`step_streams`) to their end, compared as `stepped_together_equals_alone` does. Returns the batched
    streams."""
    ref, batched = make(False), make(True)
    stepped_together_equals_alone(ref, batched)
    return batched


def pumped_together_equals_alone(alone: list, together: list, pumps: int) -> list:
    """The takes `alone` pumped one by one and the same takes `together` pumped in one call (`pump_takes`), in lock
    step: the streams' draws as `stepped_together_equals_alone` checks them, chunks at the same pumps, and until
    the first difference the same codes and the same audio (within 1e-5). Returns the chunks of each batched
    take."""
    from segue.models.generation import pump_takes

    ref, got = [[] for _ in alone], [[] for _ in together]
    read = [[] for _ in alone]  # frames each alone take had read after each pump
    with LockstepComparison([t.stream for t in alone], [t.stream for t in together]) as cmp:
        for _ in range(pumps):
            for t, out, r in zip(alone, ref, read):
                out.append(t.pump())
                r.append(t.read)
            for out, pcm in zip(got, pump_takes(together)):
                out.append(pcm)
            cmp.check()
    for i, (a, b, mine, theirs) in enumerate(zip(alone, together, got, ref)):
        assert [p is None for p in mine] == [p is None for p in theirs]  # chunks arrive at the same pumps
        same = cmp.same_frames(i, a.stream.cfg)
        ca, cb = a.new_codes(), b.new_codes()
        assert ca.shape == cb.shape
        n = max(0, min(same - a.n_prompt, ca.shape[-1]))
        assert np.array_equal(cb[:, :n], ca[:, :n])
        for x, y, frames in zip(mine, theirs, read[i]):
            if x is not None:
                assert x.shape == y.shape
                if frames <= same:  # decoded from frames that are the same take on both sides
                    assert np.abs(x - y).max() <= 1e-5
    return got


# -- against another implementation ------------------------------------------------------------------------------------

def generate_recorded(model, texts, frames: int, prompt: torch.Tensor | None = None,
                      chroma: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Draw]]:
    """`support.generate_frames` (greedy, CFG 3) -> (codes [B, K, T_p + frames], the stream's draws: draw i made
    column T_p + 1 + i)."""
    from support import generate_frames

    with DrawRecorder() as rec:
        codes = generate_frames(model, texts, frames, prompt, chroma=chroma)
    return codes, rec.only()


def assert_generates(model, texts, frames: int, ref: torch.Tensor, prompt: torch.Tensor | None = None,
                     chroma: torch.Tensor | None = None) -> torch.Tensor:
    """segue's greedy codes (`generate_recorded`) are another implementation's `ref` [B, K, T] up to its first
    near tie (`assert_same_take_as_reference`); returns segue's codes."""
    ours, draws = generate_recorded(model, texts, frames, prompt, chroma)
    assert_same_take_as_reference(ours, ref, draws, model.lm.cfg.delays, 0 if prompt is None else prompt.shape[-1])
    return ours


def reference_draws(steps: list, batch: int, codebooks: int, cfg_coef: float = 3.0) -> list[Draw]:
    """A transformers greedy loop's (logits [2 * B * K, V], CFG scores [B * K, V]) per column as `Draw`s."""
    draws = []
    for logits, scores in steps:
        V = scores.shape[-1]
        draws.append(Draw(logits.float().reshape(2 * batch, codebooks, V), scores.float().reshape(batch, codebooks, V),
                          cfg_coef, 0.0, 1, False, True, None, scores.argmax(-1).reshape(batch, codebooks)))
    return draws


def assert_same_take_as_reference(ours: torch.Tensor, ref: torch.Tensor, draws: list[Draw], delays, n_prompt: int,
                                  rel: float = 1e-4) -> None:
    """segue's codes `ours` [B, K, T] (delay pattern removed; `draws` as `generate_recorded` gives them) equal
    another implementation's `ref` up to its first near tie: the prompt's frames and every cell drawn before the
    first column where they differ are equal, and each cell that differs there was a draw whose decisive margin is
    within what logits agreeing within `rel` of their largest magnitude (what the logits tests check) can move.
    Cells of later columns follow from different inputs and are not compared."""
    assert ours.shape == ref.shape, f"{list(ours.shape)} vs {list(ref.shape)}"
    assert torch.equal(ours[..., :n_prompt], ref[..., :n_prompt]), "the prompts differ"
    differ = (ours != ref).cpu()  # [B, K, T]
    if not differ.any():
        return
    delay = torch.tensor(delays)
    column = torch.arange(ours.shape[-1])[None, None, :] + 1 + delay[None, :, None]  # [1, K, T] where drawn
    first = int(column.expand_as(differ)[differ].min())
    draw = draws[first - n_prompt - 1]
    at = differ & (column == first)  # [B, K, T]: at most one frame per codebook
    cells = at.any(-1)  # [B, K]
    margin = decisive_margin(draw)[cells]
    limit = (1 + 2 * abs(draw.cfg_coef)) * rel * float(draw.logits.abs().max())
    assert bool((margin <= limit).all()), (
        f"the codes differ from column {first} on, at a draw that is no near tie (decisive margin "
        f"{margin.max().item():.3g} > {limit:.3g}): the two implementations disagree")


# -- codec codes -------------------------------------------------------------------------------------------------------

# Latents [B, D, T] of one audio computed two ways (the streaming encoder vs the full pass; GPU vs CPU) differ by
# at most this. Measured on the 2-core AMD EPYC: <= 9e-8 (streaming vs full pass, 32/16/24 kHz test codecs, every
# chunking of test_encodec.py) for latents up to 0.22.
LATENT_ATOL = 1e-6


def assert_codes_equal_up_to_near_ties(quantizer, z: torch.Tensor, codes: torch.Tensor, ref: torch.Tensor) -> None:
    """Residual-VQ codes [B, K, T] computed another way equal `ref`, the codes of latents z [B, D, T], except where
    the quantizer's choice was a near tie: in each frame, the first codebook where they differ must have chosen
    between two entries whose squared distances to the residual differ by no more than latents within
    `LATENT_ATOL` (and float32's rounding of the distance) can explain. Later codebooks of that frame quantize
    another residual and are not compared."""
    assert codes.shape == ref.shape, f"{list(codes.shape)} vs {list(ref.shape)}"
    codes, ref, z = codes.cpu(), ref.cpu(), z.detach().double().cpu()
    books = quantizer.codebooks.detach().double().cpu()  # [K, bins, D]
    differ = codes != ref  # [B, K, T]
    eps = LATENT_ATOL * z.shape[1] ** 0.5  # the L2 size of a latent difference within LATENT_ATOL
    for b, t in {(int(b), int(t)) for b, _, t in differ.nonzero()}:
        k = int(differ[b, :, t].nonzero()[0])
        x = z[b, :, t] - books[torch.arange(k), ref[b, :k, t]].sum(0)  # [D] the residual codebook k quantized
        ea, eb = books[k, ref[b, k, t]], books[k, codes[b, k, t]]
        gap = float((x - eb).pow(2).sum() - (x - ea).pow(2).sum())  # >= 0: ref chose the nearer one
        # |d(x + delta, e) - d(x, e)| <= 2 |delta| |x - e| + |delta|^2, for both entries; plus the rounding of
        # float32's |x|^2 - 2 x.e + |e|^2.
        move = sum(2 * eps * float((x - e).norm()) + eps**2 for e in (ea, eb))
        rounding = 1e-6 * float((x.norm() + max(ea.norm(), eb.norm())) ** 2)
        assert gap <= move + rounding, (
            f"frame {t} of item {b}: codebook {k} chose entry {int(codes[b, k, t])} over {int(ref[b, k, t])}, "
            f"whose squared distance is {gap:.3g} smaller: no near tie (limit {move + rounding:.3g})")
