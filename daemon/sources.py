"""Where a continuation's prompt, or a take's melody, comes from: the live input, a previous take, an audio file,
or client PCM.

A prompt resolves to LM codes [1, K, T] at the model's frame rate, at most the longest prompt the model's context
takes (the newest part is kept); a melody to its chroma. Runs on the engine thread (encoding is model work).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from segue.daemon.audio_io import Audio
from segue.daemon.clock import Grid
from segue.daemon.vocabulary import (BAD_AUDIO, BAD_REQUEST, NO_INPUT, NO_SUCH_TAKE, PATH_NOT_ALLOWED, CommandError,
                                     FileSource, LiveSource, PcmSource, Source, TakeSource)
from segue.models.audio import read_audio, to_model_audio
from segue.models.errors import AudioInputError
from segue.models.generation import prompt_codes, whole_frames
from segue.models.lm.stream import max_prompt_frames
from segue.models.melody import Melody
from segue.models.musicgen import MusicGen


def readable_folders(folders: tuple[Path, ...]) -> str:
    """The folders a file source may come from, as error messages name them."""
    if not folders:
        return "none configured"
    takes, *allowed = folders
    text = f"{takes} (the takes folder: a relative path that reaches the daemon is taken in it; segue send, Client " \
           "and segue bridge send paths relative to their own folder, made absolute)"
    return text + "".join(f", {f}" for f in allowed)


def allowed_path(path: str, folders: tuple[Path, ...]) -> Path:
    """`path` resolved, if it lies inside one of `folders` (a relative path is taken in the first one, the takes
    folder: the daemon does not know the client's current folder; `segue send` and `Client` send absolute paths)."""
    p = Path(path)
    if not p.is_absolute() and folders:
        p = folders[0] / p
    try:
        p = p.resolve()
    except (OSError, ValueError, RuntimeError) as exc:  # a loop of links, a name the system refuses
        raise CommandError(PATH_NOT_ALLOWED, f"{path} cannot be resolved ({exc}); name a file in "
                                             f"{readable_folders(folders)}") from None
    for f in folders:
        if p.is_relative_to(f.resolve()):
            return p
    named = str(p) if Path(path).is_absolute() else f"{path} (taken as {p})"
    raise CommandError(PATH_NOT_ALLOWED, f"{named} is outside the folders this daemon may read: "
                                         f"{readable_folders(folders)}; copy the file into one of them or add its "
                                         "folder with `segue serve --allow DIR`")


# A hub id as the daemon takes it: owner/name, each part starting with a letter or digit ("a/.." is no hub id).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def allowed_model(ref: str, folders: tuple[Path, ...], builtin: tuple[str, ...]) -> str:
    """`set model=ref` as the daemon takes it: a built-in name, a hub id, or an absolute folder inside `folders`
    (the takes folder and the `--allow` folders). Anything else gets one answer, whether it exists or not (no `~`,
    no relative folder: a client sends its folders absolute)."""
    if ref in builtin or (_HUB_ID.match(ref) and ".." not in ref):
        return ref
    p = Path(ref)
    if p.is_absolute() and any(p.resolve().is_relative_to(f.resolve()) for f in folders):
        return ref
    raise CommandError(PATH_NOT_ALLOWED, f"'model' must be a hub id such as facebook/musicgen-small, one of "
                                         f"{', '.join(builtin)}, or a model folder inside the folders this daemon may "
                                         f"read: {readable_folders(folders)}; add its folder with "
                                         "`segue serve --allow DIR`")


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


# The most audio a prompt or a melody is read, held and kept (its `.prompt.wav`) as: its newest part. Twice what
# the published models use (a 30 s context, a 30 s melody); a longer file or PCM is cut to its end.
MAX_PROMPT_AUDIO_S = 60.0


def prompt_audio(source: Source, *, audio: Audio, grid: Grid, take_audio, folders: tuple[Path, ...],
                 default_seconds: float, default_bars: float | None) -> tuple[np.ndarray, int, dict]:
    """(samples [C, n], their rate, a description for the take's sidecar): at most the last `MAX_PROMPT_AUDIO_S`
    (and at most what `last_seconds` / `last_bars` ask for) of the source. `take_audio(take id, seconds)` reads a
    take's end."""
    # The end of the audio is taken as a bar line: `last_bars` is that many bars at the current tempo.
    keep = source.seconds if source.bars is None else source.bars * grid.samples_per_bar / grid.sample_rate
    bound = MAX_PROMPT_AUDIO_S if keep is None else min(keep, MAX_PROMPT_AUDIO_S)
    if isinstance(source, LiveSource):
        if audio.in_channels == 0:
            raise CommandError(NO_INPUT, "this daemon has no audio input (--audio-device none or an output-only "
                                         "device); continue a take, a file or PCM instead")
        start, stop = live_span(audio, grid, source, default_seconds, default_bars)
        return audio.input.read(start, stop), audio.sample_rate, dict(source="live", input_start=start,
                                                                      input_stop=stop)
    if isinstance(source, TakeSource):
        found = take_audio(source.take, bound)
        if found is None:
            raise CommandError(NO_SUCH_TAKE, f"there is no take {source.take}; `takes` lists them")
        pcm, sr = found
        desc = dict(source="take", take=source.take)
    elif isinstance(source, FileSource):
        path = allowed_path(source.path, folders)
        if not path.exists():
            raise CommandError(BAD_AUDIO, f"{path} does not exist; this daemon reads files in "
                                          f"{readable_folders(folders)}")
        try:
            pcm, sr = read_audio(path, last_seconds=bound)
        except AudioInputError as exc:
            raise CommandError(BAD_AUDIO, str(exc)) from exc
        desc = dict(source="file", path=str(path))
    else:
        assert isinstance(source, PcmSource)
        pcm, sr = source.audio, source.sample_rate
        desc = dict(source="pcm", samples=pcm.shape[1], sample_rate=sr)
    if keep is not None:
        desc.update(last_seconds=round(keep, 6))
    if pcm.shape[1] > round(bound * sr):
        pcm = pcm[:, pcm.shape[1] - round(bound * sr) :]
        if keep is None:
            desc.update(kept_seconds=MAX_PROMPT_AUDIO_S)
    return pcm, sr, desc


def encode_prompt(model: MusicGen, pcm: np.ndarray, sr: int) -> torch.Tensor:
    """Audio [C, n] at `sr` -> codes [1, K, T]: the newest whole frames (at most what the context takes) ending
    exactly on the audio's last sample, so that a bar prompt's context ends on its bar line (see `whole_frames`)."""
    limit = max_prompt_frames(model.require_lm().cfg)
    n = pcm.shape[1]
    pcm = pcm[:, max(0, n - math.ceil((limit + 1) * model.hop_length * sr / model.sample_rate)) :]
    audio = whole_frames(to_model_audio(pcm, sr, model.sample_rate, model.channels), model.hop_length)
    if audio.shape[-1] == 0:
        raise CommandError(BAD_AUDIO, f"the prompt audio is {n / sr * 1000:.1f} ms, shorter than one codec frame "
                                      f"({1000 / model.frame_rate:g} ms); ask for a longer prompt")
    return prompt_codes(model, audio[:, -limit * model.hop_length :])  # [1, K, T <= limit]


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
