"""A melody LM's stream: the conditioning prefix lives in the KV cache's first positions. Step-by-step equals
prefill, the static step equals the eager one, batched steps equal single ones up to float rounding (near_ties),
snapshots replay exactly, and a re-prompt feeds the prefix into the new context a chunk per step and hands over
exactly."""

import pytest
import torch

import melody_support
import near_ties
import support
from segue.models.lm.config import LMConfig, ReplanConfig, SamplingParams
from segue.models.lm.pattern import columns_from_frames
from segue.models.lm.prefix import chroma_offset, chroma_window, write_prefix
from segue.models.lm.state import LMState
from segue.models.lm.stream import LMStream
from segue.models.loading.demo import DEMO_CODEC, DEMO_T5, random_codec, random_lm, random_text_encoder
from segue.models.musicgen import ModelInfo, MusicGen

# Context of 104 positions and a 16-frame chroma: re-prompting happens within a few hundred steps.
SHORT_MELODY = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, n_q=4, card=2048, text_dim=32,
                        max_duration=2.0, frame_rate=50.0, cross_attention=False, chroma_length=16)
REPLAN = ReplanConfig(keep_seconds=0.5, chunk=8)


@pytest.fixture(scope="module")
def melody_model():
    return MusicGen(random_codec(DEMO_CODEC, 1), random_lm(SHORT_MELODY, 2), random_text_encoder(DEMO_T5, 3),
                    ModelInfo("short-melody", None, "demo", "musicgen-melody"))


def chroma(T: int, step: int = 5, batch: int = 1) -> torch.Tensor:
    return torch.cat([melody_support.one_hot_chroma([(step * i + b) % 12 for i in range(T)]) for b in range(batch)])


def stream(model, batch=1, sampling=SamplingParams(seed=1), max_text=16, replan=REPLAN):
    return LMStream(model.lm, model.conditioner, batch, sampling, max_text=max_text, replan=replan)


def prefixed_state(model, texts=("pads",), melody=None, extra=40):
    """A state with the CFG rows' prefix prefilled -> (state, P)."""
    lm, cond = model.lm, model.conditioner
    buf = torch.zeros(2 * len(texts), lm.cfg.max_prefix, lm.cfg.dim)
    P = write_prefix(lm, buf, [cond(t) for t in texts], cond.null(), melody)
    state = LMState.allocate(lm.cfg, 2 * len(texts), P + extra, 0, torch.device("cpu"), torch.float32)
    lm.forward_embeds(buf[:, :P], state)
    return state, P


def test_config_and_weights_of_a_melody_lm(melody_model):
    lm = melody_model.lm
    assert lm.cfg.takes_melody and not lm.cfg.cross_attention and melody_model.takes_melody
    assert not any("cq" in k or "ckv" in k or "co." in k or "norm_cross" in k for k in lm.state_dict())
    assert lm.chroma_proj.weight.shape == (32, 12)
    with pytest.raises(ValueError, match="not both or neither"):
        LMConfig(cross_attention=True, chroma_length=235)
    with pytest.raises(ValueError, match="not both or neither"):
        LMConfig(cross_attention=False)


def test_chroma_window_tiles_truncates_and_moves():
    c = chroma(5)
    assert torch.equal(chroma_window(c, 12), torch.cat([c, c, c[:, :2]], 1))  # tiled end to end
    assert torch.equal(chroma_window(chroma(30), 12), chroma(30)[:, :12])  # truncated
    assert torch.equal(chroma_window(c, 7, offset=3), torch.cat([c[:, 3:], c, c[:, :0]], 1)[:, :7])


def test_prefix_rows_conditional_then_null(melody_model):
    lm, cond = melody_model.lm, melody_model.conditioner
    buf = torch.full((4, 60, 32), 7.0)
    conds = [cond("kick"), cond("a slow ambient pad")]
    P = write_prefix(lm, buf, conds, cond.null(), chroma(3, batch=2))
    L, S = 16, max(c.length for c in conds)
    assert P == L + S
    null = lm.project_chroma(torch.nn.functional.one_hot(torch.zeros(L, dtype=torch.long), 12).float())
    torch.testing.assert_close(buf[2, :L], null)  # null melody: one-hot bin 0 on every frame
    torch.testing.assert_close(buf[0, :L], lm.project_chroma(chroma_window(chroma(3), L))[0])
    assert (buf[2:, L:P] == 0).all() and (buf[0, L + conds[0].length : P] == 0).all()  # zero text padding
    torch.testing.assert_close(buf[1, L:P], conds[1].memory[0])


