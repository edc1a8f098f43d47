"""GPU-only checks: the CUDA-graph step, low precision on the device, and the codec on the device.

Skipped where there is no CUDA device (CI never has one); the graph step's arithmetic is also checked on CPU in
test_stream.py::test_static_step_equals_eager_step.
"""

import pytest
import torch

import melody_support
import near_ties
import support
from segue.models.lm.config import SamplingParams
from segue.models.loading.builder import load_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def greedy_stream(model, frames, graphs, chroma=None):
    s = model.stream(1, SamplingParams(top_k=1), cuda_graphs=graphs)
    s.start(["glass harmonica"], None, total_frames=frames, chroma=chroma)
    return s


def greedy(model, frames, graphs):
    s = greedy_stream(model, frames, graphs)
    return s, support.finish(s).cpu()


def each_steps(streams):
    for s in streams:
        s.step()


def test_graph_step_equals_eager_step(tiny):
    """The captured step (fixed shapes, masked attention over the whole cache) against the eager one: other
    kernels, so the same take up to a near tie (logits within near_ties.LOGIT_ATOL while the graph's warm-up steps
    still run eagerly; tokens at every step)."""
    model = load_model(str(tiny[2]), "cuda", torch.float32)
    s_graph = greedy_stream(model, 40, True)
    near_ties.assert_same_takes([greedy_stream(model, 40, False)], [s_graph], each_steps)
    assert s_graph.use_graphs and any(g.graph is not None for g in s_graph._graphs.values())


def test_graph_survives_restore_and_sampling_changes(tiny):
    model = load_model(str(tiny[2]), "cuda", torch.float32)
    s = model.stream(1, SamplingParams(seed=3), cuda_graphs=True)
    s.start(["x"], None, total_frames=60)
    snap = s.snapshot()
    first = support.finish(s).cpu()
    s.restore(snap)
    assert torch.equal(support.finish(s).cpu(), first)  # replayed through the same captured graph
    s.restore(snap)
    s.set_sampling(SamplingParams(temperature=0.7, top_k=50, seed=3))  # another graph, same buffers
    support.finish(s)


def test_bfloat16_on_gpu_tracks_float32(tiny):
    m32 = load_model(str(tiny[2]), "cuda", torch.float32)
    m16 = load_model(str(tiny[2]), "cuda", torch.bfloat16)
    _, a = greedy(m32, 20, True)
    _, b = greedy(m16, 20, True)
    assert (a == b).float().mean() > 0.5  # low precision may flip near-ties, not the whole take


def test_codec_on_gpu_equals_cpu(tiny_segue, tiny):
    gpu = load_model(str(tiny[2]), "cuda").codec
    x = torch.randn(1, 1, 640 * 20) * 0.2
    codes = tiny_segue.codec.encode(x)
    with torch.no_grad():
        z = tiny_segue.codec.encoder(x)  # [1, D, T] the CPU's latents
    near_ties.assert_codes_equal_up_to_near_ties(tiny_segue.codec.quantizer, z, gpu.encode(x.cuda()), codes)
    torch.testing.assert_close(gpu.decode(codes.cuda()).cpu(), tiny_segue.codec.decode(codes), atol=1e-4, rtol=0)


def test_step_streams_mixes_graph_and_eager_streams(tiny):
    model = load_model(str(tiny[2]), "cuda", torch.float32)

    def streams(graphs):
        out = []
        for text, g in (("x", True), ("pads", False), (None, True)):
            s = model.stream(1, SamplingParams(top_k=1), cuda_graphs=g and graphs)
            s.start([text], None, total_frames=30)
            out.append(s)
        return out

    mixed = near_ties.batched_equals_alone(streams)
    assert mixed[0].use_graphs and not mixed[1].use_graphs


def test_melody_graph_step_equals_eager_step_and_replays(tiny_melody):
    """MusicGen-Melody on the device: the prefix in the captured cache, no cross-attention in the graph. The graph
    against the eager step: the same take up to a near tie; each replayed from its snapshot: bit for bit."""
    model = load_model(str(tiny_melody[2]), "cuda", torch.float32)
    melody = melody_support.one_hot_chroma([(5 * i) % 12 for i in range(30)]).cuda()
    streams = [greedy_stream(model, 40, graphs, melody) for graphs in (False, True)]
    snaps = [s.snapshot() for s in streams]
    near_ties.assert_same_takes(streams[:1], streams[1:], each_steps)
    for s, snap in zip(streams, snaps):
        first = s.read_frames(0, s.total).cpu()
        s.restore(snap)
        assert torch.equal(support.finish(s).cpu(), first)
