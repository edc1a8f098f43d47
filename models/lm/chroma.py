"""Chroma features for MusicGen-Melody: which of the 12 pitch classes dominates each ~0.13 s of a signal.

What audiocraft's ChromaExtractor and transformers' MusicgenMelodyFeatureExtractor compute, without torchaudio:
a power spectrogram (n_fft = window = 16384, hop 4096, periodic Hann window, centred frames with reflect padding),
librosa's chroma filter bank (tuning 0) applied to it, and the strongest class of each frame as a one-hot vector.
A signal shorter than one window is first zero-padded to it, centred, as both references do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ChromaConfig:
    """How a melody model's chroma is computed (audiocraft's chroma_stem: radix2_exp 14 -> n_fft 16384, hop n_fft/4).

    Args:
        sample_rate: rate of the audio the chroma is computed from (the model's, 32 kHz).
        n_fft: FFT size, also the window length.
        hop_length: samples between frames.
        n_chroma: pitch classes.
    """

    sample_rate: int = 32000
    n_fft: int = 16384
    hop_length: int = 4096
    n_chroma: int = 12

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length


def chroma_filter_bank(sample_rate: int, n_fft: int, n_chroma: int = 12) -> np.ndarray:
    """Weights [n_chroma, n_fft // 2 + 1] of each FFT bin in each pitch class, row 0 = C (librosa's filters.chroma
    with tuning 0, octave weighting centred on octave 5 with half-width 2, L2-normalised columns).

    Every bin gets a Gaussian bump around its pitch, wrapped onto the circle of classes; its width is the bin's
    spacing in pitch (at least one class), so low bins, which span several semitones, spread over several classes.
    """
    freqs = np.arange(1, n_fft) * (sample_rate / n_fft)  # bins 1 .. n_fft - 1 (the DC bin is added below)
    pitch = n_chroma * np.log2(freqs / (440.0 / 16))  # in classes, 0 at A0 (27.5 Hz), n_chroma per octave
    pitch = np.concatenate([[pitch[0] - 1.5 * n_chroma], pitch])  # DC: 1.5 octaves under bin 1
    width = np.append(np.maximum(np.diff(pitch), 1.0), 1.0)
    half = round(n_chroma / 2)
    classes = np.arange(n_chroma, dtype=np.float64)
    dist = np.remainder(pitch[None, :] - classes[:, None] + half + 10 * n_chroma, n_chroma) - half  # [-half, half)
    w = np.exp(-0.5 * (2 * dist / width[None, :]) ** 2)  # [n_chroma, n_fft]
    w /= np.sqrt(np.sum(w**2, axis=0, keepdims=True))
    w *= np.exp(-0.5 * ((pitch / n_chroma - 5.0) / 2.0) ** 2)[None, :]  # favour the middle octaves
    w = np.roll(w, -3 * (n_chroma // 12), axis=0)  # the axis counts from A; row 0 must be C
    return np.ascontiguousarray(w[:, : n_fft // 2 + 1])


@lru_cache(maxsize=4)
def _bank(cfg: ChromaConfig) -> tuple[torch.Tensor, torch.Tensor]:
    filters = torch.from_numpy(chroma_filter_bank(cfg.sample_rate, cfg.n_fft, cfg.n_chroma))  # [C, F] float64
    window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)
    return filters, window


@torch.no_grad()
def chroma_from_audio(wav: torch.Tensor, cfg: ChromaConfig = ChromaConfig(), block: int = 64) -> torch.Tensor:
    """Mono audio [N] at cfg.sample_rate -> one-hot chroma [1, 1 + N' // hop, n_chroma] float32 (N' >= n_fft).

    Computed in float64 on the CPU, `block` frames at a time, so a long file never holds its whole spectrogram
    (16384-point frames: 64 frames take 8 MB).
    """
    if wav.dim() != 1 or wav.shape[0] == 0:
        raise ValueError(f"chroma needs mono samples [N], got shape {list(wav.shape)}")
    filters, window = _bank(cfg)
    x = wav.detach().to("cpu", torch.float64)
    n = cfg.n_fft
    if x.shape[0] < n:  # centred zero padding up to one window
        pad = n - x.shape[0]
        x = F.pad(x, (pad // 2, pad - pad // 2))
    x = F.pad(x.view(1, 1, -1), (n // 2, n // 2), mode="reflect").view(-1)  # centred frames (torch.stft's center)
    frames = x.unfold(0, n, cfg.hop_length)  # [T, n_fft], a view
    best = torch.empty(frames.shape[0], dtype=torch.long)
    for a in range(0, frames.shape[0], block):
        power = torch.fft.rfft(frames[a : a + block] * window).abs().square()  # [b, n_fft // 2 + 1]
        # The references divide each frame by its largest class (inf-norm) before the argmax; a positive scale
        # never moves the argmax, and neither does their spectrogram normalisation, so both are left out.
        best[a : a + block] = (power @ filters.t()).argmax(-1)
    return F.one_hot(best, cfg.n_chroma).to(torch.float32)[None]  # [1, T, n_chroma]
