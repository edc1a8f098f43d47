"""`segue generate` and `segue codec`: one-shot jobs on top of the model core.

Every number a flag takes is checked against the vocabulary's bounds (`vocabulary.BOUNDS`, the same table the
daemon uses) before any model loads; a value out of range is one line naming the flag. Codes files are written with
their sidecar (daemon/codes_file.py), so that `segue codec decode` gives back the audio they came from.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

from segue.daemon.cli import DEFAULT_DURATION, DEFAULT_PROMPT_SECONDS
from segue.daemon.codes_file import CodesLayout, check_fit, decode_codes, read_codes, sidecar_path, write_codes
from segue.daemon.cpu import default_threads, oversubscribed
from segue.daemon.outputs import codes_outputs, output_file, refuse_overwrites
from segue.daemon.vocabulary import CommandError, check_number, check_value
from segue.models.audio import AudioWriter, read_audio, to_model_audio
from segue.models.errors import RequestError, SegueError
from segue.models.generation import Take, frames_for, max_prompt_seconds, prompt_codes
from segue.models.lm.config import SamplingParams
from segue.models.loading.builder import load_codec, load_model, parse_device, resolve_dtype

log = logging.getLogger("segue")

SAMPLING_DEFAULTS = SamplingParams()  # audiocraft's: temperature 1, top-k 250, top-p 0, cfg 3
# generate flag -> vocabulary key: its bounds, shared with the daemon.
FLAG_KEYS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg": "cfg", "seed": "seed",
             "duration": "seconds", "prompt_seconds": "prompt_seconds", "threads": "threads"}
# What --from-take reads from the take's sidecar instead (a flag for it is refused).
FROM_TAKE_OWN = ("prompt", "continue_wav", "prompt_seconds", "melody", "seed", "temperature", "top_k", "top_p", "cfg")


def say(text: str) -> None:
    print(f"segue: {text}", file=sys.stderr)


def flag_name(dest: str) -> str:
    return "--continue" if dest == "continue_wav" else "--" + dest.replace("_", "-")


def checked_flags(args: argparse.Namespace) -> None:
    """Every numeric flag given, against the vocabulary's bounds (in place: 2.0 -> 2 for whole-number keys).
    Raises RequestError naming the flag."""
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        try:
            setattr(args, dest, check_number(key, value, flag_name(dest)))
        except CommandError as exc:
            raise RequestError(exc.message) from exc
    if getattr(args, "prompt", None) is not None:  # as the wire checks it: length and valid Unicode
        try:
            check_value("prompt", args.prompt)
        except CommandError as exc:
            raise RequestError(exc.message.replace("'prompt'", "--prompt")) from exc


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """`--out` and `--codes-out`, checked (daemon/outputs.py)."""
    out = output_file(args.out, "--out", ".wav")
    return out, output_file(args.codes_out, "--codes-out", ".npy") if args.codes_out else None


def _fits_codebook(top_k: int, lm, what: str) -> None:
    """The vocabulary allows top_k up to a published codebook's 2048 entries; a model with fewer says so."""
    if top_k > lm.cfg.card:
        raise RequestError(f"{what} {top_k} exceeds the {lm.cfg.card} entries of a codebook of this model; give at "
                           f"most {lm.cfg.card}")


def _pick(value, default):
    return default if value is None else value


def _sampling(args: argparse.Namespace) -> SamplingParams:
    d = SAMPLING_DEFAULTS
    try:
        return SamplingParams(_pick(args.temperature, d.temperature), _pick(args.top_k, d.top_k),
                              _pick(args.top_p, d.top_p), _pick(args.cfg, d.cfg_coef), args.seed)
    except ValueError as exc:
        raise RequestError(str(exc)) from exc


