"""A daemon take, rendered again bit for bit: `segue generate --from-take NNNN-cmd.json`.

The same seed alone does not give the same take. The re-prompt's prefill past the trained context is a GEMM whose
result depends on the torch thread count (1 thread against 2 differs from frame 1625 of a 34 s take), a retry keeps
its original's prompt state and first column (drawn with the original's seed), `set` changes the sampling while a
take plays, and a finite take's last frames depend on where the LM was told to stop. So the engine records in the
take's sidecar everything that decides its tokens (`recipe_meta`, plus what the take's own files hold: the prompt's
frames at the head of the codes file, the melody's audio), and `read_recipe` / `render` replay it:

- model, dtype, device, torch threads; seed, the seed of the prefill (`prefill_seed`: the original's, for a retry),
  sampling, and each `set` change with the LM column from which it applied (`changes[].column`);
- text; prompt codes (the codes file's first `prompt_frames` frames, never re-encoded); melody (`melody_wav`);
- the frames the LM was started for (`lm_frames`, None when endless) and the frames the take kept (`frames`);
- `stepped_with`: takes it was stepped together with in one batched LM call. A batched GEMM is not bit-identical
  to a single one, so such a take is reproduced only within float tolerance (its tokens may differ).

On the same machine with the same threads, the re-rendered codes equal the take's codes file exactly.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from segue.daemon.codes_file import KEY as CODES_KEY
from segue.daemon.codes_file import CodesLayout, ContextDecoder, load_codes
from segue.daemon.vocabulary import MAX_SECONDS, CommandError, check_number, check_value
from segue.models.audio import read_audio, to_model_audio
from segue.models.errors import RequestError
from segue.models.generation import Take
from segue.models.lm.config import SamplingParams
from segue.models.lm.stream import step_streams
from segue.models.musicgen import MusicGen

# Sidecar keys a re-render needs (beside `codes_file`, `prompt_frames`, `frames` and `changes`).
RECIPE_KEYS = ("model", "dtype", "device", "threads", "seed", "prefill_seed", "sampling", "chunk_frames", "prompt",
               "lm_frames", "prompt_frames", "frames", "codes", CODES_KEY)
_PARAMS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg": "cfg_coef"}  # set key -> field
_FIELDS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "cfg_coef": "cfg", "seed": "seed"}


def recipe_meta(model: MusicGen, take: Take) -> dict:
    """What the engine adds to a new take's sidecar so that `segue generate --from-take` can render it again."""
    lm = model.require_lm()
    total = take.stream.total
    return dict(dtype=lm.precision, device=str(model.device),
                threads=torch.get_num_threads(), chunk_frames=take.chunk_frames,
                lm_frames=None if total is None else total - take.n_prompt, stepped_with=[],
                **{CODES_KEY: CodesLayout.of(model, model.info.ref, (lm.cfg.n_q, take.n_prompt), take.n_prompt,
                                             0).to_dict()})


def change_record(stream, n_prompt: int, knobs: dict) -> dict:
    """A `set` that reached a playing take: its values, the LM column from which they apply (exact: the next
    column the stream draws) and the take's new frame that column starts (its first codebook's token)."""
    column = stream.column + 1
    return dict(knobs, column=column, frame=max(0, column - 1 - n_prompt))


@dataclass(frozen=True)
class Change:
    """Sampling values (SamplingParams field names) that apply from LM column `column` on."""

    column: int
    values: dict


@dataclass(frozen=True, eq=False)
class Recipe:
    """Everything that decides a take's tokens, read from its files (see the module docstring)."""

    sidecar: Path
    take_id: int | None
    model: str
    dtype: str
    device: str
    threads: int
    seed: int
    prefill_seed: int
    sampling: SamplingParams
    chunk_frames: int
    text: str | None
    codes: np.ndarray  # the take's codes file [K, P + frames]: the prompt's frames, then the new ones
    melody: tuple[np.ndarray, int] | None  # samples [C, n], rate
    changes: tuple[Change, ...]
    lm_frames: int | None  # frames the LM was started for (None: endless)
    frames: int  # new frames the take kept
    stepped_with: tuple[int, ...]
    layout: CodesLayout
    files: dict  # what each of the take's files is -> its path (for `segue generate` not to write over them)

    @property
    def prompt(self) -> np.ndarray | None:
        """The prompt's codes [K, P], None without a prompt."""
        n = self.layout.prompt_frames
        return self.codes[:, :n].astype(np.int64) if n else None

    @property
    def length(self) -> int:
        """Samples of the new audio at the model rate: the take's length (frames x hop if it was not recorded)."""
        return self.frames * self.layout.hop_length if self.layout.length is None else self.layout.length


def _bad(path: Path, what: str) -> RequestError:
    return RequestError(f"{path}: {what}; give the .json sidecar of a take the daemon wrote")


def _whole(path: Path, meta: dict, key: str, lo: int = 0, none: bool = False) -> int | None:
    v = meta[key]
    if v is None and none:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(path, f"'{key}' must be a whole number >= {lo}, got {v!r}")
    return v


