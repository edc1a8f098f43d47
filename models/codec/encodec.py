"""EnCodec: audio [B, C, N] <-> codes [B, K, T], in one pass or as exact streams.

The codec object holds weights only. `EncoderStream` / `DecoderStream` own everything a stream needs (conv tails,
LSTM state, counters), allocated once at creation; they can be snapshotted and restored in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from segue.models.codec.config import CodecConfig
from segue.models.codec.conv import Conv1d, ConvTranspose1d, Sequential, StreamingModule
from segue.models.codec.quantizer import ResidualVQ
from segue.models.codec.seanet import ResBlock, build_decoder, build_encoder
from segue.models.streaming import restore_, snapshot


def emitted(module: StreamingModule, n: int) -> int:
    """Outputs a layer's stream has produced after `n` inputs (before flush): the look-ahead, in closed form."""
    if isinstance(module, Sequential):
        for layer in module.layers:
            n = emitted(layer, n)
        return n
    if isinstance(module, Conv1d):
        if n < module.start_needed:
            return 0
        return max(0, (n + module.pad_left - module.k_eff) // module.stride + 1)
    if isinstance(module, ConvTranspose1d):
        return max(0, n * module.stride - module.trim_left) if n else 0
    if isinstance(module, ResBlock):
        return emitted(module.block, n)
    return n  # ELU, LSTM: sample for sample


class Encodec(nn.Module):
    """SEANet encoder + residual VQ + SEANet decoder for one `CodecConfig`."""

    def __init__(self, cfg: CodecConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = build_encoder(cfg)
        self.decoder = build_decoder(cfg)
        self.quantizer = ResidualVQ(cfg.n_q, cfg.bins, cfg.dimension)

    @property
    def device(self) -> torch.device:
        return self.quantizer.codebooks.device

    @property
    def dtype(self) -> torch.dtype:
        return self.quantizer.codebooks.dtype

    # -- checks that turn shape mistakes into sentences ---------------------------------------------------------
    def _check_audio(self, audio: torch.Tensor) -> None:
        if audio.dim() != 3 or audio.shape[1] != self.cfg.channels:
            raise ValueError(f"audio must be [batch, {self.cfg.channels}, samples], got {list(audio.shape)}")

    def check_codes(self, codes: torch.Tensor) -> None:
        """codes [B, K, T]: integers, 1 to n_q codebooks, every value a codebook entry. Raises ValueError."""
        if codes.dim() != 3:
            raise ValueError(f"codes must be [batch, codebooks, frames], got {list(codes.shape)}")
        if codes.dtype.is_floating_point or codes.dtype == torch.bool:
            raise ValueError(f"codes must be integers, got {codes.dtype}")
        if not 1 <= codes.shape[1] <= self.cfg.n_q:
            raise ValueError(f"this codec has {self.cfg.n_q} codebooks; got codes for {codes.shape[1]}")
        if codes.numel():
            lo, hi = int(codes.min()), int(codes.max())
            if lo < 0 or hi >= self.cfg.bins:
                raise ValueError(f"codes must lie in [0, {self.cfg.bins - 1}], got values outside it ([{lo}, {hi}]); "
                                 "were they made for another codec?")

    # -- one pass -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, audio: torch.Tensor, n_q: int | None = None) -> torch.Tensor:
        """audio [B, C, N] at the codec rate -> codes [B, K, ceil(N / hop)]."""
        self._check_audio(audio)
        if not self.cfg.streamable:
            raise ValueError("this codec encodes in normalised chunks; use encode_chunks()")
        return self.quantizer.encode(self.encoder(audio.to(self.dtype)), n_q)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, T] (k <= K codebooks) -> audio [B, C, T * hop]."""
        self.check_codes(codes)
        if not self.cfg.streamable:
            raise ValueError("this codec decodes normalised chunks; use decode_chunks()")
        return self.decoder(self.quantizer.decode(codes.long()))

    # -- chunked, RMS-normalised codecs (48 kHz) ----------------------------------------------------------------
    @torch.no_grad()
    def encode_chunks(self, audio: torch.Tensor, n_q: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """audio [B, C, N] -> (codes [n_chunks, B, K, F], scales [n_chunks, B] or None), as EnCodec 48 kHz does.

        The last chunk's codes are right-padded with zeros to F frames; `decode_chunks(..., length=N)` trims.
        """
        self._check_audio(audio)
        n = audio.shape[-1]
        length = self.cfg.chunk_length or n
        stride = self.cfg.chunk_stride or n
        codes, scales = [], []
        for offset in range(0, n, stride):
            x = audio[..., offset : offset + length].to(self.dtype)
            scale = None
            if self.cfg.normalize:
                mono = x.mean(1, keepdim=True)
                scale = mono.pow(2).mean(-1, keepdim=True).sqrt() + 1e-8  # [B, 1, 1]
                x = x / scale
            codes.append(self.quantizer.encode(self.encoder(x), n_q))
            scales.append(scale)
        width = codes[0].shape[-1]
        codes = [nn.functional.pad(c, (0, width - c.shape[-1])) for c in codes]
        out_scales = None if scales[0] is None else torch.stack([s.view(-1) for s in scales])
        return torch.stack(codes), out_scales

    @torch.no_grad()
    def decode_chunks(self, codes: torch.Tensor, scales: torch.Tensor | None, length: int) -> torch.Tensor:
        """Inverse of `encode_chunks`: decode each chunk, rescale, linear overlap-add; -> audio [B, C, length]."""
        n_chunks = codes.shape[0]
        stride = self.cfg.chunk_stride or length
        frames = []
        for i in range(n_chunks):
            c = codes[i]
            if i == n_chunks - 1:  # drop the zero padding added to the last chunk
                valid = -(-(length - i * stride) // self.cfg.hop_length) if n_chunks > 1 else c.shape[-1]
                c = c[..., :valid]
            self.check_codes(c)
            y = self.decoder(self.quantizer.decode(c.long()))
            if scales is not None:
                y = y * scales[i].view(-1, 1, 1)
            frames.append(y)
        if n_chunks == 1:
            return frames[0][..., :length]
        return _linear_overlap_add(frames, stride)[..., :length]

    # -- streams ------------------------------------------------------------------------------------------------
    def stream_encoder(self, batch: int = 1) -> "EncoderStream":
        return EncoderStream(self, batch)

    def stream_decoder(self, batch: int = 1) -> "DecoderStream":
        return DecoderStream(self, batch)

    def decoder_lookahead_samples(self) -> int:
        """Samples the streaming decoder holds back: after t frames it has emitted t * hop - this many."""
        t = 64
        return t * self.cfg.hop_length - emitted(self.decoder, t)

    def decoder_lookahead_frames(self) -> int:
        """Future frames needed before a frame's audio is complete (4 for the 32 kHz MusicGen codec)."""
        hop = self.cfg.hop_length
        return -(-self.decoder_lookahead_samples() // hop)

    def encoder_lookahead_samples(self) -> int:
        """Audio past the end of frame t that the encoder needs before it emits frame t."""
        n = 64 * self.cfg.hop_length
        done = emitted(self.encoder, n)
        return n - done * self.cfg.hop_length


def _linear_overlap_add(frames: list[torch.Tensor], stride: int) -> torch.Tensor:
    # Triangle weights peaking mid-chunk, normalised by their sum: a frame alone passes through unchanged, two
    # overlapping frames cross-fade linearly (EnCodec's overlap-add).
    dev, dt = frames[0].device, frames[0].dtype
    total = stride * (len(frames) - 1) + frames[-1].shape[-1]
    size = frames[0].shape[-1]
    t = torch.linspace(0, 1, size + 2, device=dev, dtype=dt)[1:-1]
    weight = 0.5 - (t - 0.5).abs()
    out = torch.zeros(*frames[0].shape[:-1], total, device=dev, dtype=dt)
    norm = torch.zeros(total, device=dev, dtype=dt)
    for i, f in enumerate(frames):
        n = f.shape[-1]
        out[..., i * stride : i * stride + n] += weight[:n] * f
        norm[i * stride : i * stride + n] += weight[:n]
    return out / norm


@dataclass
class _Counters:
    n_in: int = 0
    n_out: int = 0
    flushed: bool = False


class EncoderStream:
    """Audio chunks in, codes out: once flushed, those `Encodec.encode` gives for the whole stream, up to float
    rounding. The chunks' convolutions and quantizer GEMMs have other shapes than the full pass's, so the latents
    differ in the last bits (measured <= 9e-8) and a code may differ where the quantizer's choice is a near tie."""

    def __init__(self, codec: Encodec, batch: int = 1, n_q: int | None = None):
        if not codec.cfg.streamable:
            raise ValueError("this codec normalises whole chunks and cannot stream; use encode_chunks()")
        self.codec, self.batch, self.n_q = codec, batch, n_q
        self.state = codec.encoder.init_state(batch, codec.device, codec.dtype)
        self.counters = _Counters()

    @torch.no_grad()
    def push(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, C, n] (any n, 0 included) -> codes [B, K, t] for every frame now fully determined."""
        self.codec._check_audio(audio)
        if self.counters.flushed:
            raise RuntimeError("this encoder stream was flushed; start a new one")
        self.counters.n_in += audio.shape[-1]
        z = self.codec.encoder.step(audio.to(self.codec.dtype), self.state)
        return self._quantize(z)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End of stream: codes for the remaining frames (the right edge padded as in a full pass)."""
        self.counters.flushed = True
        z = self.codec.encoder.flush(self.state)
        if z is None:
            z = torch.zeros(self.batch, self.codec.cfg.dimension, 0, device=self.codec.device, dtype=self.codec.dtype)
        return self._quantize(z)

    def _quantize(self, z: torch.Tensor) -> torch.Tensor:
        self.counters.n_out += z.shape[-1]
        return self.codec.quantizer.encode(z, self.n_q)  # [B, K, t]

    def snapshot(self):
        return snapshot((self.state, self.counters))

    def restore(self, saved) -> None:
        restore_(self.state, saved[0])
        restore_(self.counters, saved[1])


class DecoderStream:
    """Code frames in, audio out: once flushed, `Encodec.decode` of the whole stream up to float rounding (the
    chunks' convolutions have other shapes; about 1e-7 in float32).

    Every sample is emitted as soon as the codes it depends on have arrived; the codec's look-ahead
    (`Encodec.decoder_lookahead_samples`) is the only delay.
    """

    def __init__(self, codec: Encodec, batch: int = 1):
        if not codec.cfg.streamable:
            raise ValueError("this codec normalises whole chunks and cannot stream; use decode_chunks()")
        self.codec, self.batch = codec, batch
        self.state = codec.decoder.init_state(batch, codec.device, codec.dtype)
        self.counters = _Counters()

    @torch.no_grad()
    def push(self, codes: torch.Tensor, check: bool = True) -> torch.Tensor:
        """codes [B, k, t] -> audio [B, C, n] newly determined (n may be 0 while the look-ahead fills).

        `check=False` skips the range check (a host sync) for codes that come straight from the LM.
        """
        if self.counters.flushed:
            raise RuntimeError("this decoder stream was flushed; start a new one")
        if codes.shape[-1] == 0:
            return self._empty()
        if check:
            self.codec.check_codes(codes)
        self.counters.n_in += codes.shape[-1]
        y = self.codec.decoder.step(self.codec.quantizer.decode(codes.long()), self.state)
        self.counters.n_out += y.shape[-1]
        return y

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End of stream: the held-back samples, with the right edge padded as in a full pass."""
        self.counters.flushed = True
        y = self.codec.decoder.flush(self.state)
        y = self._empty() if y is None else y
        self.counters.n_out += y.shape[-1]
        return y

    def _empty(self) -> torch.Tensor:
        return torch.zeros(self.batch, self.codec.cfg.channels, 0, device=self.codec.device, dtype=self.codec.dtype)

    def snapshot(self):
        return snapshot((self.state, self.counters))

    def restore(self, saved) -> None:
        restore_(self.state, saved[0])
        restore_(self.counters, saved[1])

