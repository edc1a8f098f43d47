"""Frozen description of one EnCodec variant (SEANet auto-encoder + residual vector quantizer)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class CodecConfig:
    """Hyper-parameters of an EnCodec model.

    Args:
        sample_rate: audio rate in Hz.
        channels: audio channels the SEANet sees (1, or 2 for the 48 kHz model).
        ratios: up-sampling ratios in decoder order; the encoder uses them reversed. hop = product.
        n_filters: channels of the first encoder conv; doubles after every down-sampling.
        dimension: latent channels (= codebook dimension).
        n_residual_layers: residual blocks per resolution (dilations base**j).
        causal: causal padding (24 kHz) instead of centred padding (16/32/48 kHz).
        pad_mode: "reflect" (transformers checkpoints) or "constant" (audiocraft's default).
        norm: "weight_norm" (folded into plain weights at load time) or "time_group_norm" (48 kHz).
        true_skip: identity shortcut in residual blocks; False means a 1x1 conv shortcut.
        n_q / bins: number of codebooks and entries per codebook.
        normalize: divide each chunk by its RMS before encoding (48 kHz).
        chunk_length_s / overlap: chunked encode with linear overlap-add decode (48 kHz); None = one pass.
    """

    sample_rate: int = 32000
    channels: int = 1
    ratios: tuple[int, ...] = (8, 5, 4, 4)
    n_filters: int = 64
    dimension: int = 128
    n_residual_layers: int = 1
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm_layers: int = 2
    causal: bool = False
    pad_mode: str = "reflect"
    norm: str = "weight_norm"
    true_skip: bool = True
    trim_right_ratio: float = 1.0
    n_q: int = 4
    bins: int = 2048
    normalize: bool = False
    chunk_length_s: float | None = None
    overlap: float | None = None

    def __post_init__(self) -> None:
        if self.pad_mode not in ("reflect", "constant"):
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {self.pad_mode!r}")
        if self.norm not in ("weight_norm", "time_group_norm"):
            raise ValueError(f"norm must be 'weight_norm' or 'time_group_norm', got {self.norm!r}")
        if not self.causal and self.trim_right_ratio != 1.0:
            raise ValueError("trim_right_ratio != 1.0 only makes sense for a causal codec")
        if self.channels not in (1, 2):
            raise ValueError(f"a codec has 1 or 2 audio channels, got {self.channels}")

    @property
    def hop_length(self) -> int:
        return math.prod(self.ratios)

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def chunk_length(self) -> int | None:
        if self.chunk_length_s is None:
            return None
        return int(self.chunk_length_s * self.sample_rate)

    @property
    def chunk_stride(self) -> int | None:
        if self.chunk_length is None or self.overlap is None:
            return None
        return max(1, int((1.0 - self.overlap) * self.chunk_length))

    @property
    def streamable(self) -> bool:
        # GroupNorm over a whole chunk and per-chunk RMS scaling both need the entire chunk before any output.
        return self.norm == "weight_norm" and not self.normalize and self.chunk_length is None


# Published variants (facts: shared/reference/audiocraft.md §1).
ENCODEC_32KHZ = CodecConfig()  # facebook/encodec_32khz and the audio_encoder of every MusicGen repo
ENCODEC_16KHZ = CodecConfig(sample_rate=16000, ratios=(8, 5, 4, 2))  # AudioGen (audiocraft: pad_mode constant)
ENCODEC_24KHZ = CodecConfig(
    sample_rate=24000, ratios=(8, 5, 4, 2), n_filters=32, causal=True, true_skip=False, n_q=32, bins=1024
)
ENCODEC_48KHZ = CodecConfig(
    sample_rate=48000, channels=2, ratios=(8, 5, 4, 2), n_filters=32, causal=False, true_skip=False,
    norm="time_group_norm", n_q=16, bins=1024, normalize=True, chunk_length_s=1.0, overlap=0.01,
)
