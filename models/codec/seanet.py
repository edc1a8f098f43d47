"""SEANet encoder and decoder, laid out index for index like EnCodec so checkpoint keys map one to one.

Encoder (32 kHz): 0 Conv 1->64 k7 | 1 Res(64) 2 ELU 3 Conv k8 s4 | 4 Res 5 ELU 6 Conv k8 s4 |
7 Res 8 ELU 9 Conv k10 s5 | 10 Res 11 ELU 12 Conv k16 s8 | 13 LSTM(1024) | 14 ELU | 15 Conv 1024->128 k7.
Decoder (32 kHz): 0 Conv 128->1024 k7 | 1 LSTM | 2 ELU 3 ConvT k16 s8 4 Res | ... | 14 ELU | 15 Conv 64->1 k7.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segue.models.codec.config import CodecConfig
from segue.models.codec.conv import ELU, LSTM, Conv1d, ConvTranspose1d, Sequential, StreamingModule
from segue.models.streaming import Tail


@dataclass
class ResBlockState:
    block: list
    shortcut: object
    skip: Tail  # shortcut outputs waiting for the (delayed) block outputs they are added to


class ResBlock(StreamingModule):
    """x -> shortcut(x) + block(x), block = ELU, Conv(k, dilation), ELU, Conv(1). Keys: block.1, block.3, shortcut."""

    def __init__(self, cfg: CodecConfig, dim: int, dilation: int):
        super().__init__()
        hidden = dim // cfg.compress
        conv = dict(causal=cfg.causal, pad_mode=cfg.pad_mode, group_norm=cfg.norm == "time_group_norm")
        self.block = Sequential([
            ELU(dim),
            Conv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, **conv),
            ELU(hidden),
            Conv1d(hidden, dim, 1, **conv),
        ])
        self.shortcut = None if cfg.true_skip else Conv1d(dim, dim, 1, **conv)
        self.out_channels = dim
        # The block holds back at most what its convs' tails hold.
        self.max_delay = sum(layer.k_eff - 1 for layer in self.block.layers if isinstance(layer, Conv1d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        return skip + self.block(x)

    def init_state(self, batch, device, dtype):
        shortcut = None if self.shortcut is None else self.shortcut.init_state(batch, device, dtype)
        skip = Tail(batch, self.out_channels, self.max_delay, device, dtype)
        return ResBlockState(self.block.init_state(batch, device, dtype), shortcut, skip)

    def _combine(self, skip: torch.Tensor | None, out: torch.Tensor | None, state: ResBlockState) -> torch.Tensor:
        pending = state.skip.get() if skip is None else torch.cat([state.skip.get(), skip], -1)
        n = 0 if out is None else out.shape[-1]
        state.skip.set(pending[..., n:])
        return pending[..., :n] + out if n else pending[..., :0]

    def step(self, x: torch.Tensor, state: ResBlockState) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut.step(x, state.shortcut)
        return self._combine(skip, self.block.step(x, state.block), state)

    def flush(self, state: ResBlockState) -> torch.Tensor | None:
        skip = None if self.shortcut is None else self.shortcut.flush(state.shortcut)
        out = self._combine(skip, self.block.flush(state.block), state)
        return out if out.shape[-1] else None


def _conv_kwargs(cfg: CodecConfig) -> dict:
    return dict(causal=cfg.causal, pad_mode=cfg.pad_mode, group_norm=cfg.norm == "time_group_norm")


def build_encoder(cfg: CodecConfig) -> Sequential:
    conv = _conv_kwargs(cfg)
    layers: list[StreamingModule] = [Conv1d(cfg.channels, cfg.n_filters, cfg.kernel_size, **conv)]
    mult = 1
    for ratio in reversed(cfg.ratios):
        dim = mult * cfg.n_filters
        layers += [ResBlock(cfg, dim, cfg.dilation_base**j) for j in range(cfg.n_residual_layers)]
        layers += [ELU(dim), Conv1d(dim, dim * 2, 2 * ratio, stride=ratio, **conv)]
        mult *= 2
    top = mult * cfg.n_filters
    layers += [LSTM(top, cfg.lstm_layers)] if cfg.lstm_layers else []
    layers += [ELU(top), Conv1d(top, cfg.dimension, cfg.last_kernel_size, **conv)]
    return Sequential(layers)


def build_decoder(cfg: CodecConfig) -> Sequential:
    conv = _conv_kwargs(cfg)
    mult = 2 ** len(cfg.ratios)
    top = mult * cfg.n_filters
    layers: list[StreamingModule] = [Conv1d(cfg.dimension, top, cfg.kernel_size, **conv)]
    layers += [LSTM(top, cfg.lstm_layers)] if cfg.lstm_layers else []
    for ratio in cfg.ratios:
        dim = mult * cfg.n_filters
        layers += [
            ELU(dim),
            ConvTranspose1d(dim, dim // 2, 2 * ratio, ratio, causal=cfg.causal, trim_right_ratio=cfg.trim_right_ratio,
                            group_norm=conv["group_norm"]),
        ]
        layers += [ResBlock(cfg, dim // 2, cfg.dilation_base**j) for j in range(cfg.n_residual_layers)]
        mult //= 2
    layers += [ELU(cfg.n_filters), Conv1d(cfg.n_filters, cfg.channels, cfg.last_kernel_size, **conv)]
    return Sequential(layers)

