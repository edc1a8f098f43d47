"""The LM stream: step-by-step equals prefill, the static step equals the eager one, snapshots replay exactly,
and a stream outlives the trained context without stopping."""

import pytest
import torch

import near_ties
import support
from segue.models.lm.config import LMConfig, ReplanConfig, SamplingParams
from segue.models.lm.pattern import columns_from_frames
from segue.models.lm.state import LMState
from segue.models.loading.demo import DEMO_CODEC, DEMO_T5, random_codec, random_lm, random_text_encoder
from segue.models.musicgen import ModelInfo, MusicGen

SHORT = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, n_q=4, card=2048, text_dim=32, max_duration=2.0,
                 frame_rate=50.0)  # context of 104 positions: re-prompting happens within a few hundred steps


@pytest.fixture(scope="module")
def short_model():
    return MusicGen(random_codec(DEMO_CODEC, 1), random_lm(SHORT, 2), random_text_encoder(DEMO_T5, 3),
                    ModelInfo("short", None, "demo", "musicgen"))


@pytest.fixture(scope="module")
def short_int8(short_model):
    """The same model with its LM in int8 (models/lm/quant.py)."""
    import copy

    m = short_model
    return MusicGen(m.codec, copy.deepcopy(m.lm).quantize_int8(), m.text, ModelInfo("short-int8", None, "demo",
                                                                                     "musicgen"))


def conditioned_state(model, text="pads", rows=1, context=None, max_text=16, folded=False):
    cfg = model.lm.cfg
    state = LMState.allocate(cfg, rows, context or cfg.context, max_text, torch.device("cpu"), torch.float32)
    c = model.conditioner(text)
    k, v, mask = c.cross_k.expand(-1, rows, -1, -1, -1), c.cross_v.expand(-1, rows, -1, -1, -1), c.mask.expand(rows, -1)
    if folded:
        model.lm.attach_condition(state, k, v, mask, rows, fold=True)
    else:
        state.set_condition(k, v, mask)
    return state


