"""SEANet's padded convolutions, each with a full pass and an exact streaming form.

The full pass follows EnCodec (audiocraft `modules/conv.py`, transformers `EncodecConv1d`): a non-causal conv of
effective kernel k and stride s pads P = k - s samples, ceil(P/2) on the left and floor(P/2) on the right, plus
`extra` samples on the right so that the last window is full. With reflect padding the left pad mirrors the
first samples and the right pad mirrors the last ones, so both ends depend on data:

    input      x0 x1 x2 x3 ... x(N-1)
    padded  x3 x2 x1 | x0 x1 ... x(N-1) | x(N-2) x(N-3) ...
            ^^^^^^^^ left pad needs x1..x3: wait for them before the first output
                                          ^^^^^^^^^^^^^^ right pad only exists at the end of the stream

The streaming form therefore (1) holds input until the left pad is known, (2) emits every output whose window is
complete, keeping the unfinished window in a fixed tail, and (3) on `flush` appends the right pad computed from the
total length. Outputs equal the full pass sample for sample; the held-back part is the layer's look-ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from segue.models.streaming import Tail


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """F.pad that also reflects inputs shorter than the pad (zero-extends first, as EnCodec does)."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode="constant", value=0.0)
    length = x.shape[-1]
    max_pad = max(left, right)
    extra = 0
    if length <= max_pad:
        extra = max_pad - length + 1
        x = F.pad(x, (0, extra))
    padded = F.pad(x, (left, right), mode="reflect")
    return padded[..., : padded.shape[-1] - extra]