def test_step_by_step_equals_prefill_after_the_prefix(melody_model):
    lm = melody_model.lm
    ids = torch.randint(0, 2049, (2, 4, 30))
    melody = chroma(20)
    full_state, P = prefixed_state(melody_model, melody=melody)
    full = lm(ids, full_state, last_only=False)
    st, _ = prefixed_state(melody_model, melody=melody)
    steps = torch.cat([lm(ids[..., t : t + 1], st) for t in range(30)], 2)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=1e-5)
    # The prefix fed in chunks (as a re-prompt does), then the tokens: the same cache, the same logits.
    lm_, cond = melody_model.lm, melody_model.conditioner
    buf = torch.zeros(2, lm_.cfg.max_prefix, 32)
    write_prefix(lm_, buf, [cond("pads")], cond.null(), melody)
    chunked = LMState.allocate(lm_.cfg, 2, P + 40, 0, torch.device("cpu"), torch.float32)
    for a in range(0, P, 7):
        lm_.forward_embeds(buf[:, a : min(a + 7, P)], chunked)
    torch.testing.assert_close(lm(ids, chunked, last_only=False), full, atol=1e-5, rtol=1e-5)


def test_static_step_equals_eager_step(melody_model):
    lm = melody_model.lm
    ids = torch.randint(0, 2049, (2, 4, 10))
    eager, P = prefixed_state(melody_model, melody=chroma(9))
    static, _ = prefixed_state(melody_model, melody=chroma(9))
    lm(ids[..., :4], eager)
    lm(ids[..., :4], static)
    for t in range(4, 10):
        a = lm(ids[..., t : t + 1], eager)[:, :, 0]
        b = lm.step_static(ids[..., t : t + 1], static)
        static.pos += 1
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert int(static.pos_t) == eager.pos == P + 10


