"""Audio files in and out: read (soundfile), check, mix channels, resample (soxr), write float WAV."""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from segue.models.errors import AudioInputError

log = logging.getLogger("segue")

# libsndfile's message when it gives up on a file it has opened (an MP3 mpg123 cannot decode, for one): it is
# about pipes and missing files, and misleads when the file is right there.
_MISLEADING = "File does not exist or is not a regular file"


def readable_formats() -> list[str]:
    """The container formats this soundfile (libsndfile) build reads, by their usual names (RAW, which needs its
    layout spelled out, left out)."""
    return [k for k in sf.available_formats() if k != "RAW"]


@contextmanager
def _c_stderr_kept(said: list[str]) -> Iterator[None]:
    """Keep what C libraries (libsndfile, mpg123) write to the process's stderr (fd 2) off the terminal while the
    block runs; their text is appended to `said`. Process-wide for that moment: a line another thread writes to
    fd 2 meanwhile lands there too (it is logged at debug level)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no fd 2 at all (a daemonised process): nothing to keep off
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said.append(tmp.read(65536).decode("utf-8", "replace"))


def _decoder_said(text: str) -> str:
    """The first informative line of a C decoder's chatter (mpg123's `[file:line] warning: ...` prefix dropped)."""
    for line in text.splitlines():
        line = re.sub(r"^\[[^\]]*\]\s*", "", line).strip()
        if line:
            return line[:160]
    return ""


MAX_CHANNELS = 32  # a header claiming more is not audio segue can use (and would make it allocate for them)


def read_audio(path: str | Path, last_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """A file -> (samples [channels, N] float32, sample rate). Rejects missing, unreadable (a format this soundfile
    build does not read, a corrupt or truncated file), empty and non-finite audio with an AudioInputError that says
    what is wrong and what to do. What the C decoders print meanwhile is kept off the terminal (logged).

    Only a regular file is opened (a FIFO or a device would block the reader for good). `last_seconds`: read only
    the file's last that many seconds (what a prompt uses), whatever length its header claims (a 4 KiB WAV claiming
    2 GiB made the daemon allocate 5 GiB)."""
    path = Path(path)
    if not path.exists():
        raise AudioInputError(f"{path} does not exist")
    if path.is_dir():
        raise AudioInputError(f"{path} is a folder, not an audio file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of waiting for a writer
    except OSError as exc:
        raise AudioInputError(f"{path} cannot be opened ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise AudioInputError(f"{path} is not a regular file (a FIFO, a socket or a device); give an audio file")
        said: list[str] = []
        try:
            with _c_stderr_kept(said), sf.SoundFile(f) as snd:
                sr, channels, frames = snd.samplerate, snd.channels, snd.frames
                if channels > MAX_CHANNELS or not 1000 <= sr <= 384000:
                    raise AudioInputError(f"{path} says it holds {channels} channels at {sr} Hz; segue reads 1 to "
                                          f"{MAX_CHANNELS} channels at 1000 to 384000 Hz")
                keep = frames if last_seconds is None else min(frames, math.ceil(last_seconds * sr))
                if keep < frames and snd.seekable():
                    snd.seek(frames - keep)
                data = snd.read(keep, dtype="float32", always_2d=True)  # [N, C]; fewer when the header lies
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioInputError(_unreadable(path, exc, "".join(said))) from exc
    noise = _decoder_said("".join(said))
    if noise:
        log.debug("%s: the decoder said: %s", path, noise)
    return check_audio(data.T, str(path)), int(sr)


def _unreadable(path: Path, exc: Exception, chatter: str) -> str:
    """One sentence for a file soundfile could not read: what libsndfile (or the decoder under it) said, and what
    this build reads."""
    formats = readable_formats()
    known = ", ".join(formats)
    ext = path.suffix.lstrip(".").upper()
    ext = {"AIF": "AIFF", "AIFC": "AIFF", "OGA": "OGG", "OPUS": "OGG", "WAVE": "WAV", "SND": "AU"}.get(ext, ext)
    reason = getattr(exc, "error_string", None) or str(exc)
    said = _decoder_said(chatter)
    if _MISLEADING in reason:  # the file exists: libsndfile gave up on its contents
        reason = f"the decoder said: {said}" if said else "its data cannot be decoded"
    elif said:
        reason = f"{reason.rstrip('.')}; the decoder said: {said}"
    if ext and ext not in formats:
        return (f"{path} is not an audio file this soundfile build can read ({reason}); .{ext.lower()} is not among "
                f"its formats ({known}): convert it to one of them, e.g. WAV or FLAC")
    if "not recognised" in reason:
        what = f"its contents are not {ext}" if ext else "its format is not one it knows"
        return (f"{path} is not an audio file this soundfile build can read: {what} ({reason}); export it again as "
                f"one of {known}")
    if ext:
        return (f"{path} cannot be read as {ext}: it looks corrupt or truncated ({reason}); export it again, or "
                f"use another format this soundfile reads: {known}")
    return f"{path} is not an audio file this soundfile build can read ({reason}); it reads {known}"


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
