"""A melody for MusicGen-Melody: audio -> (optional stem separation) -> mono -> one-hot chroma.

audiocraft isolates the melody first: htdemucs splits the audio into drums, bass, other and vocals, and the chroma
is taken from vocals + other (drums and bass would otherwise win most frames). segue does the same when the
`demucs` package is importable, and otherwise uses the full mix, saying so in `Melody.separation`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from segue.models.errors import AudioInputError
from segue.models.lm.chroma import ChromaConfig, chroma_from_audio

log = logging.getLogger(__name__)

FULL_MIX = "full mix"


@dataclass(frozen=True)
class Melody:
    """Chroma conditioning for one take (computed once; a retry reuses it).

    Args:
        chroma: one-hot pitch classes [1, T, n_chroma] float32, `frame_rate` frames per second.
        separation: how the melody was isolated: "full mix" (no separation model ran) or "htdemucs vocals+other".
        frame_rate: chroma frames per second (32 kHz / hop 4096 = 7.8125).
    """

    chroma: torch.Tensor
    separation: str
    frame_rate: float = 32000 / 4096

    @property
    def seconds(self) -> float:
        return self.chroma.shape[1] / self.frame_rate


def melody_from_audio(audio: torch.Tensor, cfg: ChromaConfig, separate: bool = True) -> Melody:
    """audio [C, N] float at cfg.sample_rate (any channel count) -> Melody."""
    if not isinstance(audio, torch.Tensor) or audio.dim() != 2 or audio.shape[0] == 0 or audio.shape[1] == 0:
        shape = list(audio.shape) if isinstance(audio, torch.Tensor) else type(audio).__name__
        raise AudioInputError(f"a melody must be audio [channels, samples] with samples in it, got {shape}")
    if not bool(torch.isfinite(audio).all()):
        raise AudioInputError("the melody contains NaN or infinite samples; export it again")
    mono, how = None, FULL_MIX
    if separate:
        mono, how = _vocals_and_other(audio, cfg.sample_rate)
    if mono is None:
        mono = audio.float().mean(0)  # the references mix to mono by averaging the channels
    return Melody(chroma_from_audio(mono, cfg), how, cfg.frame_rate)


_demucs_model = None


def _vocals_and_other(audio: torch.Tensor, sr: int) -> tuple[torch.Tensor | None, str]:
    """vocals + other stems of htdemucs, mono at `sr`, as audiocraft's ChromaStemConditioner; (None, why) when
    demucs is not installed or cannot run (its weights are fetched by demucs itself on first use)."""
    global _demucs_model
    try:
        from demucs.apply import apply_model
        from demucs.pretrained import get_model
    except ImportError:
        return None, FULL_MIX
    import soxr

    try:
        if _demucs_model is None:
            _demucs_model = get_model("htdemucs").eval()
        model = _demucs_model
        mono = audio.float().mean(0).cpu().numpy()
        x = soxr.resample(mono, sr, model.samplerate, quality="HQ") if sr != model.samplerate else mono
        x = torch.from_numpy(np.ascontiguousarray(x)).expand(model.audio_channels, -1)[None]  # [1, C, N']
        stems = apply_model(model, x.to(audio.device), device=audio.device)[0]  # [sources, C, N']
        keep = [model.sources.index("vocals"), model.sources.index("other")]
        mix = stems[keep].sum(0).mean(0).cpu().numpy()  # [N'] mono
        if sr != model.samplerate:
            mix = soxr.resample(mix, model.samplerate, sr, quality="HQ")
    except Exception as exc:  # separation improves the melody; without it the full mix still conditions
        log.warning("htdemucs stem separation failed (%s); using the full mix", exc)
        return None, f"{FULL_MIX} (htdemucs failed: {type(exc).__name__})"
    return torch.from_numpy(np.ascontiguousarray(mix, dtype=np.float32)), "htdemucs vocals+other"
