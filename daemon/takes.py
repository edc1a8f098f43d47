"""Takes on disk, written while they play: `NNNN-kind.wav` (float, device rate), `NNNN-kind.codes.npy` (int16
[K, T]: the prompt's frames, then the new ones), `NNNN-kind.json` (what made it, and how it went; `prompt_frames`
says where the new frames begin), for a continuation `NNNN-kind.prompt.wav` (the audio it continued) and, for a
take that follows a melody, `NNNN-kind.melody.wav` (the audio its chroma was taken from).

The codes file holds the prompt too because the new audio is decoded in the prompt's context: decoding the whole
file and dropping `prompt_frames * hop` samples gives the take exactly, as the daemon streamed it.

Every chunk is flushed as it is written and each file is valid after every flush (the WAV header is updated by
libsndfile on flush; the .npy header is rewritten in place), so a crash loses at most the last chunk.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import soundfile as sf

from segue.daemon.playback import ramp

_NPY_HEADER = 128  # bytes: magic + version + length + dict, padded (fixed, so it can be rewritten in place)


class CodesFile:
    """An .npy file of int16 codes [K, T] that grows a frame at a time (stored column-major: frame after frame)."""

    def __init__(self, path: Path, n_q: int):
        self.path, self.n_q, self.frames = path, n_q, 0
        self.f = open(path, "wb")
        self._header()

    def _header(self) -> None:
        d = f"{{'descr': '<i2', 'fortran_order': True, 'shape': ({self.n_q}, {self.frames}), }}"
        pad = _NPY_HEADER - 10 - len(d) - 1
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little") + (d + " " * pad + "\n").encode())

    def write(self, codes: np.ndarray) -> None:
        """codes [K, n] -> appended."""
        if codes.shape[1] == 0:
            return
        self.f.seek(0, os.SEEK_END)
        self.f.write(np.asfortranarray(codes.astype("<i2")).tobytes(order="F"))
        self.frames += codes.shape[1]
        self._header()
        self.f.flush()

    def truncate(self, frames: int) -> None:
        """Keep the first `frames` frames."""
        if frames < self.frames:
            self.frames = frames
            self.f.truncate(_NPY_HEADER + 2 * self.n_q * frames)
            self._header()
            self.f.flush()

    def close(self) -> None:
        self.f.close()


class TakeFiles:
    def __init__(self, folder: Path, take_id: int, kind: str, sample_rate: int, channels: int, n_q: int,
                 meta: dict, prompt_codes: np.ndarray | None = None, prompt_audio: tuple[np.ndarray, int] | None = None,
                 melody_audio: tuple[np.ndarray, int] | None = None):
        self.stem = folder / f"{take_id:04d}-{kind}"
        self.wav_path = self.stem.with_suffix(".wav")
        self.codes_path = self.stem.with_suffix(".codes.npy")
        self.json_path = self.stem.with_suffix(".json")
        self.wav = sf.SoundFile(str(self.wav_path), "w", samplerate=sample_rate, channels=channels,
                                subtype="FLOAT", format="WAV")
        self.codes = CodesFile(self.codes_path, n_q)
        self.prompt_frames = 0
        if prompt_codes is not None:  # [K, P]
            self.codes.write(prompt_codes)
            self.prompt_frames = prompt_codes.shape[1]
        self.meta = dict(meta, id=take_id, wav=self.wav_path.name, codes=self.codes_path.name, state="playing",
                         samples=0, frames=0, prompt_frames=self.prompt_frames)
        for what, audio in (("prompt", prompt_audio), ("melody", melody_audio)):
            if audio is not None:
                pcm, sr = audio  # [C, n]
                path = self.stem.with_suffix(f".{what}.wav")
                sf.write(str(path), pcm.T, sr, subtype="FLOAT")
                self.meta[f"{what}_wav"] = path.name
        self.samples = 0
        self.save_meta()

    @property
    def new_frames(self) -> int:
        return self.codes.frames - self.prompt_frames

    def write(self, pcm: np.ndarray, codes: np.ndarray | None) -> None:
        """pcm [n, C] at the device rate; codes [K, m] new frames."""
        if len(pcm):
            self.wav.write(pcm)
            self.wav.flush()
            self.samples += len(pcm)
        if codes is not None:
            self.codes.write(codes)

    def save_meta(self, **updates) -> None:
        self.meta.update(updates, samples=self.samples, frames=self.new_frames)
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.meta, indent=1, default=str))
        os.replace(tmp, self.json_path)

    def close(self, cut: tuple[int, int, int] | None = None, **updates) -> None:
        """Finalize the files. `cut` = (samples heard, fade length, new frames they need): a take stopped while
        the LM was ahead of playback keeps only what was heard, with the same fade-out, so the file is the take as
        it sounded."""
        self.wav.close()
        if cut is not None and cut[0] < self.samples:
            keep, fade, frames = cut
            with sf.SoundFile(str(self.wav_path), "r+") as f:
                lo = max(0, keep - fade)
                f.seek(lo)
                tail = f.read(keep - lo, dtype="float32", always_2d=True)  # [n, C]
                tail *= ramp(lo, len(tail), keep - fade, fade, rising=False)[:, None]
                f.seek(lo)
                f.write(tail)
                f.truncate(keep)
            self.samples = keep
            self.codes.truncate(self.prompt_frames + frames)
        self.codes.close()
        self.save_meta(**updates)


def list_takes(folder: Path, limit: int = 100) -> list[dict]:
    """The newest takes' sidecars (newest first)."""
    out = []
    for p in sorted(folder.glob("[0-9][0-9][0-9][0-9]-*.json"), reverse=True)[:limit]:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return out