def test_step_by_step_equals_prefill(short_model):
    lm = short_model.lm
    ids = torch.randint(0, 2049, (2, 4, 30))
    full = lm(ids, conditioned_state(short_model, rows=2), last_only=False)
    st = conditioned_state(short_model, rows=2)
    steps = torch.cat([lm(ids[..., t : t + 1], st) for t in range(30)], 2)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    st = conditioned_state(short_model, rows=2)  # prefill in uneven chunks at growing offsets
    chunks = [lm(ids[..., a:b], st, last_only=False) for a, b in ((0, 7), (7, 8), (8, 21), (21, 30))]
    torch.testing.assert_close(torch.cat(chunks, 2), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("folded", [False, True], ids=["published-cross-attention", "folded-cross-attention"])
def test_static_step_equals_eager_step(short_model, folded):
    """The fixed-shape step a CUDA graph captures computes what the eager step computes (checked on CPU)."""
    lm = short_model.lm
    ids = torch.randint(0, 2049, (2, 4, 12))
    eager = conditioned_state(short_model, rows=2, folded=folded)
    static = conditioned_state(short_model, rows=2)
    lm(ids[..., :5], eager)
    lm(ids[..., :5], static)
    for t in range(5, 12):
        a = lm(ids[..., t : t + 1], eager)[:, :, 0]
        b = lm.step_static(ids[..., t : t + 1], static)
        static.pos += 1
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert int(static.pos_t) == eager.pos == 12


def test_cache_is_allocated_once(short_model):
    stream = short_model.stream(1, SamplingParams(seed=1), replan=ReplanConfig(keep_seconds=0.5, chunk=16))
    stream.start(["x"], None, total_frames=None)
    ptrs = [(s.k.data_ptr(), s.v.data_ptr()) for s in stream.states]
    ring = stream.ring.data_ptr()
    snap = stream.snapshot()
    for _ in range(250):  # crosses the context twice
        stream.step()
    stream.restore(snap)
    assert [(s.k.data_ptr(), s.v.data_ptr()) for s in stream.states] == ptrs
    assert stream.ring.data_ptr() == ring


@pytest.mark.parametrize("name", ["short_model", "short_int8"], ids=["float32", "int8"])
def test_snapshot_restore_replays_and_reseed_varies(request, name):
    """Also at int8: the same calls on the same shapes are exact."""
    short_model = request.getfixturevalue(name)
    stream = short_model.stream(1, SamplingParams(seed=7))
    stream.start(["glitch"], None, total_frames=60)
    snap = stream.snapshot()
    first = support.finish(stream).clone()
    stream.restore(snap)
    assert torch.equal(support.finish(stream), first)  # instant retry replays exactly
    stream.restore(snap)
    stream.reseed(8)  # retry with a new seed: same prompt state, different take
    assert not torch.equal(support.finish(stream), first)


def test_seeded_sampling_is_reproducible_and_greedy_modes_agree(short_model):
    def run(sampling):
        return support.generate_frames(short_model, ["x"], 20, sampling=sampling)

    assert torch.equal(run(SamplingParams(seed=3)), run(SamplingParams(seed=3)))
    assert not torch.equal(run(SamplingParams(seed=3)), run(SamplingParams(seed=4)))
    assert torch.equal(run(SamplingParams(top_k=1, seed=1)), run(SamplingParams(temperature=0.0, seed=2)))


def test_prompt_frames_are_kept_and_no_special_token_leaks(short_model):
    prompt = torch.randint(0, 2048, (1, 4, 20))
    s = short_model.stream(1, SamplingParams(seed=1))
    s.start([None], prompt, total_frames=50)
    frames = support.finish(s)
    assert torch.equal(frames[..., :20], prompt)
    assert int(frames.max()) < 2048


@pytest.mark.parametrize("name", ["short_model", "short_int8"], ids=["float32", "int8"])
def test_endless_stream_outlives_the_context(request, name):
    short_model = request.getfixturevalue(name)
    cfg = short_model.lm.cfg
    s = short_model.stream(1, SamplingParams(seed=5), replan=ReplanConfig(keep_seconds=0.6, chunk=8))
    s.start(["drone"], None, total_frames=None)
    switches, last_base = 0, s.base
    for _ in range(6 * cfg.context):
        before = s.frames_ready
        s.step()
        assert s.frames_ready == before + (1 if s.column > cfg.max_delay else 0)  # one frame per step, no pause
        if s.base != last_base:
            switches, last_base = switches + 1, s.base
        assert s.active.pos <= cfg.context
    assert switches >= 5
    assert int(s.read_frames(s.frames_ready - 50, s.frames_ready).max()) < 2048


def test_reprompt_continues_from_exactly_the_recent_context(short_model):
    """At the hand-over the new context holds the last frames, re-laid out as a fresh prompt, and predicts what a
    cache prefilled with those columns in one pass predicts."""
    cfg = short_model.lm.cfg
    s = short_model.stream(1, SamplingParams(top_k=1), replan=ReplanConfig(keep_seconds=0.5, chunk=8))
    s.start(["drone"], None, total_frames=None)
    while s.catchup is None:
        s.step()
    cu = s.catchup
    while s.catchup is not None:
        s.step()
    assert s.active is cu.state and s.base == cu.base
    # Rebuild the same context in one prefill and compare its next-step logits with the stream's.
    cols = columns_from_frames(s.ring, cfg.delays, cu.base, s.column + 1, cu.base, cfg.special, s.ring_size)
    ref_state = conditioned_state(short_model, "drone", rows=2, max_text=s.active.max_text)
    n = s.active.cross_len
    act = s.active
    ref_state.set_condition(act.cross_k[:, :, :, :n], act.cross_v[:, :, :, :n], act.cross_mask[:, 0, 0, :n])
    ref = short_model.lm(torch.cat([cols, cols]), ref_state)[:, :, 0]
    snap_pos = s.active.pos
    mine = short_model.lm(s.inp, s.active)[:, :, 0]
    assert s.active.pos == snap_pos + 1
    torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)


def test_finite_take_longer_than_context(short_model):
    s = short_model.stream(1, SamplingParams(seed=2), replan=ReplanConfig(keep_seconds=0.5, chunk=8))
    total = 3 * short_model.lm.cfg.context
    s.start(["x"], None, total_frames=total)
    read, got = 0, []
    while not s.done:
        s.step()
        if s.frames_ready - read >= 40 or s.done:
            got.append(s.read_frames(read, s.frames_ready))
            read = s.frames_ready
    frames = torch.cat(got, -1)
    assert frames.shape == (1, 4, total) and int(frames.max()) < 2048


