"""One take: text and/or audio prompt -> LM stream -> streaming codec decoder -> chunks of new audio.

The decoder is fed the prompt frames first, so the new audio is decoded in context (it equals the tail of
decoding prompt + continuation in one pass) and starts exactly where the prompt ends, without an edge.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from segue.models.codec.encodec import DecoderStream
from segue.models.errors import RequestError
from segue.models.lm.config import MAX_TEXT_TOKENS, SamplingParams
from segue.models.lm.stream import LMStream, max_prompt_frames, step_streams
from segue.models.melody import Melody
from segue.models.musicgen import MusicGen

MAX_SECONDS = 3600.0  # one take; beyond this a request is almost certainly a typo (ms for s)


def whole_frames(audio, hop: int):
    """samples [..., N] -> the newest `N - N % hop` of them: whole codec frames that end on the last sample.

    The codec pads a partial last frame, so a prompt that is not a whole number of frames would end in padding and
    its continuation would start up to a frame after the real audio ends (a bar prompt would run past its bar line).
    Dropping the oldest `N % hop` samples instead keeps the end exact. Works on numpy arrays and tensors alike.
    """
    return audio[..., audio.shape[-1] % hop :]


def prompt_codes(model: MusicGen, audio: torch.Tensor) -> torch.Tensor:
    """audio [channels, N] at the model rate -> LM codes [1, K, N // hop] of its newest whole frames (see
    `whole_frames`: the codes end exactly where the audio ends). Raises RequestError for less than one frame."""
    audio = whole_frames(audio, model.hop_length)
    if audio.shape[-1] == 0:
        raise RequestError(f"the prompt audio is shorter than one codec frame ({model.hop_length} samples, "
                           f"{1000 * model.hop_length / model.sample_rate:g} ms); give more audio")
    return model.encode(audio[None].to(model.device))


def max_prompt_seconds(model: MusicGen) -> float:
    """Longest audio prompt the LM context takes."""
    return max_prompt_frames(model.require_lm().cfg) / model.frame_rate


def check_seconds(seconds: float) -> float:
    """A take's duration in range, or a sentence saying why not (no model needed: checked before loading one)."""
    if not seconds > 0:
        raise RequestError(f"duration must be positive, got {seconds}")
    if seconds > MAX_SECONDS:
        raise RequestError(f"duration {seconds:g} s is over the {MAX_SECONDS:g} s limit of one take; "
                           "ask for less (durations are in seconds)")
    return seconds


def frames_for(model: MusicGen, seconds: float) -> int:
    frames = round(check_seconds(seconds) * model.frame_rate)
    if frames < 1:
        raise RequestError(f"duration {seconds:g} s is shorter than one frame ({1 / model.frame_rate:g} s)")
    return frames


@dataclass(frozen=True)
class TakeSnapshot:
    stream: object
    decoders: list
    read: int
    skip: int
    n_codes: int