def test_forward_many_equals_each_streams_forward(melody_model):
    """Melody states with prefixes of different lengths at different positions, stepped in one batch."""
    lm = melody_model.lm

    def states():
        out = []
        for texts, melody, filled in ((["pads"], chroma(4), 3), ([None], None, 0), (["kick", "long slow pad"],
                                                                                     chroma(30, batch=2), 7)):
            st, _ = prefixed_state(melody_model, texts, melody)
            if filled:
                lm(torch.randint(0, 2049, (st.rows, 4, filled), generator=torch.Generator().manual_seed(filled)), st)
            out.append(st)
        return out

    alone, batched = states(), states()
    assert len({s.pos for s in alone}) == 3
    for _ in range(3):
        tokens = [torch.randint(0, 2049, (s.rows, 4, 1)) for s in alone]
        ref = [lm(t, s) for t, s in zip(tokens, alone)]
        for a, b in zip(lm.forward_many(tokens, batched), ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cache_holds_the_largest_prefix_and_is_allocated_once(melody_model):
    s = stream(melody_model, max_text=16)
    assert s.states[0].capacity == 16 + 16 + SHORT_MELODY.context  # chroma + text room + audio context
    s.start(["x"], None, total_frames=None, chroma=chroma(7))
    ptrs = [(st.k.data_ptr(), st.v.data_ptr()) for st in s.states] + [s.prefix_buf.data_ptr()]
    snap = s.snapshot()
    for _ in range(250):  # re-prompts at least twice
        s.step()
        assert s.active.pos <= s.active.capacity
    assert s.base > 0
    s.restore(snap)
    s.start(["a longer prompt"], None, total_frames=None)
    assert [(st.k.data_ptr(), st.v.data_ptr()) for st in s.states] + [s.prefix_buf.data_ptr()] == ptrs


def test_snapshot_restore_replays_with_the_melody(melody_model):
    s = stream(melody_model, sampling=SamplingParams(seed=7))
    s.start(["glitch"], None, total_frames=60, chroma=chroma(11))
    snap = s.snapshot()
    assert snap.prefix == 16 + s.conditions[0].length and snap.state.pos == snap.prefix + 1
    first = support.finish(s).clone()
    s.start(["other"], None, total_frames=30)  # the stream is reused meanwhile
    s.restore(snap)
    assert torch.equal(support.finish(s), first)  # prefix included: the retry replays exactly
    s.restore(snap)
    s.reseed(8)
    assert not torch.equal(support.finish(s), first)
    unconditioned = stream(melody_model, sampling=SamplingParams(seed=7))
    unconditioned.start(["glitch"], None, total_frames=60)  # the null melody: another take
    assert not torch.equal(support.finish(unconditioned), first)


def test_reprompt_feeds_the_prefix_and_hands_over_exactly(melody_model):
    """At the hand-over the new context holds the prefix (its chroma window moved to the context's start) and the
    last frames, and predicts what a cache prefilled with them in one pass predicts."""
    lm, cond = melody_model.lm, melody_model.conditioner
    melody = chroma(37, step=7)
    s = stream(melody_model, sampling=SamplingParams(top_k=1))
    s.start(["drone"], None, total_frames=None, chroma=melody)
    while s.catchup is None:
        s.step()
    cu, P = s.catchup, s.prefix
    prefix_steps = 1  # the step that began the re-prompt fed the first chunk
    assert cu.state.pos == REPLAN.chunk
    while cu.state.pos < P:  # the prefix first, a chunk per step, while the take goes on
        before = s.frames_ready
        s.step()
        prefix_steps += 1
        assert s.frames_ready == before + 1 and cu.state.pos == min(prefix_steps * REPLAN.chunk, P)
    assert prefix_steps == -(-P // REPLAN.chunk)
    while s.catchup is not None:
        s.step()
    assert s.active is cu.state and s.base == cu.base and chroma_offset(lm, cu.base) > 0
    buf = torch.zeros(2, lm.cfg.max_prefix, 32)
    assert write_prefix(lm, buf, s.conditions, cond.null(), melody, chroma_offset(lm, cu.base)) == P
    cols = columns_from_frames(s.ring, lm.cfg.delays, cu.base, s.column + 1, cu.base, lm.cfg.special, s.ring_size)
    ref_state = LMState.allocate(lm.cfg, 2, s.active.capacity, 0, torch.device("cpu"), torch.float32)
    ref = lm.forward_embeds(torch.cat([buf[:, :P], lm.embed(torch.cat([cols, cols]))], 1), ref_state)[:, :, 0]
    mine = lm(s.inp, s.active)[:, :, 0]
    torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)


def test_endless_melody_stream_outlives_the_context(melody_model):
    cfg = melody_model.lm.cfg
    s = stream(melody_model, batch=2, sampling=SamplingParams(seed=5))
    s.start(["drone", None], None, total_frames=None, chroma=chroma(9, batch=2))
    switches, last_base = 0, s.base
    for _ in range(5 * cfg.context):
        before = s.frames_ready
        s.step()
        assert s.frames_ready == before + (1 if s.column > cfg.max_delay else 0)  # one frame per step, no pause
        if s.base != last_base:
            switches, last_base = switches + 1, s.base
    assert switches >= 4
    assert int(s.read_frames(s.frames_ready - 50, s.frames_ready).max()) < 2048


def test_step_streams_equals_stepping_each_alone(melody_model):
    def trio(_batched):
        endless = stream(melody_model, sampling=SamplingParams(seed=11))
        endless.start(["drone"], None, total_frames=None, chroma=chroma(13))
        pair = stream(melody_model, batch=2, sampling=SamplingParams(seed=12, top_k=50))
        pair.start(["kick", "a slow ambient pad"], None, total_frames=150, chroma=chroma(40, batch=2))
        short = stream(melody_model, sampling=SamplingParams(seed=13))
        short.start([None], torch.randint(0, 2048, (1, 4, 20), generator=torch.Generator().manual_seed(3)),
                    total_frames=40)
        return [endless, pair, short]

    alone, together = trio(False), trio(True)  # logits within LOGIT_ATOL, tokens equal up to a near tie
    near_ties.stepped_together_equals_alone(alone, together, 2 * SHORT_MELODY.context)
    assert together[0].base > 0 and together[1].done and together[2].done


def test_bad_melody_requests_are_refused(melody_model):
    from segue.models.loading.demo import build_demo

    codec, lm, text = build_demo()
    plain = MusicGen(codec, lm, text, ModelInfo("demo", None, "demo", "musicgen")).stream(1)
    with pytest.raises(ValueError, match="takes no melody"):
        plain.start(["x"], None, total_frames=5, chroma=chroma(4))
    s = stream(melody_model)
    for bad, message in ((chroma(4)[..., :11], r"\[1, T, 12\]"), (chroma(4, batch=2), r"\[1, T, 12\]"),
                         (chroma(4)[0], r"\[1, T, 12\]"), (torch.zeros(1, 0, 12), r"\[1, T, 12\]"),
                         (torch.full((1, 3, 12), float("nan")), "NaN")):
        with pytest.raises(ValueError, match=message):
            s.start(["x"], None, total_frames=5, chroma=bad)
    with pytest.raises(ValueError, match="at most 16"):
        s.start(["x" * 40], None, total_frames=5)  # longer than this stream's prefix room
    with pytest.raises(ValueError, match="positions cover"):
        stream(melody_model, max_text=1000)


def test_static_step_streams_equal_eager_ones(melody_model, monkeypatch):
    """Melody streams on the fixed-shape step (what a CUDA graph captures; run eagerly here, on CPU) through a
    re-prompt, batched beside an eager one: the frames of eager streams stepped alone (test_cuda.py captures
    for real)."""
    import segue.models.lm.stream as stream_mod
    from segue.models.lm.cuda_graph import CUDAGraphed

    monkeypatch.setattr(stream_mod, "CUDAGraphed", lambda fn, enabled, gens: CUDAGraphed(fn, False, gens))

    def trio(graphs):
        out = []
        for seed, text, melody in ((1, "pads", chroma(9)), (2, None, None), (3, "kick", chroma(20, step=7))):
            s = stream(melody_model, sampling=SamplingParams(top_k=1, seed=seed))
            s.use_graphs = graphs and seed != 2
            s.start([text], None, total_frames=150, chroma=melody)
            out.append(s)
        return out

    mixed = near_ties.batched_equals_alone(trio)  # trio(False): all eager, stepped alone
    assert [bool(s._graphs) for s in mixed] == [True, False, True] and mixed[0].base > 0