def test_bad_requests_are_refused(short_model):
    s = short_model.stream(1)
    with pytest.raises(RuntimeError, match="start"):
        s.step()
    with pytest.raises(ValueError, match="frames"):
        s.start(["x"], torch.zeros(1, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="context"):
        s.start(["x"], torch.zeros(1, 4, 500, dtype=torch.long))
    with pytest.raises(ValueError, match="prompts"):
        s.start(["a", "b"])
    s.start(["x"], None, total_frames=2)
    while not s.done:
        s.step()
    with pytest.raises(RuntimeError, match="all its frames"):
        s.step()
    with pytest.raises(ValueError, match="not ready"):
        s.read_frames(0, 10)


def test_folded_cross_attention_with_padded_prompts_and_without_text(short_model):
    """Folding Wq/Wo into the memory gives the published cross-attention's logits, padding masks included; with no
    text at all the cross-attention is skipped and contributes exactly what zero memory does."""
    from segue.models.lm.conditioning import stack_rows

    lm, cond = short_model.lm, short_model.conditioner
    ids = torch.randint(0, 2049, (4, 4, 6))
    for texts in (["kick", "a slow ambient pad"], [None, None]):
        k, v, mask = stack_rows([cond(t) for t in texts], cond.null())
        ref = LMState.allocate(lm.cfg, 4, 32, 32, torch.device("cpu"), torch.float32)
        ref.set_condition(k, v, mask)
        folded = LMState.allocate(lm.cfg, 4, 32, 32, torch.device("cpu"), torch.float32)
        lm.attach_condition(folded, k, v, mask, 2, fold=True)
        assert folded.fold_rows == (2 if texts[0] else 0)
        torch.testing.assert_close(lm(ids, folded, last_only=False), lm(ids, ref, last_only=False),
                                   atol=1e-5, rtol=1e-5)


def test_weight_views_follow_dtype_changes_and_reloads(short_model):
    """The eager step reads weights through views gathered once; moving or reloading the module refreshes them."""
    lm = random_lm(SHORT, 7)
    ids = torch.randint(0, 2049, (2, 4, 5))
    state = LMState.allocate(lm.cfg, 2, 16, 8, torch.device("cpu"), torch.float32)
    first = lm(ids, state, last_only=False)
    lm.to(torch.float64)  # stale float32 views would make the GEMMs fail on mixed dtypes
    state64 = LMState.allocate(lm.cfg, 2, 16, 8, torch.device("cpu"), torch.float64)
    torch.testing.assert_close(lm(ids, state64, last_only=False), first, atol=1e-5, rtol=1e-5)  # logits: float32
    other = random_lm(SHORT, 8).to(torch.float64)
    lm.load_state_dict(other.state_dict(), assign=True)  # new tensors: the old views must not be used
    state64.reset()
    torch.testing.assert_close(lm(ids, state64, last_only=False), other(ids, LMState.allocate(
        lm.cfg, 2, 16, 8, torch.device("cpu"), torch.float64), last_only=False))


# -- several streams, one LM call per step ----------------------------------------------------------------------------

def _states_for_batch(model):
    """Four states at different positions, covering every cross-attention path: folded one-row text, no text at
    all (skipped), published with padding masks, folded with padding masks (2 items, so 4 rows)."""
    from segue.models.lm.conditioning import stack_rows

    lm, cond = model.lm, model.conditioner
    out = []
    for texts, fold, filled in ((["pads"], True, 5), ([None], None, 9), (["kick", "a slow ambient pad"], False, 13),
                                (["kick", "a slow ambient pad"], True, 0)):
        k, v, mask = stack_rows([cond(t) for t in texts], cond.null())
        st = LMState.allocate(lm.cfg, 2 * len(texts), 40, 32, torch.device("cpu"), torch.float32)
        lm.attach_condition(st, k, v, mask, len(texts), fold=fold)
        if filled:
            lm(torch.randint(0, 2049, (st.rows, 4, filled), generator=torch.Generator().manual_seed(filled)), st)
        out.append(st)
    return out


def test_forward_many_equals_each_streams_forward(short_model):
    lm = short_model.lm
    alone, batched = _states_for_batch(short_model), _states_for_batch(short_model)
    assert [s.fold_rows for s in alone] == [1, 0, None, 2] and [s.pos for s in alone] == [5, 9, 13, 0]
    for _ in range(3):
        tokens = [torch.randint(0, 2049, (s.rows, 4, 1)) for s in alone]
        ref = [lm(t, s) for t, s in zip(tokens, alone)]
        got = lm.forward_many(tokens, batched)
        for a, b in zip(got, ref):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(batched, alone):
        assert a.pos == b.pos and int(a.pos_t) == b.pos
        torch.testing.assert_close(a.k, b.k, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a.v, b.v, atol=1e-5, rtol=1e-5)
    one = _states_for_batch(short_model)[2]  # a single stream is the plain step, bit for bit
    ref = lm(tokens[2], _states_for_batch(short_model)[2])
    assert torch.equal(lm.forward_many([tokens[2]], [one])[0], ref)


def test_forward_many_refuses_bad_batches(short_model):
    lm = short_model.lm
    a, b = _states_for_batch(short_model)[:2]
    tok = torch.zeros(2, 4, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="one per state"):
        lm.forward_many([tok], [a, b])
    with pytest.raises(ValueError, match="twice"):
        lm.forward_many([tok, tok], [a, a])
    with pytest.raises(ValueError, match=r"\[2, 4, 1\]"):
        lm.forward_many([tok, torch.zeros(2, 4, 3, dtype=torch.long)], [a, b])
    b.pos = b.capacity
    with pytest.raises(RuntimeError, match="KV cache full"):
        lm.forward_many([tok, tok], [a, b])
    assert a.pos == 5  # refused before anything was written


def _stream_trio(model):
    """An endless stream that re-prompts past the context, a two-item stream longer than the context, and a
    prompted stream that finishes long before the others."""
    replan = ReplanConfig(keep_seconds=0.5, chunk=8)
    endless = model.stream(1, SamplingParams(seed=11), replan=replan)
    endless.start(["drone"], None, total_frames=None)
    pair = model.stream(2, SamplingParams(seed=12, top_k=50), replan=replan)
    pair.start(["kick", "a slow ambient pad"], None, total_frames=150)
    short = model.stream(1, SamplingParams(seed=13), replan=replan)
    short.start([None], torch.randint(0, 2048, (1, 4, 20), generator=torch.Generator().manual_seed(3)),
                total_frames=40)
    return [endless, pair, short]


def test_step_streams_equals_stepping_each_alone(short_model):
    """In lock step: each stream's logits within near_ties.LOGIT_ATOL of its own step's, its tokens the same until
    a first difference that must be a near tie, its columns, contexts and frames (up to that difference) too."""
    alone, together = _stream_trio(short_model), _stream_trio(short_model)
    near_ties.stepped_together_equals_alone(alone, together, 3 * short_model.lm.cfg.context)
    assert together[2].done and together[1].done and not together[0].done
    assert together[0].base > 0  # the endless stream re-prompted while batched with the others


def test_step_streams_with_graph_streams(short_model, monkeypatch):
    """Streams on CUDA graphs replay their own fixed-shape step beside the batched ones (checked on CPU with the
    graph wrapper running its step eagerly; test_cuda.py captures for real)."""
    import segue.models.lm.stream as stream_mod
    from segue.models.lm.cuda_graph import CUDAGraphed

    monkeypatch.setattr(stream_mod, "CUDAGraphed", lambda fn, enabled, gens: CUDAGraphed(fn, False, gens))

    def trio(graphs):
        out = []
        for seed, text in ((1, "pads"), (2, None), (3, "kick")):
            s = short_model.stream(1, SamplingParams(top_k=1, seed=seed))
            s.use_graphs = graphs and seed != 2  # two graph streams and one eager one
            s.start([text], None, total_frames=30)
            out.append(s)
        return out

    mixed = near_ties.batched_equals_alone(trio)
    assert [bool(s._graphs) for s in mixed] == [True, False, True]


def test_step_streams_refuses_bad_batches(short_model):
    from segue.models.lm.stream import step_streams

    a, b = short_model.stream(1, SamplingParams(seed=1)), short_model.stream(1, SamplingParams(seed=2))
    with pytest.raises(RuntimeError, match="start"):
        step_streams([a, b])
    a.start(["x"], None, total_frames=2)
    b.start(["x"], None, total_frames=20)
    with pytest.raises(ValueError, match="twice"):
        step_streams([a, a])
    other = MusicGen(random_codec(DEMO_CODEC, 1), random_lm(SHORT, 2), random_text_encoder(DEMO_T5, 3),
                     ModelInfo("short", None, "demo", "musicgen")).stream(1)
    other.start(["x"], None, total_frames=5)
    with pytest.raises(ValueError, match="different LMs"):
        step_streams([a, other])
    while not a.done:
        step_streams([a, b])
    column = b.column
    with pytest.raises(RuntimeError, match="all its frames"):
        step_streams([b, a])
    assert b.column == column  # refused before any stream was stepped
    step_streams([])