class StreamingModule(nn.Module):
    """A time layer `[B, C, T] -> [B, C', T']` with a full pass and a chunked pass that reproduces it.

    `init_state` allocates everything the chunked pass needs; `step` consumes a chunk and returns every output it
    determines; `flush` ends the stream and returns the rest.
    """

    out_channels: int

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype):  # pragma: no cover - interface
        raise NotImplementedError

    def step(self, x: torch.Tensor, state) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def flush(self, state) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def empty(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        return like.new_zeros(batch, self.out_channels, 0)


class ELU(StreamingModule):
    """Point-wise, so its stream is itself."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(x)

    def init_state(self, batch, device, dtype):
        return None

    def step(self, x, state):
        return F.elu(x)

    def flush(self, state):
        return None


@dataclass
class ConvState:
    tail: Tail  # unconsumed padded input (before the first output: raw input waiting for the left pad)
    hist: Tail | None  # last raw samples, to mirror at the end of the stream (reflect only)
    n_in: int = 0
    started: bool = False
    batch: int = 1


class Conv1d(StreamingModule):
    """EnCodec's padded Conv1d (weight norm already folded into `conv.weight`)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1,
        causal: bool = False, pad_mode: str = "reflect", group_norm: bool = False,
    ):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation)
        self.norm = nn.GroupNorm(1, out_channels) if group_norm else None
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = stride
        self.k_eff = (kernel_size - 1) * dilation + 1
        total = self.k_eff - stride
        self.pad_left, self.pad_right = (total, 0) if causal else (total - total // 2, total // 2)
        self.pad_mode = pad_mode
        # Input needed before the first output: its window, and with reflect the samples the left pad mirrors.
        self.start_needed = self.k_eff - self.pad_left
        if pad_mode == "reflect":
            self.start_needed = max(self.start_needed, self.pad_left + 1)
        # The right pad mirrors at most pad_right + stride - 1 samples, which needs that many + 1 of history.
        self.hist_len = self.pad_right + stride if pad_mode == "reflect" else 0

    def extra_padding(self, length: int) -> int:
        # Right padding that makes the last window full: ceil(N / s) * s - N (EnCodec's formula, in integers).
        return (-length) % self.stride

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y if self.norm is None else self.norm(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad1d(x, self.pad_left, self.pad_right + self.extra_padding(x.shape[-1]), self.pad_mode)
        return self._conv(x)

    # -- streaming --------------------------------------------------------------------------------------------
    def init_state(self, batch, device, dtype):
        if self.norm is not None:
            raise ValueError("time_group_norm normalises a whole chunk at once; this codec cannot stream")
        hist = Tail(batch, self.in_channels, self.hist_len, device, dtype) if self.hist_len else None
        return ConvState(Tail(batch, self.in_channels, self.k_eff - 1, device, dtype), hist, batch=batch)

    def _left_pad(self, raw: torch.Tensor) -> torch.Tensor:
        if self.pad_left == 0:
            return raw[..., :0]
        if self.pad_mode == "reflect":
            return raw[..., 1 : self.pad_left + 1].flip(-1)
        return raw.new_zeros(raw.shape[0], raw.shape[1], self.pad_left)

    def _consume(self, work: torch.Tensor, state: ConvState) -> torch.Tensor:
        s = self.stride
        n_out = (work.shape[-1] - self.k_eff) // s + 1 if work.shape[-1] >= self.k_eff else 0
        y = self._conv(work[..., : (n_out - 1) * s + self.k_eff]) if n_out > 0 else self.empty(state.batch, work)
        state.tail.set(work[..., n_out * s :])
        return y

    def step(self, x: torch.Tensor, state: ConvState) -> torch.Tensor:
        state.n_in += x.shape[-1]
        if state.hist is not None and x.shape[-1]:
            state.hist.set(torch.cat([state.hist.get(), x], -1)[..., -self.hist_len :])
        work = torch.cat([state.tail.get(), x], -1)
        if not state.started:
            if work.shape[-1] < self.start_needed:
                state.tail.set(work)
                return self.empty(state.batch, x)
            work = torch.cat([self._left_pad(work), work], -1)
            state.started = True
        return self._consume(work, state)

    def flush(self, state: ConvState) -> torch.Tensor:
        n = state.n_in
        if not state.started:  # the whole (short) stream is still here: run the exact full pass on it
            raw = state.tail.get()
            state.tail.set(raw[..., :0])
            return self.forward(raw) if n else None
        right = self.pad_right + self.extra_padding(n)
        work = state.tail.get()
        if right:
            if self.pad_mode == "reflect":
                pad = state.hist.get()[..., -right - 1 : -1].flip(-1)
            else:
                pad = work.new_zeros(work.shape[0], work.shape[1], right)
            work = torch.cat([work, pad], -1)
        return self._consume(work, state)


@dataclass
class ConvTrState:
    tail: Tail  # overlap of the last input's window with the next one, without bias
    n_in: int = 0
    trimmed: int = 0  # samples already dropped from the left edge
    batch: int = 1


# Below this many input channels oneDNN's transposed convolution is as fast as the GEMM form on CPU; above it, at the
# few frames a streaming push carries, it is not (AMD EPYC, one thread, 1024 -> 512 channels, k 16, s 8: 45 ms
# for 5 frames against 6.2 ms; 29 against 9.1 for 25; the same for 1 frame and 1500). Measured by
# bench/engine_budget.py's codec rows.
GEMM_MIN_CHANNELS = 512


def conv_transpose_gemm(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """F.conv_transpose1d(x, weight, None, stride) for a kernel of twice the stride (every EnCodec upsampling
    layer), as one GEMM and an overlap-add of the two halves of each frame's columns.

    x [B, C_in, T], weight [C_in, C_out, 2 * stride] -> [B, C_out, (T + 1) * stride]. Equal up to float rounding
    (the sums run in another order: about 1e-6 at unit scale)."""
    B, cin, T = x.shape
    cout, k = weight.shape[1], weight.shape[2]
    if k != 2 * stride:
        raise ValueError(f"kernel {k} is not twice the stride {stride}; use F.conv_transpose1d")
    cols = torch.matmul(x.transpose(1, 2), weight.reshape(cin, cout * k)).view(B, T, cout, 2, stride)
    y = x.new_empty(B, cout, T + 1, stride)
    y[:, :, :T] = cols[:, :, :, 0].transpose(1, 2)  # each frame's first half starts at its own hop
    y[:, :, T] = 0.0
    y[:, :, 1:] += cols[:, :, :, 1].transpose(1, 2)  # ... its second half overlaps the next frame's
    return y.view(B, cout, (T + 1) * stride)


class ConvTranspose1d(StreamingModule):
    """EnCodec's ConvTranspose1d: full output trimmed by P = k - s (left ceil/right floor, or causal ratio)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, causal: bool = False,
        trim_right_ratio: float = 1.0, group_norm: bool = False,
    ):
        super().__init__()
        self.convtr = nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride)
        self.norm = nn.GroupNorm(1, out_channels) if group_norm else None
        self.out_channels = out_channels
        self.stride = stride
        self.overlap = kernel_size - stride
        self.trim_right = math.ceil(self.overlap * trim_right_ratio) if causal else self.overlap // 2
        self.trim_left = self.overlap - self.trim_right
        self.gemm = kernel_size == 2 * stride and in_channels >= GEMM_MIN_CHANNELS  # on CPU (see GEMM_MIN_CHANNELS)

    def _transpose(self, x: torch.Tensor) -> torch.Tensor:
        """The transposed convolution without its bias: [B, C_in, n] -> [B, C_out, (n - 1) * s + k]."""
        if self.gemm and x.device.type == "cpu":
            return conv_transpose_gemm(x, self.convtr.weight, self.stride)
        return F.conv_transpose1d(x, self.convtr.weight, None, self.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._transpose(x) + self.convtr.bias[:, None]
        if self.norm is not None:
            y = self.norm(y)
        return y[..., self.trim_left : y.shape[-1] - self.trim_right]

    def init_state(self, batch, device, dtype):
        if self.norm is not None:
            raise ValueError("time_group_norm normalises a whole chunk at once; this codec cannot stream")
        return ConvTrState(Tail(batch, self.out_channels, self.overlap, device, dtype), batch=batch)

    def _trim_left(self, y: torch.Tensor, state: ConvTrState) -> torch.Tensor:
        drop = min(self.trim_left - state.trimmed, y.shape[-1])
        state.trimmed += drop
        return y[..., drop:]

    def step(self, x: torch.Tensor, state: ConvTrState) -> torch.Tensor:
        n = x.shape[-1]
        if n == 0:
            return self.empty(state.batch, x)
        y = self._transpose(x)  # [B, C, (n - 1) * s + k]
        if state.n_in:
            y[..., : self.overlap] += state.tail.get()
        state.n_in += n
        done = n * self.stride
        state.tail.set(y[..., done:])
        out = y[..., :done] + self.convtr.bias[:, None]
        return self._trim_left(out, state)

    def flush(self, state: ConvTrState) -> torch.Tensor:
        if not state.n_in:
            return None
        out = state.tail.get() + self.convtr.bias[:, None]
        out = out[..., : out.shape[-1] - self.trim_right]
        state.tail.set(out[..., :0])
        return self._trim_left(out, state)


@dataclass
class LSTMState:
    h: torch.Tensor  # [layers, B, C]
    c: torch.Tensor  # [layers, B, C]


class LSTM(StreamingModule):
    """Unidirectional LSTM with a skip connection: y = lstm(x) + x. Streams by carrying (h, c)."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)
        self.out_channels = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)  # [T, B, C]
        y = self.lstm(x)[0] + x
        return y.permute(1, 2, 0)

    def init_state(self, batch, device, dtype):
        shape = (self.lstm.num_layers, batch, self.out_channels)
        return LSTMState(torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))

    def step(self, x: torch.Tensor, state: LSTMState) -> torch.Tensor:
        if x.shape[-1] == 0:
            return x
        x = x.permute(2, 0, 1)  # [T, B, C]
        if x.device.type == "cpu":
            return (self._cells(x, state) + x).permute(1, 2, 0)
        y, (h, c) = self.lstm(x, (state.h, state.c))
        state.h.copy_(h)
        state.c.copy_(c)
        return (y + x).permute(1, 2, 0)

    def _cells(self, x: torch.Tensor, state: LSTMState) -> torch.Tensor:
        """nn.LSTM's recurrence written out, for the few frames of a streaming push on CPU: oneDNN's LSTM sets up
        its primitive on every call, which costs more than the work there (AMD EPYC, one thread, 2 layers of 1024:
        28 ms for 1 frame and 22 ms for 5, against 3 and 12 ms here). The input projections of a layer run as one
        GEMM over the push, the recurrent ones frame by frame. x [T, B, C] -> [T, B, C]; state updated in place.
        Equal to nn.LSTM up to float rounding (about 1e-7)."""
        T = x.shape[0]
        for i in range(self.lstm.num_layers):
            w_ih, w_hh = getattr(self.lstm, f"weight_ih_l{i}"), getattr(self.lstm, f"weight_hh_l{i}")
            gates_in = F.linear(x, w_ih, getattr(self.lstm, f"bias_ih_l{i}") + getattr(self.lstm, f"bias_hh_l{i}"))
            h, c = state.h[i], state.c[i]  # [B, C], views written in place
            out = x.new_empty(x.shape)  # [T, B, C]
            for t in range(T):
                i_g, f_g, g_g, o_g = torch.addmm(gates_in[t], h, w_hh.t()).chunk(4, dim=1)  # PyTorch's gate order
                c.mul_(torch.sigmoid(f_g)).add_(torch.sigmoid(i_g) * torch.tanh(g_g))
                h.copy_(torch.sigmoid(o_g) * torch.tanh(c))
                out[t] = h
            x = out
        return x

    def flush(self, state: LSTMState) -> torch.Tensor:
        return None


class Sequential(StreamingModule):
    """Layers applied in order; a chunk flows through every layer's stream, `flush` drains them in order."""

    def __init__(self, layers: list[StreamingModule]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_channels = layers[-1].out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def init_state(self, batch, device, dtype):
        return [layer.init_state(batch, device, dtype) for layer in self.layers]

    def step(self, x: torch.Tensor, state: list) -> torch.Tensor:
        for layer, st in zip(self.layers, state):
            x = layer.step(x, st)
        return x

    def flush(self, state: list) -> torch.Tensor | None:
        x = None
        for layer, st in zip(self.layers, state):
            if x is not None:
                x = layer.step(x, st)
            rest = layer.flush(st)
            if rest is not None:
                x = rest if x is None else torch.cat([x, rest], -1)
        return x