def _progress(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", disable=not sys.stderr.isatty(), file=sys.stderr, leave=False)


def generate(args: argparse.Namespace) -> None:
    """`segue generate`: a new take, or with --from-take a daemon take rendered again."""
    checked_flags(args)
    out, codes_out = _outputs(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        if (warning := oversubscribed(args.threads)) is not None:
            log.warning("%s", warning)
    elif args.from_take is None:
        torch.set_num_threads(default_threads())  # the daemon's own default: a take renders the same with either
    if args.from_take is not None:
        _from_take(args, out, codes_out)
        return
    if args.model is None:
        raise RequestError("--model is required (a hub id, a model folder or demo), unless --from-take renders a "
                           "daemon take again")
    if args.prompt_seconds is not None and args.continue_wav is None:
        raise RequestError("--prompt-seconds needs --continue WAV")
    refuse_overwrites({"--continue": args.continue_wav, "--melody": args.melody},
                      [("--out", out, "--out"), *codes_outputs(codes_out)])
    # Everything that needs no model is checked first: a typo should not wait for a 7 GB load.
    duration = _pick(args.duration, DEFAULT_DURATION)
    sampling = _sampling(args)
    source = read_audio(args.continue_wav) if args.continue_wav else None
    tune = read_audio(args.melody) if args.melody else None  # a bad file fails before any model loads
    device = parse_device(_pick(args.device, "auto"))
    dtype = resolve_dtype(_pick(args.dtype, "auto"), device)

    t0 = time.perf_counter()
    model = load_model(args.model, device, dtype)
    lm = model.require_lm()
    log.info("loaded %s (%s) on %s in %.1f s", args.model, model.info.layout, device, time.perf_counter() - t0)
    _fits_codebook(sampling.top_k, lm, "--top-k")
    frames = frames_for(model, duration)

    prompt = None
    if source is not None:
        hop, sr = model.hop_length, model.sample_rate
        limit = max_prompt_seconds(model)
        if args.prompt_seconds is not None:
            if args.prompt_seconds > limit:
                raise RequestError(f"--prompt-seconds {args.prompt_seconds:g} is longer than the context allows "
                                   f"({limit:.1f} s for this model)")
            if round(args.prompt_seconds * sr) < hop:
                raise RequestError(f"--prompt-seconds {args.prompt_seconds:g} is shorter than one codec frame "
                                   f"({1000 * hop / sr:g} ms); ask for at least {hop / sr:g}")
        data, rate = source
        audio = to_model_audio(data, rate, sr, model.channels)
        audio = audio[:, -round(min(_pick(args.prompt_seconds, DEFAULT_PROMPT_SECONDS), limit) * sr):]
        prompt = prompt_codes(model, audio)  # the newest whole frames: they end on the file's last sample

    melody = None
    if tune is not None:
        if not model.takes_melody:
            raise RequestError(f"--melody needs a MusicGen-Melody model; {args.model} takes no melody (use "
                               "facebook/musicgen-melody or demo-melody)")
        data, rate = tune
        melody = model.melody_from_audio(to_model_audio(data, rate, model.sample_rate, 1).to(model.device))
        say(f"following the melody of {args.melody} ({melody.seconds:.1f} s, {melody.separation})")
    take = Take(model, args.prompt, prompt, frames, sampling, melody=melody)
    # The seed and the thread count: past a re-prompt the tokens depend on both (--seed N --threads T again).
    say(f"generating {frames / model.frame_rate:.2f} s with {args.model} (LM {lm.precision}, seed {take.seed}, "
        f"{plural(torch.get_num_threads(), 'thread')})")
    t0 = time.perf_counter()
    bar = _progress(frames)
    with AudioWriter(out, model.sample_rate, model.channels) as writer:
        for chunk in take:
            writer.write(chunk)
            bar.update(round(chunk.shape[-1] / model.hop_length) if chunk.shape[-1] else 0)
    bar.close()
    elapsed = time.perf_counter() - t0
    if codes_out is not None:  # the prompt's frames first: decoded in their context, the new audio is exact
        head = [prompt[0].cpu().numpy()] if prompt is not None else []
        codes = np.concatenate(head + [take.new_codes()], axis=1)
        write_codes(codes_out, codes, CodesLayout.of(model, args.model, codes.shape, take.n_prompt))
    say(f"wrote {writer.frames / model.sample_rate:.2f} s to {out} in {elapsed:.1f} s "
        f"({frames / model.frame_rate / elapsed:.2f}x real time)")


def _from_take(args: argparse.Namespace, out: Path, codes_out: Path | None) -> None:
    """`segue generate --from-take NNNN-cmd.json`: the daemon take rendered again (daemon/reproduce.py)."""
    from segue.daemon.reproduce import read_recipe, render

    given = [flag_name(d) for d in FROM_TAKE_OWN if getattr(args, d, None) is not None]
    if given:
        raise RequestError(f"--from-take takes {', '.join(given)} from the take's sidecar; leave "
                           f"{'it' if len(given) == 1 else 'them'} out")
    recipe = read_recipe(args.from_take)
    refuse_overwrites(recipe.files, [("--out", out, "--out"), *codes_outputs(codes_out)])
    name = recipe.sidecar.stem
    changed = [f for f, v in (("--model", args.model), ("--device", args.device), ("--dtype", args.dtype),
                              ("--threads", args.threads)) if v is not None]
    if args.threads is None:
        torch.set_num_threads(recipe.threads)  # the re-prompt's GEMM differs with the thread count
    try:
        device = parse_device(_pick(args.device, recipe.device))
    except SegueError as exc:
        raise RequestError(f"take {name} was made on {recipe.device}, which is not usable here ({exc}); render it "
                           "with --device cpu (its tokens will then differ)") from exc
    dtype = resolve_dtype(_pick(args.dtype, recipe.dtype), device)
    ref = _pick(args.model, recipe.model)
    model = load_model(ref, device, dtype)
    lm = model.require_lm()
    check_fit(model, recipe.codes, recipe.layout, str(recipe.files["the take's codes"]), ref)
    _fits_codebook(recipe.sampling.top_k, lm, f"{name}'s top_k")
    for change in recipe.changes:
        _fits_codebook(change.values.get("top_k", 0), lm, f"{name}'s change at column {change.column}: top_k")
    frames = recipe.frames if args.duration is None else frames_for(model, args.duration)
    same_codec = (model.sample_rate, model.hop_length) == (recipe.layout.sample_rate, recipe.layout.hop_length)
    # The take's own length (what it kept, at the model rate), unless --duration or another codec's rate changes it
    length = recipe.length if args.duration is None and same_codec else frames * model.hop_length
    lm_frames = recipe.lm_frames if args.duration is None else frames
    if args.duration is not None:
        changed.append("--duration")
    if recipe.stepped_with:
        say(f"take {name} was stepped together with take(s) {', '.join(map(str, recipe.stepped_with))} in one "
            "batched LM call, and a batched GEMM is not bit-identical to a single one: this render equals it only "
            "within float tolerance (its tokens may differ)")
    if changed:
        say(f"{', '.join(changed)} given: not the take's own settings, so the result can differ from it")
    say(f"rendering take {name} again: {length / model.sample_rate:.2f} s with {ref} on {device} "
        f"({model.require_lm().precision}, {plural(torch.get_num_threads(), 'thread')}, seed {recipe.seed}"
        f"{f', {len(recipe.changes)} sampling change(s)' if recipe.changes else ''})")
    t0 = time.perf_counter()
    bar = _progress(frames)
    try:
        with AudioWriter(out, model.sample_rate, model.channels) as writer:
            codes = render(model, recipe, frames, lm_frames, writer.write, bar.update, length)
    except ValueError as exc:  # the LM refused the recipe's prompt or melody (another model given, say)
        raise RequestError(f"{args.from_take}: {exc}") from exc
    finally:
        bar.close()
    n_prompt = recipe.layout.prompt_frames
    if codes_out is not None:
        write_codes(codes_out, codes, CodesLayout.of(model, ref, codes.shape, n_prompt, length))
    say(f"wrote {writer.frames / model.sample_rate:.2f} s to {out} in {time.perf_counter() - t0:.1f} s")


def _codec_model(args: argparse.Namespace):
    model = load_codec(args.model, parse_device(args.device))
    if not model.codec.cfg.streamable:
        raise SegueError(f"{args.model} codes normalised 1 s chunks with per-chunk scales; `segue codec` supports "
                         "single-pass codecs (16/24/32 kHz)")
    return model


def codec(args: argparse.Namespace) -> None:
    if args.codec_command == "encode":
        _encode(args)
    else:
        _decode(args)


def _encode(args: argparse.Namespace) -> None:
    """Audio file -> codes [K, T] (a stereo MusicGen's: left and right interleaved) and their sidecar, which
    keeps the length: decoding gives back exactly as many samples."""
    out = output_file(args.codes_out, "--codes-out", ".npy")
    refuse_overwrites({"the input": args.input}, codes_outputs(out))
    data, sr = read_audio(args.input)
    model = _codec_model(args)
    channels, have = model.channels, data.shape[0]
    if have != channels:
        if channels == 1:
            say(f"{args.input} has {have} channels and {args.model} codes mono: mixing them to mono (a stereo "
                "MusicGen folder, e.g. facebook/musicgen-stereo-small, keeps both)")
        else:
            how = "duplicated" if have == 1 else "mixed to mono and duplicated"
            say(f"{args.input} has {have} channel(s) and {args.model} codes {channels}: {how}")
    audio = to_model_audio(data, sr, model.sample_rate, channels)
    codes = model.encode(audio[None].to(model.device))[0].cpu().numpy()  # [K, ceil(N / hop)]
    side = write_codes(out, codes, CodesLayout.of(model, args.model, codes.shape, 0, audio.shape[-1]))
    say(f"{audio.shape[-1] / model.sample_rate:.2f} s ({audio.shape[-1]} samples at {model.sample_rate} Hz, "
        f"{channels} ch) -> codes {list(codes.shape)} in {out}, length and layout in {side}")


def _decode(args: argparse.Namespace) -> None:
    """Codes (+ sidecar when there is one) -> the audio they came from: prompt frames dropped, stereo split over
    the mono codec, trimmed to the recorded length. Bare codes decode to whole frames, and a note says so."""
    out = output_file(args.out, "--out", ".wav")
    side = sidecar_path(args.input)
    refuse_overwrites({"the input": args.input, "its sidecar": side}, [("--out", out, "--out")])
    codes, layout, notes = read_codes(args.input)
    model = _codec_model(args)
    cfg = model.codec.cfg
    if layout is not None:
        _same_codec(args, layout, cfg, side)
        if layout.frames == layout.prompt_frames:
            raise RequestError(f"{args.input} holds only its prompt's {layout.prompt_frames} frames: the take has no "
                               "frames of its own (it was cancelled, or stopped before anything was generated); "
                               "there is nothing to decode")
    note = check_fit(model, codes, layout, args.input, args.model)
    for line in notes + ([note] if note else []):
        say(line)
    channels = model.channels if layout is None else layout.channels
    prompt_frames, length = (0, None) if layout is None else (layout.prompt_frames, layout.length)
    if layout is None:
        say(f"no {side.name} beside {args.input}: its length is unknown, so the audio is padded to whole frames "
            f"({codes.shape[1]} x {cfg.hop_length} samples)")
    with AudioWriter(out, model.sample_rate, channels) as writer:
        decode_codes(model, codes, channels, prompt_frames, length, write=writer.write)
    what = f" after {prompt_frames} prompt frames" if prompt_frames else ""
    say(f"codes {list(codes.shape)} -> {writer.frames / model.sample_rate:.2f} s ({writer.frames} samples, "
        f"{channels} ch){what} in {out}")


def _same_codec(args: argparse.Namespace, layout: CodesLayout, cfg, side: Path) -> None:
    """The sidecar's codec rate and frame size against the model's: another model's codes name it; a sidecar that
    names this model but another codec lies, and says what."""
    pairs = [(f"{layout.sample_rate} Hz", f"{cfg.sample_rate} Hz"),
             (f"{layout.hop_length}-sample frames", f"{cfg.hop_length}-sample frames")]
    differs = [(theirs, ours) for theirs, ours in pairs if theirs != ours]
    if not differs:
        return
    theirs, ours = " and ".join(t for t, _ in differs), " and ".join(o for _, o in differs)
    if layout.model != args.model:
        raise RequestError(f"{args.input} was made by {layout.model} ({theirs}); {args.model} has {ours}: decode "
                           f"with --model {layout.model}")
    raise RequestError(f"{side} says {layout.model} made {args.input} with {theirs}, but {args.model} has {ours}: "
                       "the sidecar does not describe these codes; fix it, or rename it to decode them as bare frames")
