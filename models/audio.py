"""Audio files in and out: read (soundfile), check, mix channels, resample (soxr), write float WAV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from segue.models.errors import AudioInputError


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A file -> (samples [channels, N] float32, sample rate). Rejects unreadable, empty and non-finite audio."""
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path} does not exist")
    if path.is_dir():
        raise AudioInputError(f"{path} is a folder, not an audio file")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioInputError(f"{path} is not an audio file soundfile can read ({exc}); use WAV, FLAC or OGG") from exc
    return check_audio(data.T, str(path)), int(sr)


def check_audio(data: np.ndarray, what: str) -> np.ndarray:
    """samples [C, N]: refuse empty and NaN/Inf audio with a sentence naming `what`."""
    if data.ndim != 2 or data.shape[1] == 0 or data.shape[0] == 0:
        raise AudioInputError(f"{what} holds no audio samples")
    if not np.isfinite(data).all():
        raise AudioInputError(f"{what} contains NaN or infinite samples; export it again from your DAW")
    return np.ascontiguousarray(data, dtype=np.float32)


def match_channels(data: np.ndarray, channels: int) -> np.ndarray:
    """samples [C, N] -> [channels, N]: any other channel count is mixed to mono and duplicated."""
    if data.shape[0] == channels:
        return data
    return np.repeat(data.mean(axis=0, keepdims=True), channels, axis=0)


def to_model_audio(data: np.ndarray, sr: int, target_sr: int, channels: int) -> torch.Tensor:
    """samples [C, N] at `sr` -> tensor [channels, N'] at `target_sr`: stereo is mixed to mono, mono duplicated."""
    data = match_channels(data, channels)
    if sr != target_sr:
        data = soxr.resample(data.T, sr, target_sr, quality="HQ").T  # soxr wants [N, C]
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))


def write_audio(path: str | Path, audio: np.ndarray | torch.Tensor, sr: int) -> None:
    """samples [C, N] -> 32-bit float WAV (no clipping, no dither: exactly what the model produced)."""
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    sf.write(str(path), np.ascontiguousarray(audio.T), sr, subtype="FLOAT")


class AudioWriter:
    """Append [C, n] chunks to a float WAV as they are produced."""

    def __init__(self, path: str | Path, sr: int, channels: int):
        self.file = sf.SoundFile(str(path), "w", samplerate=sr, channels=channels, subtype="FLOAT", format="WAV")
        self.frames = 0

    def write(self, chunk: np.ndarray) -> None:
        self.file.write(np.ascontiguousarray(chunk.T))
        self.frames += chunk.shape[1]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "AudioWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
