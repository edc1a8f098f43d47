"""Where a continuation's prompt, or a take's melody, comes from: the live input, a previous take, an audio file,
or client PCM.

A prompt resolves to LM codes [1, K, T] at the model's frame rate, at most the longest prompt the model's context
takes (the newest part is kept); a melody to its chroma. Runs on the engine thread (encoding is model work).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from segue.daemon.audio_io import Audio
from segue.daemon.clock import Grid
from segue.daemon.vocabulary import (BAD_AUDIO, BAD_REQUEST, NO_INPUT, NO_SUCH_TAKE, PATH_NOT_ALLOWED, CommandError,
                                     FileSource, LiveSource, PcmSource, Source, TakeSource)
from segue.models.audio import read_audio, to_model_audio
from segue.models.errors import AudioInputError
from segue.models.generation import max_prompt_seconds, prompt_codes
from segue.models.melody import Melody
from segue.models.musicgen import MusicGen


def allowed_path(path: str, folders: tuple[Path, ...]) -> Path:
    """`path` resolved, if it lies inside one of `folders` (relative paths are taken in the first one)."""
    p = Path(path)
    if not p.is_absolute() and folders:
        p = folders[0] / p
    p = p.resolve()
    for f in folders:
        if p.is_relative_to(f.resolve()):
            return p
    names = ", ".join(str(f) for f in folders) or "none configured"
    raise CommandError(PATH_NOT_ALLOWED, f"{path} is outside the folders segue may read ({names}); copy the file "
                                         "there or add its folder with --allow")


def live_span(audio: Audio, grid: Grid, src: LiveSource, default_seconds: float,
              default_bars: float | None) -> tuple[int, int]:
    """Input-ring samples [start, stop) holding the requested part of what was just played.

    `last_bars` takes whole bars ending on the latest bar line the input has fully recorded, so the prompt (and
    the continuation after it) keeps the song's phase. The recorded input lags what is heard by the round trip.
    """
    rt = audio.output_latency + audio.input_latency
    end = audio.input.end
    bars = src.bars if src.bars is not None else (default_bars if src.seconds is None else None)
    if bars is not None:
        stop_heard = grid.last_bar(end - rt)
        start = stop_heard - grid.bars(bars) + rt
        stop = stop_heard + rt
    else:
        secs = src.seconds if src.seconds is not None else default_seconds
        start, stop = end - round(secs * audio.sample_rate), end
    if start < 0 or start < end - audio.input.capacity + 1024:
        have, need = end / audio.sample_rate, (end - start) / audio.sample_rate
        raise CommandError(NO_INPUT, f"that prompt reaches {need:.1f} s back but the live input holds {have:.1f} s; "
                                     "ask for a shorter prompt or play longer")
    return start, stop


def prompt_audio(source: Source, *, audio: Audio, grid: Grid, take_audio, folders: tuple[Path, ...],
                 default_seconds: float, default_bars: float | None) -> tuple[np.ndarray, int, dict]:
    """(samples [C, n], their rate, a description for the take's sidecar)."""
    if isinstance(source, LiveSource):
        if audio.in_channels == 0:
            raise CommandError(NO_INPUT, "this daemon has no audio input (--audio-device none or an output-only "
                                         "device); continue a take, a file or PCM instead")
        start, stop = live_span(audio, grid, source, default_seconds, default_bars)
        return audio.input.read(start, stop), audio.sample_rate, dict(source="live", input_start=start,
                                                                      input_stop=stop)
    if isinstance(source, TakeSource):
        found = take_audio(source.take)
        if found is None:
            raise CommandError(NO_SUCH_TAKE, f"there is no take {source.take}; `takes` lists them")
        pcm, sr = found
        desc = dict(source="take", take=source.take)
    elif isinstance(source, FileSource):
        path = allowed_path(source.path, folders)
        try:
            pcm, sr = read_audio(path)
        except AudioInputError as exc:
            raise CommandError(BAD_AUDIO, str(exc)) from exc
        desc = dict(source="file", path=str(path))
    else:
        assert isinstance(source, PcmSource)
        pcm, sr = source.audio, source.sample_rate
        desc = dict(source="pcm", samples=pcm.shape[1], sample_rate=sr)
    # The end of the audio is taken as a bar line: `last_bars` is that many bars at the current tempo.
    keep = source.seconds if source.bars is None else source.bars * grid.samples_per_bar / grid.sample_rate
    if keep is not None:
        pcm = pcm[:, max(0, pcm.shape[1] - round(keep * sr)) :]
        desc.update(last_seconds=round(keep, 6))
    return pcm, sr, desc


def encode_prompt(model: MusicGen, pcm: np.ndarray, sr: int) -> torch.Tensor:
    """Audio [C, n] at `sr` -> codes [1, K, T]: at most the newest part the context takes."""
    limit = max_prompt_seconds(model)
    n = pcm.shape[1]
    pcm = pcm[:, max(0, n - math.ceil(limit * sr)) :]
    if pcm.shape[1] < sr / model.frame_rate:
        raise CommandError(BAD_AUDIO, f"the prompt audio is shorter than one frame ({1 / model.frame_rate:g} s)")
    codes = prompt_codes(model, to_model_audio(pcm, sr, model.sample_rate, model.channels))  # [1, K, T]
    return codes[..., -int(limit * model.frame_rate):]


def follow_melody(model: MusicGen, pcm: np.ndarray, sr: int) -> Melody:
    """Audio [C, n] at `sr` -> the melody (chroma) a take of a MusicGen-Melody `model` follows ("play a melody, get
    a song in it"). Without a stem separation model the chroma is taken from the full mix, and the result says so."""
    if not model.takes_melody:
        raise CommandError(BAD_REQUEST, f"{model.info.ref} takes no melody; set model=facebook/musicgen-melody (or "
                                        "demo-melody) first, or leave 'melody' out")
    try:
        return model.melody_from_audio(to_model_audio(pcm, sr, model.sample_rate, 1).to(model.device))
    except AudioInputError as exc:
        raise CommandError(BAD_AUDIO, str(exc)) from exc
