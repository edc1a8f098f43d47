"""A loaded model: codec + LM + text conditioning. Weights only; every generation owns its own streams."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from segue.models.codec.encodec import Encodec
from segue.models.errors import RequestError
from segue.models.lm.chroma import ChromaConfig
from segue.models.lm.conditioning import Conditioner, TextEncoder
from segue.models.lm.config import ReplanConfig, SamplingParams
from segue.models.lm.model import MusicGenLM
from segue.models.lm.stream import LMStream
from segue.models.melody import Melody, melody_from_audio


@dataclass(frozen=True)
class ModelInfo:
    """Where a model came from: `ref` as the user wrote it, the folder it was read from, its file layout."""

    ref: str
    folder: str | None
    layout: str  # "transformers", "audiocraft" or "demo"
    kind: str  # "musicgen", "musicgen-melody", "audiogen" or "encodec"


class MusicGen:
    """EnCodec + MusicGen/AudioGen LM + T5 conditioning, on one device.

    `stream()` creates the per-take state; the model object itself is never mutated by generation, so reloading
    weights and running streams never interfere. A melody LM also takes a chroma (`melody_from_audio`), computed
    as `chroma` says (default: at the codec's rate and the LM's chroma frame rate, a window of four hops).
    """

    def __init__(self, codec: Encodec, lm: MusicGenLM | None, text: TextEncoder | None, info: ModelInfo,
                 chroma: ChromaConfig | None = None, channels: int | None = None):
        """channels: for a codec loaded alone (`lm` None), the channels of the LM it serves, when known (2 for a
        stereo MusicGen's mono codec: its codes interleave left and right); default the codec's own."""
        if lm is not None and lm.cfg.n_q != codec.cfg.n_q * (lm.cfg.channels // codec.cfg.channels):
            raise ValueError(f"LM models {lm.cfg.n_q} codebooks but the codec has {codec.cfg.n_q}")
        if channels is not None and (lm is not None or channels % codec.cfg.channels):
            raise ValueError(f"channels={channels} is for a codec loaded alone, in multiples of its "
                             f"{codec.cfg.channels}")
        self.codec, self.lm, self.text, self.info = codec, lm, text, info
        self._codec_only_channels = channels or codec.cfg.channels
        self.conditioner = Conditioner(lm, text) if lm is not None else None
        self.chroma: ChromaConfig | None = None
        if lm is not None and lm.cfg.takes_melody:
            # Both references hop a quarter window: 16384 / 4096 at 32 kHz (7.8125 frames/s).
            hop = round(codec.cfg.sample_rate / lm.cfg.chroma_rate)
            self.chroma = chroma or ChromaConfig(codec.cfg.sample_rate, 4 * hop, hop, lm.cfg.n_chroma)
            if self.chroma.n_chroma != lm.cfg.n_chroma or abs(self.chroma.frame_rate - lm.cfg.chroma_rate) > 1e-9:
                raise ValueError(f"chroma {self.chroma} does not match the LM's {lm.cfg.n_chroma} classes at "
                                 f"{lm.cfg.chroma_rate} frames/s")

    @property
    def device(self) -> torch.device:
        return self.codec.device

    @property
    def sample_rate(self) -> int:
        return self.codec.cfg.sample_rate

    @property
    def channels(self) -> int:
        """Audio channels of the generated signal (2 for stereo MusicGen, whose codec is mono)."""
        return self.lm.cfg.channels if self.lm is not None else self._codec_only_channels

    @property
    def frame_rate(self) -> float:
        return self.codec.cfg.frame_rate

    @property
    def hop_length(self) -> int:
        return self.codec.cfg.hop_length

    @property
    def max_duration(self) -> float:
        """Seconds the LM was trained on; longer streams re-prompt themselves."""
        return self.lm.cfg.max_duration if self.lm is not None else float("inf")

    @property
    def takes_melody(self) -> bool:
        """A MusicGen-Melody model: takes accept a `Melody` (chroma) besides text and an audio prompt."""
        return self.lm is not None and self.lm.cfg.takes_melody

    def melody_from_audio(self, audio: torch.Tensor) -> Melody:
        """audio [C, N] float at `sample_rate` (any channel count, mixed to mono) -> the melody a take can follow.

        Stems are separated with htdemucs (vocals + other kept) when the demucs package is installed, as
        audiocraft does; otherwise the full mix is used (`Melody.separation` says which).
        """
        if self.chroma is None:
            raise RequestError(f"{self.info.ref} takes no melody; load a MusicGen-Melody model such as "
                               "facebook/musicgen-melody")
        return melody_from_audio(audio, self.chroma)

    def require_lm(self) -> MusicGenLM:
        if self.lm is None:
            raise ValueError(f"{self.info.ref} is a codec only; it cannot generate (use `segue codec`)")
        return self.lm

    def stream(self, batch: int = 1, sampling: SamplingParams = SamplingParams(),
               replan: ReplanConfig = ReplanConfig(), cuda_graphs: bool | None = None) -> LMStream:
        return LMStream(self.require_lm(), self.conditioner, batch, sampling, replan=replan, cuda_graphs=cuda_graphs)

    # -- codes <-> audio for multi-channel LMs (stereo MusicGen interleaves L/R codebooks over a mono codec) -------
    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        """audio [B, channels, N] -> LM codes [B, K, T] (stereo: codebooks interleaved [1L, 1R, 2L, 2R, ...])."""
        c = self.codec.cfg.channels
        if self.channels == c:
            return self.codec.encode(audio)
        parts = [self.codec.encode(audio[:, i : i + c]) for i in range(0, self.channels, c)]
        return torch.stack(parts, 2).flatten(1, 2)  # [B, K/2, 2, T] -> [B, K, T]

    @property
    def codec_passes(self) -> int:
        """Codec runs per frame: 2 for stereo MusicGen (left and right through the mono codec), else 1."""
        return self.channels // self.codec.cfg.channels

    def split_codes(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """LM codes [B, K, T] -> one codec code tensor per codec pass (L then R for stereo)."""
        n = self.codec_passes
        return [codes[:, g::n] for g in range(n)]

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """LM codes [B, K, T] -> audio [B, channels, T * hop]."""
        return torch.cat([self.codec.decode(c) for c in self.split_codes(codes)], 1)
