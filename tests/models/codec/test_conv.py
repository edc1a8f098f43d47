"""Each streaming layer reproduces its own full pass, for every chunking, and emits exactly what it can."""

import random

import pytest
import torch

from torch.nn import functional as F

from segue.models.codec.conv import (GEMM_MIN_CHANNELS, LSTM, Conv1d, ConvTranspose1d, conv_transpose_gemm,
                                     pad1d)
from segue.models.codec.encodec import emitted


def run_stream(layer, x, sizes):
    """Feed x [B, C, N] in chunks of the given sizes (cycled), flush, return (output, emitted count per chunk)."""
    state = layer.init_state(x.shape[0], x.device, x.dtype)
    outs, counts, t, i = [], [], 0, 0
    while t < x.shape[-1]:
        chunk = x[..., t : t + sizes[i % len(sizes)]]
        y = layer.step(chunk, state)
        outs.append(y)
        t += chunk.shape[-1]
        i += 1
        counts.append((t, y.shape[-1]))
    tail = layer.flush(state)
    if tail is not None:
        outs.append(tail)
    return torch.cat(outs, -1), counts


CONVS = [
    dict(k=7, s=1, d=1, causal=False, mode="reflect"),
    dict(k=3, s=1, d=2, causal=False, mode="reflect"),
    dict(k=8, s=4, d=1, causal=False, mode="reflect"),
    dict(k=10, s=5, d=1, causal=False, mode="reflect"),  # odd padding total: the extra sample goes left
    dict(k=16, s=8, d=1, causal=False, mode="constant"),
    dict(k=8, s=4, d=1, causal=True, mode="reflect"),
    dict(k=1, s=1, d=1, causal=False, mode="reflect"),
]


def _conv_id(spec):
    return f"k{spec['k']}s{spec['s']}d{spec['d']}{'-causal' if spec['causal'] else ''}-{spec['mode']}"


@pytest.mark.parametrize("spec", CONVS, ids=_conv_id)
@pytest.mark.parametrize("sizes", [[1], [2], [7], [50], "random"])
@pytest.mark.parametrize("length", [1, 3, 9, 157])
def test_conv_stream_equals_full(spec, sizes, length):
    torch.manual_seed(length)
    conv = Conv1d(3, 5, spec["k"], spec["s"], spec["d"], spec["causal"], spec["mode"])
    x = torch.randn(2, 3, length)
    if sizes == "random":
        sizes = [random.Random(length).randint(1, 13) for _ in range(64)]
    y, counts = run_stream(conv, x, sizes)
    ref = conv(x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)
    emitted_so_far = 0
    for n_in, got in counts:  # the closed-form look-ahead is what the stream really holds back
        emitted_so_far += got
        assert emitted_so_far == emitted(conv, n_in)


@pytest.mark.parametrize("k,s,causal", [(16, 8, False), (10, 5, False), (8, 4, True)])
@pytest.mark.parametrize("sizes", [[1], [3], "random"])
def test_conv_transpose_stream_equals_full(k, s, causal, sizes):
    layer = ConvTranspose1d(4, 3, k, s, causal=causal)
    x = torch.randn(2, 4, 23)
    if sizes == "random":
        sizes = [random.Random(k).randint(1, 6) for _ in range(32)]
    y, counts = run_stream(layer, x, sizes)
    torch.testing.assert_close(y, layer(x), atol=1e-6, rtol=0)
    total = 0
    for n_in, got in counts:
        total += got
        assert total == emitted(layer, n_in)


@pytest.mark.parametrize("cin,cout,s,T,B", [(8, 3, 8, 1, 1), (16, 5, 5, 7, 2), (32, 4, 4, 40, 3)])
def test_conv_transpose_gemm_is_the_transposed_convolution(cin, cout, s, T, B):
    x = torch.randn(B, cin, T)
    w = torch.randn(cin, cout, 2 * s)
    torch.testing.assert_close(conv_transpose_gemm(x, w, s), F.conv_transpose1d(x, w, None, s), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="twice the stride"):
        conv_transpose_gemm(x, torch.randn(cin, cout, 2 * s + 1), s)


@pytest.mark.parametrize("sizes", [[1], [5], "random"])
def test_wide_conv_transpose_takes_the_gemm_and_still_streams_exactly(sizes):
    """EnCodec 32 kHz's first upsampling layer is 1024 channels wide: on CPU it runs as a GEMM (see
    GEMM_MIN_CHANNELS), in the full pass and in the stream alike; both equal the plain transposed convolution."""
    layer = ConvTranspose1d(GEMM_MIN_CHANNELS, 6, 16, 8)
    assert layer.gemm
    x = torch.randn(2, GEMM_MIN_CHANNELS, 19) * 0.1
    with torch.no_grad():
        plain = F.conv_transpose1d(x, layer.convtr.weight, layer.convtr.bias, 8)[..., 4:-4]
        torch.testing.assert_close(layer(x), plain, atol=1e-5, rtol=1e-5)
        if sizes == "random":
            sizes = [random.Random(3).randint(1, 6) for _ in range(32)]
        y, _ = run_stream(layer, x, sizes)
    torch.testing.assert_close(y, plain, atol=1e-5, rtol=1e-5)


def test_lstm_stream_carries_state():
    """On CPU the stream runs the recurrence written out (`LSTM._cells`); the full pass is nn.LSTM's."""
    layer = LSTM(6, 2)
    x = torch.randn(2, 6, 40)
    y, _ = run_stream(layer, x, [1, 5, 3])
    torch.testing.assert_close(y, layer(x), atol=1e-6, rtol=1e-5)


def test_empty_chunks_change_nothing():
    conv = Conv1d(2, 2, 7)
    x = torch.randn(1, 2, 30)
    state = conv.init_state(1, x.device, x.dtype)
    outs = []
    for t in range(0, 30, 5):
        outs.append(conv.step(x[..., :0], state))
        outs.append(conv.step(x[..., t : t + 5], state))
    outs.append(conv.flush(state))
    torch.testing.assert_close(torch.cat(outs, -1), conv(x))


def test_pad1d_reflects_inputs_shorter_than_the_pad():
    x = torch.arange(3.0).view(1, 1, 3)
    # EnCodec zero-extends first when the input is not longer than the pad.
    assert pad1d(x, 4, 0, "reflect").shape[-1] == 7
    assert pad1d(x, 2, 1, "reflect").tolist() == [[[2.0, 1.0, 0.0, 1.0, 2.0, 1.0]]]


def test_tails_are_allocated_once():
    conv = Conv1d(2, 2, 8, 4)
    state = conv.init_state(1, torch.device("cpu"), torch.float32)
    ptr = state.tail.buf.data_ptr()
    for _ in range(20):
        conv.step(torch.randn(1, 2, 3), state)
    assert state.tail.buf.data_ptr() == ptr
    assert state.tail.buf.shape[-1] == conv.k_eff - 1
