"""`segue generate` and `segue codec`: one-shot jobs on top of the model core."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segue.models.audio import AudioWriter, read_audio, to_model_audio, write_audio
from segue.models.errors import AudioInputError, RequestError, SegueError
from segue.models.generation import Take, check_seconds, frames_for, max_prompt_seconds, prompt_codes
from segue.models.lm.config import SamplingParams
from segue.models.loading.builder import load_codec, load_model, parse_device, resolve_dtype

log = logging.getLogger("segue")

DEFAULT_PROMPT_SECONDS = 10.0


def _output_path(path: str, what: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise RequestError(f"{what} {out} is a folder; give a file name")
    if not out.parent.exists():
        raise RequestError(f"cannot write {what} {out}: folder {out.parent} does not exist")
    return out


def _sampling(args: argparse.Namespace) -> SamplingParams:
    if args.seed is not None and args.seed < 0:
        raise RequestError(f"--seed must be >= 0, got {args.seed}")
    try:
        return SamplingParams(args.temperature, args.top_k, args.top_p, args.cfg, args.seed)
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def generate(args: argparse.Namespace) -> None:
    out = _output_path(args.out, "--out")
    codes_out = _output_path(args.codes_out, "--codes-out") if args.codes_out else None
    if args.prompt_seconds is not None and args.continue_wav is None:
        raise RequestError("--prompt-seconds needs --continue WAV")
    if args.prompt_seconds is not None and not args.prompt_seconds > 0:
        raise RequestError(f"--prompt-seconds must be positive, got {args.prompt_seconds}")
    # Everything that needs no model is checked first: a typo should not wait for a 7 GB load.
    check_seconds(args.duration)
    sampling = _sampling(args)
    source = read_audio(args.continue_wav) if args.continue_wav else None
    tune = read_audio(args.melody) if args.melody else None  # a bad file fails before any model loads
    device = parse_device(args.device)
    dtype = resolve_dtype(args.dtype, device)

    t0 = time.perf_counter()
    model = load_model(args.model, device, dtype)
    lm = model.require_lm()
    log.info("loaded %s (%s) on %s in %.1f s", args.model, model.info.layout, device, time.perf_counter() - t0)
    if args.top_k > lm.cfg.card:
        raise RequestError(f"--top-k {args.top_k} exceeds the {lm.cfg.card} entries of a codebook")
    frames = frames_for(model, args.duration)

    prompt = None
    if source is not None:
        limit = max_prompt_seconds(model)
        if args.prompt_seconds is not None and args.prompt_seconds > limit:
            raise RequestError(f"--prompt-seconds {args.prompt_seconds:g} is longer than the context allows "
                               f"({limit:.1f} s for this model)")
        data, sr = source
        audio = to_model_audio(data, sr, model.sample_rate, model.channels)
        seconds = min(args.prompt_seconds or DEFAULT_PROMPT_SECONDS, limit)
        audio = audio[:, -max(1, round(seconds * model.sample_rate)):]
        if audio.shape[-1] < model.hop_length:
            raise AudioInputError(f"{args.continue_wav} is shorter than one codec frame "
                                  f"({model.hop_length / model.sample_rate * 1000:.0f} ms); give more audio")
        prompt = prompt_codes(model, audio)

    melody = None
    if tune is not None:
        if not model.takes_melody:
            raise RequestError(f"--melody needs a MusicGen-Melody model; {args.model} takes no melody (use "
                               "facebook/musicgen-melody or demo-melody)")
        data, sr = tune
        melody = model.melody_from_audio(to_model_audio(data, sr, model.sample_rate, 1).to(model.device))
        print(f"segue: following the melody of {args.melody} ({melody.seconds:.1f} s, {melody.separation})",
              file=sys.stderr)
    take = Take(model, args.prompt, prompt, frames, sampling, melody=melody)
    print(f"segue: generating {frames / model.frame_rate:.2f} s with {args.model} (seed {take.seed})",
          file=sys.stderr)
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=frames, unit="frame", disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)
    with AudioWriter(out, model.sample_rate, model.channels) as writer:
        for chunk in take:
            writer.write(chunk)
            bar.update(round(chunk.shape[-1] / model.hop_length) if chunk.shape[-1] else 0)
    bar.close()
    elapsed = time.perf_counter() - t0
    if codes_out is not None:
        np.save(codes_out, take.new_codes())
    print(f"segue: wrote {writer.frames / model.sample_rate:.2f} s to {out} in {elapsed:.1f} s "
          f"({frames / model.frame_rate / elapsed:.2f}x real time)", file=sys.stderr)


def _load_codes(path: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise RequestError(f"{p} does not exist")
    try:
        codes = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise RequestError(f"{p} is not a .npy array ({exc}); write it with `segue codec encode` or numpy.save") \
            from exc
    if not isinstance(codes, np.ndarray) or not np.issubdtype(codes.dtype, np.integer):
        raise RequestError(f"{p} must hold integer codes, got {getattr(codes, 'dtype', type(codes))}")
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2 or codes.shape[1] == 0:
        raise RequestError(f"{p} must hold codes [codebooks, frames], got shape {list(codes.shape)}")
    return codes


def codec(args: argparse.Namespace) -> None:
    device = parse_device(args.device)
    if args.codec_command == "encode":
        out = _output_path(args.codes_out, "--codes-out")
        data, sr = read_audio(args.input)
        model = load_codec(args.model, device)
        if not model.codec.cfg.streamable:
            raise SegueError(f"{args.model} encodes normalised 1 s chunks with per-chunk scales; `segue codec` "
                             "supports single-pass codecs (16/24/32 kHz)")
        audio = to_model_audio(data, sr, model.sample_rate, model.channels)
        codes = model.codec.encode(audio[None].to(device))[0]
        np.save(out, codes.cpu().numpy().astype(np.int64))
        print(f"segue: {audio.shape[-1] / model.sample_rate:.2f} s -> codes {list(codes.shape)} in {out}",
              file=sys.stderr)
    else:
        out = _output_path(args.out, "--out")
        codes = _load_codes(args.input)
        model = load_codec(args.model, device)
        if not model.codec.cfg.streamable:
            raise SegueError(f"{args.model} decodes normalised 1 s chunks; `segue codec` supports single-pass codecs")
        try:  # the codec checks codebook count and code range itself
            audio = model.codec.decode(torch.from_numpy(codes.astype(np.int64))[None].to(device))[0]
        except ValueError as exc:
            raise RequestError(f"{args.input}: {exc}") from exc
        write_audio(out, audio, model.sample_rate)
        print(f"segue: codes {list(codes.shape)} -> {audio.shape[-1] / model.sample_rate:.2f} s in {out}",
              file=sys.stderr)