class Take:
    """Generates `frames` new frames after an optional prompt and yields their audio as it is decoded.

    Args:
        model: the loaded model (shared, read only).
        text: text prompt, or None for the null condition.
        prompt: LM codes [1, K, T_p] to continue, or None.
        frames: new frames to generate, or None for an endless take.
        sampling: sampling settings (seeded when `sampling.seed` is set).
        chunk_frames: frames decoded per yielded chunk.
        stream: a finished take's stream of this model to reuse (its caches are overwritten, not reallocated).
        melody: the melody to follow (MusicGen-Melody models only; None = the null melody). A retry from a snapshot
            keeps it without computing it again.
    """

    def __init__(self, model: MusicGen, text: str | None, prompt: torch.Tensor | None, frames: int | None,
                 sampling: SamplingParams = SamplingParams(), chunk_frames: int = 25, _resume: "TakeSnapshot" = None,
                 stream: LMStream | None = None, melody: Melody | None = None):
        if melody is not None and not model.takes_melody:
            raise RequestError(f"{model.info.ref} takes no melody; load facebook/musicgen-melody (or another "
                               "MusicGen-Melody model) to follow one")
        self.model, self.frames, self.chunk_frames = model, frames, chunk_frames
        if stream is None:
            self.stream = model.stream(1, sampling)
        else:  # a finished take's stream, reused: its caches are overwritten, never reallocated
            if stream.lm is not model.lm or stream.B != 1:
                raise ValueError("a reused stream must be a 1-item stream of this model's LM")
            self.stream = stream
            stream.set_sampling(sampling)
            stream.reseed(sampling.seed if sampling.seed is not None else int.from_bytes(os.urandom(4), "little"))
        self.decoders: list[DecoderStream] = [model.codec.stream_decoder(1) for _ in range(model.codec_passes)]
        self.codes: list[torch.Tensor] = []  # new frames, on the host, as read
        if _resume is not None:
            self.n_prompt = _resume.stream.n_prompt
            self.restore(_resume)
            return
        self.n_prompt = 0 if prompt is None else prompt.shape[-1]
        if text and model.text is not None:
            tokens = model.text.token_count(text)
            if tokens > MAX_TEXT_TOKENS:
                raise RequestError(f"the text prompt is {tokens} tokens; the limit is {MAX_TEXT_TOKENS}, shorten it")
        try:
            self.stream.start([text], prompt, total_frames=None if frames is None else self.n_prompt + frames,
                              chroma=None if melody is None else melody.chroma)
        except ValueError as exc:
            raise RequestError(str(exc)) from exc
        self.skip = self.n_prompt * model.hop_length  # samples of prompt audio the decoders will emit first
        self.read = 0
        ready = self.stream.frames_ready
        if ready:  # the decoders run through the prompt's frames now, with the prefill: part of setting the take
            self.read = ready  # up, so its first chunk of new audio comes one chunk's steps after it starts, not a
            self._decode(self.stream.read_frames(0, ready), last=False)  # whole prompt's decoding later

    @classmethod
    def from_snapshot(cls, model: MusicGen, snap: "TakeSnapshot", frames: int | None, seed: int | None = None,
                      chunk_frames: int = 25, stream: LMStream | None = None) -> "Take":
        """A new take in its own buffers (`stream`'s, when given), resumed from another take's snapshot (a retry
        while the original still plays): the prompt is not encoded or prefilled again."""
        take = cls(model, None, None, frames, snap.stream.sampling, chunk_frames, _resume=snap, stream=stream)
        if seed is not None:
            take.stream.reseed(seed)
        return take

    @property
    def seed(self) -> int:
        return self.stream.seed

    def _decode(self, codes: torch.Tensor, last: bool) -> np.ndarray:
        parts = []
        for dec, c in zip(self.decoders, self.model.split_codes(codes)):
            y = dec.push(c, check=False)  # LM output: valid by construction, no host sync
            if last:
                y = torch.cat([y, dec.flush()], -1)
            parts.append(y)
        pcm = torch.cat(parts, 1)[0]  # [C, n]
        drop = min(self.skip, pcm.shape[-1])
        self.skip -= drop
        return pcm[:, drop:].float().cpu().numpy()  # the only host copy: finished PCM

    @property
    def done(self) -> bool:
        return self.stream.done and self.read >= self.stream.frames_ready

    @torch.no_grad()
    def pump(self) -> np.ndarray | None:
        """One LM step; returns the newly decoded chunk [C, n] float32 when one is due (every `chunk_frames`
        frames, and at the end), else None. The concatenation of all chunks is frames * hop samples."""
        return pump_takes([self])[0]

    def _after_step(self) -> np.ndarray | None:
        """Read the frames completed so far and decode them when a chunk is due (see `pump`)."""
        s = self.stream
        ready = s.frames_ready
        if ready - self.read < self.chunk_frames and not s.done:
            return None
        codes = s.read_frames(self.read, ready)
        new_from = max(self.read, self.n_prompt) - self.read
        if codes.shape[-1] > new_from:
            self.codes.append(codes[0, :, new_from:].cpu())
        self.read = ready
        pcm = self._decode(codes, last=s.done)
        return pcm if pcm.shape[-1] else None

    def __iter__(self) -> Iterator[np.ndarray]:
        """Chunks [C, n] float32 of new audio, until the take is done (forever for an endless take)."""
        while not self.done:
            pcm = self.pump()
            if pcm is not None:
                yield pcm

    def snapshot(self) -> TakeSnapshot:
        """The whole take's state (LM stream and codec decoders); taken right after creation it holds just the
        prefilled prompt, which is what an instant retry needs."""
        return TakeSnapshot(self.stream.snapshot(), [d.snapshot() for d in self.decoders], self.read, self.skip,
                            len(self.codes))

    def restore(self, snap: TakeSnapshot, seed: int | None = None) -> None:
        """Go back to `snap` (in place); with `seed`, the retry draws a different take from the same prompt state.
        Iterate the take again to hear it."""
        self.stream.restore(snap.stream)
        for dec, saved in zip(self.decoders, snap.decoders):
            dec.restore(saved)
        self.read, self.skip = snap.read, snap.skip
        del self.codes[snap.n_codes :]
        if seed is not None:
            self.stream.reseed(seed)

    def new_codes(self) -> np.ndarray:
        """The generated frames [K, frames] (delay pattern removed), after iteration."""
        if not self.codes:
            return np.zeros((self.model.lm.cfg.n_q, 0), dtype=np.int64)
        return torch.cat(self.codes, -1).numpy().astype(np.int64)


@torch.no_grad()
def pump_takes(takes: list[Take]) -> list[np.ndarray | None]:
    """`Take.pump()` for each take, with one LM step for all of them (`step_streams`). Each returns a chunk at the
    pumps its own `pump()` would, of the same length; its codes and audio are the ones `pump()` would give until a
    near tie among its draws, after which it is another, equally likely take (a batched GEMM rounds unlike a
    smaller one: see `step_streams`). One take is `pump()` bit for bit. Takes already done give None; takes whose
    stream is done still decode what is left. The takes must share one LM."""
    if len({id(t) for t in takes}) != len(takes):
        raise ValueError("a take is listed twice; list each take once per pump")
    live = [not t.done for t in takes]
    step_streams([t.stream for t, on in zip(takes, live) if on and not t.stream.done])
    return [t._after_step() if on else None for t, on in zip(takes, live)]