def _bounded(path: Path, key: str, value, label: str | None = None):
    """A value from the sidecar against the vocabulary's bounds for `key` (the CLI flags' and the wire's)."""
    try:
        return check_value(key, value) if key in ("prompt", "model") else \
            check_number(key, value, f"'{label or key}'")
    except CommandError as exc:
        raise _bad(path, exc.message) from exc


def _file_beside(path: Path, key: str, value) -> Path:
    """A file the sidecar names: a bare file name, in the sidecar's folder (never a path elsewhere)."""
    if (not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value
            or "\0" in value):
        raise _bad(path, f"'{key}' must be the bare name of a file beside it, got {value!r}")
    return path.with_name(value)


def _sampling(path: Path, d) -> SamplingParams:
    if not isinstance(d, dict):
        raise _bad(path, f"'sampling' must be an object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(_FIELDS))
    missing = [k for k in _FIELDS if k != "seed" and k not in d]
    if unknown or missing:
        raise _bad(path, "'sampling' " + (f"has unknown keys {', '.join(map(str, unknown))}" if unknown else
                                           f"lacks {', '.join(missing)}"))
    values = {f: (None if d.get(f) is None and f == "seed" else _bounded(path, key, d[f], f"sampling.{f}"))
              for f, key in _FIELDS.items() if f in d}
    return SamplingParams(**values)


def _change(path: Path, c) -> Change:
    """One `set` that reached the take: sampling values and the LM column they applied from."""
    if not isinstance(c, dict) or "column" not in c:
        raise _bad(path, f"a change without the LM column it applied from ({c!r}); an older segue recorded only an "
                         "approximate frame, so the take cannot be rendered exactly")
    unknown = sorted(set(c) - set(_PARAMS) - {"column", "frame"})
    if unknown:
        raise _bad(path, f"a change has unknown keys {', '.join(map(str, unknown))} ({c!r})")
    column = c["column"]
    if isinstance(column, bool) or not isinstance(column, int) or column < 0:
        raise _bad(path, f"a change's 'column' must be a whole number >= 0, got {column!r}")
    frame = c.get("frame", 0)
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise _bad(path, f"a change's 'frame' must be a whole number >= 0, got {frame!r}")
    return Change(column, {_PARAMS[k]: _bounded(path, k, v, f"changes.{k}") for k, v in c.items() if k in _PARAMS})


def read_recipe(path: str | Path) -> Recipe:
    """A take's sidecar (`NNNN-cmd.json`) and the files beside it -> its Recipe. Every value is checked as the
    CLI's flags are (the vocabulary's bounds), the files it names must be bare names beside it, and its prompt
    frames must agree with the codes file and its description. Raises RequestError for a missing or unreadable
    sidecar, one that lacks what a re-render needs (an older segue did not record it) or holds a value out of
    range, and a codes or melody file that is missing or does not match."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "is not a regular file" if p.exists() else "does not exist"
        raise RequestError(f"{p} {what}; give the .json sidecar of a take (e.g. takes/0007-continue.json)")
    try:
        meta = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _bad(p, f"not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _bad(p, "not a JSON object")
    missing = [k for k in RECIPE_KEYS if k not in meta]
    if missing:
        raise _bad(p, f"lacks {', '.join(missing)} (written by an older segue, or not a take's sidecar), so it "
                      "cannot be rendered again")
    layout = CodesLayout.from_dict(meta[CODES_KEY], str(p))
    sampling = _sampling(p, meta["sampling"])
    for key in ("dtype", "device"):
        if not isinstance(meta[key], str):
            raise _bad(p, f"'{key}' must be a string")
    model, text = _bounded(p, "model", meta["model"]), _bounded(p, "prompt", meta["prompt"])
    threads = _bounded(p, "threads", meta["threads"])
    seed, prefill_seed = _bounded(p, "seed", meta["seed"]), _bounded(p, "seed", meta["prefill_seed"], "prefill_seed")
    chunk = _bounded(p, "chunk_frames", meta["chunk_frames"])
    lm_frames = _whole(p, meta, "lm_frames", 1, none=True)
    most = math.ceil(MAX_SECONDS * layout.sample_rate / layout.hop_length) + 1  # the longest take there is
    if lm_frames is not None and lm_frames > most:
        raise _bad(p, f"'lm_frames' must be at most {most} (a {MAX_SECONDS:g} s take), got {lm_frames}")
    prompt_frames, frames = _whole(p, meta, "prompt_frames"), _whole(p, meta, "frames")
    if (prompt_frames, prompt_frames + frames) != (layout.prompt_frames, layout.frames):
        raise _bad(p, f"'prompt_frames' {prompt_frames} and 'frames' {frames} contradict '{CODES_KEY}' "
                      f"({layout.prompt_frames} prompt frames of {layout.frames})")
    if frames < 1:
        raise RequestError(f"{p}: the take has no frames (it was cancelled, or stopped before anything was "
                           "generated); there is nothing to render")
    if lm_frames is not None and frames > lm_frames:
        raise _bad(p, f"{frames} frames kept but the LM was started for {lm_frames}")
    if not isinstance(meta.get("changes") or [], list):
        raise _bad(p, "'changes' must be a list")
    changes = [_change(p, c) for c in meta.get("changes") or []]
    if not isinstance(meta.get("stepped_with") or [], list):
        raise _bad(p, "'stepped_with' must be a list of take numbers")
    together = tuple(_bounded(p, "take", t, "stepped_with") for t in meta.get("stepped_with") or ())
    files = {"--from-take": p}
    for key in ("wav", "prompt_wav"):  # not read, but the take's own: never written over
        if isinstance(meta.get(key), str):
            files[f"the take's {key.replace('_', ' ')}"] = _file_beside(p, key, meta[key])
    codes_path = files["the take's codes"] = _file_beside(p, "codes", meta["codes"])
    if not codes_path.is_file():
        raise RequestError(f"{codes_path} (the take's codes, named in {p.name}) does not exist; the prompt's frames "
                           "are read from it, so it is needed")
    codes = load_codes(codes_path)
    if codes.shape != (layout.codebooks, layout.frames):
        raise RequestError(f"{codes_path} holds {list(codes.shape)}, not the {layout.codebooks} x {layout.frames} "
                           f"frames {p.name} records; the files do not belong together")
    melody = None
    if meta.get("melody_wav"):
        tune = files["the take's melody"] = _file_beside(p, "melody_wav", meta["melody_wav"])
        if not tune.is_file():
            raise RequestError(f"{tune} (the take's melody, named in {p.name}) does not exist; it is needed to "
                               "render the take again")
        melody = read_audio(tune)
    stem = p.name.split("-", 1)[0]
    return Recipe(p, int(stem) if stem.isdigit() else None, model, meta["dtype"], meta["device"], threads,
                  seed, prefill_seed, sampling, chunk, text, codes, melody,
                  tuple(sorted(changes, key=lambda c: c.column)), lm_frames, frames, together, layout, files)


@torch.no_grad()
def render(model: MusicGen, recipe: Recipe, frames: int, lm_frames: int | None,
           write: Callable[[np.ndarray], None], progress: Callable[[int], None] = lambda n: None,
           length: int | None = None) -> np.ndarray:
    """Generate the take of `recipe` again on `model`: `frames` new frames of an LM stream started for `lm_frames`
    (None: endless), stepped alone with `step_streams` exactly as the engine steps a take, its `changes` applied at
    their columns. The new audio, decoded in the prompt's context, goes to `write` as [C, n] float32 chunks at the
    model rate: `length` samples in all (default frames x hop; the take's own is `recipe.length`). Returns the
    codes [K, P + frames]: the prompt's, then the new ones. Raises RequestError when the model cannot take the
    recipe's prompt, text or melody."""
    prompt = None if recipe.prompt is None else torch.from_numpy(recipe.prompt)[None].to(model.device)
    melody = None
    if recipe.melody is not None:
        pcm, sr = recipe.melody
        melody = model.melody_from_audio(to_model_audio(pcm, sr, model.sample_rate, 1).to(model.device))
    # The prompt state and first column come from `prefill_seed` (a retry's are its original's), then the take's own
    # seed; the stream holds the sampling as the daemon's did, so a later change reseeds (or not) as it did there.
    take = Take(model, recipe.text, prompt, lm_frames, replace(recipe.sampling, seed=recipe.prefill_seed),
                recipe.chunk_frames, melody=melody)
    s = take.stream
    s.set_sampling(recipe.sampling)
    if recipe.seed != s.seed:
        s.reseed(recipe.seed)
    n_prompt = take.n_prompt
    target = n_prompt + frames
    decoder = ContextDecoder(model, model.channels, n_prompt, frames * model.hop_length if length is None else length)
    changes = list(recipe.changes)
    new = []
    read = 0
    while read < target:
        while changes and changes[0].column <= s.column + 1:  # from the next column on, as `set` did
            s.set_sampling(replace(s.sampling, **changes.pop(0).values))
        if not s.done:
            step_streams([s])
        ready = min(s.frames_ready, target)
        if ready - read >= recipe.chunk_frames or ready == target or s.done:
            block = s.read_frames(read, ready)[0]  # [K, n], prompt frames first
            new.append(block[:, max(0, n_prompt - read) :].cpu().numpy())
            write(decoder.push(block, last=ready == target, check=False))
            progress(max(0, ready - max(read, n_prompt)))
            read = ready
        if s.done and read >= s.frames_ready and read < target:
            raise RequestError(f"the LM stopped at frame {read - n_prompt} of {frames}")
    parts = ([recipe.prompt] if recipe.prompt is not None else []) + new
    return np.concatenate(parts, axis=1).astype(np.int64)
