"""Codes files: the integer array [codebooks, frames] segue writes (`.npy`), and beside it what it takes to decode
it back to the audio it came from, channels and length included (as the reference EnCodec's own file format keeps
the length in a JSON header).

One rule names the sidecar: the codes file's name without `.npy`, and without a `.codes` before it, plus `.json`:
`loop.npy` -> `loop.json`, `next.codes.npy` -> `next.json`, and so a take's `0007-continue.codes.npy` is described
by the take's own sidecar `0007-continue.json`. Either way the description is the JSON object's `codes_file` entry
(`CodesLayout`): a standalone sidecar holds only that entry, a take's sidecar holds it beside everything else.

Written by `segue generate --codes-out`, `segue codec encode` and the daemon's takes; read by `segue codec decode`
and `segue generate --from-take`.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from segue.models.errors import RequestError
from segue.models.musicgen import MusicGen

KEY = "codes_file"  # the entry of a sidecar that describes the codes


@dataclass(frozen=True)
class CodesLayout:
    """How to decode a codes array [codebooks, frames] back to its audio.

    model: the model (or codec) reference that made the codes.
    sample_rate: the codec's rate (Hz); hop_length: samples per frame at that rate.
    channels: audio channels. 2 over a mono codec = a stereo MusicGen's codebooks, left and right interleaved
        ([1L, 1R, 2L, 2R, ...]); they are decoded as two passes of the mono codec.
    codebooks, frames: the array's shape; `frames` counts the prompt frames too.
    prompt_frames: frames of context before the new audio (a continuation's prompt): they are decoded, so that the
        new audio is decoded in context exactly as it was generated, then their samples are dropped.
    length: samples at `sample_rate` of the audio the codes stand for, after the prompt; None when unknown (the
        decoded audio is then whole frames, padded at the end). It ends in the last frame, or in the one before it
        for a daemon take (`length_range`): a take's codes hold one frame of margin past its length.
    """

    model: str
    sample_rate: int
    hop_length: int
    channels: int
    codebooks: int
    frames: int
    prompt_frames: int = 0
    length: int | None = None

    @classmethod
    def of(cls, model: MusicGen, ref: str, codes_shape: tuple[int, int], prompt_frames: int = 0,
           length: int | None = None) -> "CodesLayout":
        """The layout of codes [K, T] made by `model` (loaded from `ref`); length defaults to the new frames'."""
        k, t = codes_shape
        if length is None:
            length = (t - prompt_frames) * model.hop_length
        return cls(ref, model.sample_rate, model.hop_length, model.channels, k, t, prompt_frames, length)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: object, where: str) -> "CodesLayout":
        """A sidecar's `codes_file` entry, checked. Raises RequestError naming `where` and the faulty key."""
        if not isinstance(d, dict):
            raise RequestError(f"{where}: '{KEY}' must be an object, got {type(d).__name__}")
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in ("prompt_frames", "length")]
        if missing:
            raise RequestError(f"{where}: '{KEY}' lacks {', '.join(missing)}; write it again with segue, or delete "
                               "it to decode the codes as bare frames")
        if not isinstance(d["model"], str):
            raise RequestError(f"{where}: '{KEY}.model' must be a string")
        values = {"model": d["model"]}
        for f in fields(cls):
            if f.name == "model":
                continue
            v = d.get(f.name, 0 if f.name == "prompt_frames" else None)
            if v is None and f.name == "length":
                values[f.name] = None
                continue
            lo = 1 if f.name in ("sample_rate", "hop_length", "channels", "codebooks") else 0
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise RequestError(f"{where}: '{KEY}.{f.name}' must be a whole number >= {lo} (got {v!r}); fix it, or "
                                   "rename the .json to decode the codes as bare frames")
            values[f.name] = v
        layout = cls(**values)
        if layout.prompt_frames > layout.frames:
            raise RequestError(f"{where}: '{KEY}' has {layout.prompt_frames} prompt frames of {layout.frames}")
        if layout.codebooks % layout.channels:
            raise RequestError(f"{where}: {layout.codebooks} codebooks cannot be split over {layout.channels} "
                               "channels")
        if layout.length is not None and not layout.length_fits(layout.length):
            lo, hi = layout.length_range()
            new = layout.frames - layout.prompt_frames
            raise RequestError(f"{where}: '{KEY}.length' is {layout.length} samples, but {new} new frame(s) of "
                               f"{layout.hop_length} samples hold " + (f"{lo} to {hi}" if new else "none")
                               + "; fix it, or rename the .json to decode the codes as bare frames")
        return layout

    def length_range(self) -> tuple[int, int]:
        """The lengths (samples after the prompt) the new frames can stand for: ending in the last frame, or in the
        one before it, as a daemon take's do (the engine generates one frame past the length, of margin for its
        resampler; its length is rounded from the device rate). (0, 0) when there are no new frames."""
        new = self.frames - self.prompt_frames
        if new == 0:
            return 0, 0
        return max(1, (new - 2) * self.hop_length), new * self.hop_length

    def length_fits(self, length: int) -> bool:
        lo, hi = self.length_range()
        return lo <= length <= hi


def sidecar_path(codes_path: str | Path) -> Path:
    """The one rule: `NAME.npy` and `NAME.codes.npy` -> `NAME.json` (see the module's docstring)."""
    p = Path(codes_path)
    name = p.name
    for suffix in (".npy", ".codes"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return p.with_name(name + ".json")


def write_codes(path: str | Path, codes: np.ndarray, layout: CodesLayout) -> Path:
    """codes [K, T] (integers) -> `path` exactly as named (.npy format) and its sidecar (`sidecar_path`), which is
    returned. Raises ValueError when the layout does not describe the array."""
    if tuple(codes.shape) != (layout.codebooks, layout.frames):
        raise ValueError(f"the layout describes [{layout.codebooks}, {layout.frames}], the codes are "
                         f"{list(codes.shape)}")
    with open(path, "wb") as f:  # np.save(name) would add .npy to a name without it
        np.save(f, np.ascontiguousarray(codes, dtype=np.int64))
    side = sidecar_path(path)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({KEY: layout.to_dict()}, indent=1) + "\n")
    os.replace(tmp, side)
    return side


def load_codes(path: str | Path) -> np.ndarray:
    """An .npy of integer codes -> [K, T] (a leading batch of 1 is dropped). Raises RequestError with what to do."""
    p = Path(path)
    if not p.exists():
        raise RequestError(f"{p} does not exist")
    if not p.is_file():  # a FIFO or a device would block the read for good
        raise RequestError(f"{p} is not a regular file; give a .npy file of codes")
    try:
        codes = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        # numpy reads a file without the .npy magic as a pickle, and says so ("contains pickled (object) data ...
        # load it unsafely"): that advice is wrong here, so the file is only called what it is not.
        why = "" if "pickle" in str(exc) else f" ({exc})"
        raise RequestError(f"{p} is not a .npy array{why}; write it with `segue codec encode` or numpy.save") \
            from exc
    if not isinstance(codes, np.ndarray) or not np.issubdtype(codes.dtype, np.integer):
        raise RequestError(f"{p} must hold integer codes, got {getattr(codes, 'dtype', type(codes))}")
    if codes.size and codes.dtype.kind == "u" and int(codes.max()) > np.iinfo(np.int64).max:
        raise RequestError(f"{p} holds codes up to {int(codes.max())}, far outside any codebook; were they made for "
                           "another codec?")  # as int64 (what the codec takes) they would wrap negative
    if codes.ndim == 3 and codes.shape[0] == 1:
        codes = codes[0]
    if codes.ndim != 2:
        raise RequestError(f"{p} must hold codes [codebooks, frames], got shape {list(codes.shape)}")
    if codes.shape[1] == 0:
        raise RequestError(f"{p} holds no frames ({list(codes.shape)}; a take's codes are empty when it was "
                           "cancelled, or stopped before anything was generated): there is nothing to decode")
    return codes


def read_layout(codes_path: str | Path) -> CodesLayout | None:
    """The layout the sidecar of `codes_path` records, or None when there is no sidecar (bare codes). Raises
    RequestError for a sidecar that is not JSON, not a codes description, or whose `codes_file` entry is broken."""
    side = sidecar_path(codes_path)
    if not side.is_file():
        return None
    name = Path(codes_path).name
    try:
        data = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RequestError(f"{side} (the description of {name}) is not readable JSON ({exc}); fix it, or rename "
                           "it to decode the codes as bare frames") from exc
    if not isinstance(data, dict) or KEY not in data:
        what = f"a JSON {type(data).__name__}, not an object" if not isinstance(data, dict) else \
            f"it has no '{KEY}' entry"
        raise RequestError(f"{side} is beside {name} but does not describe it ({what}); rename it to decode the "
                           f"codes as bare frames, or write them again with segue")
    return CodesLayout.from_dict(data[KEY], str(side))


def read_codes(path: str | Path) -> tuple[np.ndarray, CodesLayout | None, list[str]]:
    """(codes [K, T], their layout or None, notes for the user). The layout is checked against the array: a file
    with fewer frames than recorded (a take still being written, or cut by a crash) keeps its prompt but loses
    its known length, and a note says so."""
    codes = load_codes(path)
    layout = read_layout(path)
    notes: list[str] = []
    if layout is None:
        return codes, None, notes
    side = sidecar_path(path).name
    k, t = codes.shape
    if k != layout.codebooks:
        raise RequestError(f"{path} has {k} codebooks but {side} says {layout.codebooks}; they do not belong "
                           "together (delete the .json to decode the codes as bare frames)")
    if t != layout.frames:
        if t < layout.prompt_frames:
            raise RequestError(f"{path} has {t} frames, fewer than the {layout.prompt_frames} prompt frames {side} "
                               "records")
        notes.append(f"{path} has {t} frames where {side} records {layout.frames} (a take still being written?); "
                     "decoding what is there, padded to whole frames")
        layout = replace(layout, frames=t, length=None)
    return codes, layout, notes


def check_fit(model: MusicGen, codes: np.ndarray, layout: CodesLayout | None, where: str, ref: str) -> str | None:
    """Can `model` (loaded from `ref`) decode `codes` [K, T]? With a layout (from a sidecar) the rows must be its
    channels x the codec's codebooks; bare codes may have fewer codebooks (a lower bitrate: the returned note says
    so). Every value must be an entry of the codec's codebooks (the codec's own check). Raises RequestError."""
    cfg = model.codec.cfg
    channels = model.channels if layout is None else layout.channels
    if channels % cfg.channels:
        raise RequestError(f"{where}: {channels}-channel codes cannot be decoded by {ref}, a {cfg.channels}-channel "
                           "codec")
    passes, k = channels // cfg.channels, codes.shape[0]
    note = None
    if layout is not None:
        if k != passes * cfg.n_q:
            other = f"; decode with --model {layout.model}" if layout.model != ref else \
                "; the sidecar does not describe these codes: fix it, or rename it to decode them as bare frames"
            raise RequestError(f"{where}: {k} codebooks over {channels} channel(s), but {ref} decodes "
                               f"{cfg.n_q} per channel ({passes * cfg.n_q} for {channels}){other}")
    elif k % passes or not 1 <= k // passes <= cfg.n_q:
        hint = ("; a stereo MusicGen's codes have twice its codec's codebooks: keep their .json beside them, or "
                "decode with the stereo model's folder" if k == 2 * cfg.n_q else "")
        raise RequestError(f"{where}: {ref} has {cfg.n_q} codebooks per channel; got codes for {k} over "
                           f"{channels} channel(s){hint}")
    elif k // passes < cfg.n_q:
        note = (f"{where} has {k // passes} of {ref}'s {cfg.n_q} codebooks per channel: it decodes at a lower "
                "bitrate")
    tensor = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
    for g in range(passes):
        try:
            model.codec.check_codes(tensor[g::passes][None])
        except ValueError as exc:
            raise RequestError(f"{where}: {exc}") from exc
    return note


class ContextDecoder:
    """LM codes in, chunk by chunk; the new audio out: codes [K, t] -> audio [channels, n] float32 (numpy).

    A stereo MusicGen's interleaved codebooks go through the mono codec twice (left, right). The first
    `prompt_frames` frames are decoded for context and their samples dropped; with `length`, the output stops after
    that many samples (the rest of the last frame is padding). Equal to a one-pass decode of all the codes (up to
    float rounding, ~1e-7), in bounded memory.
    """

    def __init__(self, model: MusicGen, channels: int, prompt_frames: int = 0, length: int | None = None):
        codec_channels = model.codec.cfg.channels
        if channels % codec_channels:
            raise RequestError(f"{channels}-channel codes cannot be decoded by a {codec_channels}-channel codec")
        self.passes = channels // codec_channels
        self.model = model
        self.decoders = [model.codec.stream_decoder(1) for _ in range(self.passes)]
        self.skip = prompt_frames * model.hop_length
        self.left = length

    def push(self, codes: torch.Tensor | np.ndarray, last: bool = False, check: bool = True) -> np.ndarray:
        """codes [K, t] (K = passes x codebooks, interleaved); `last` flushes. Raises RequestError for codes the
        codec cannot take (too many codebooks, values outside its range)."""
        if isinstance(codes, np.ndarray):
            codes = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))
        codes = codes.to(self.model.device)
        if codes.shape[0] % self.passes:
            raise RequestError(f"{codes.shape[0]} codebooks cannot be split over {self.passes} channels")
        parts = []
        for g, dec in enumerate(self.decoders):
            try:
                y = dec.push(codes[g :: self.passes][None], check=check)
            except ValueError as exc:
                raise RequestError(str(exc)) from exc
            if last:
                y = torch.cat([y, dec.flush()], -1)
            parts.append(y)
        pcm = torch.cat(parts, 1)[0].float().cpu().numpy()  # [C, n]
        drop = min(self.skip, pcm.shape[-1])
        self.skip -= drop
        pcm = pcm[:, drop:]
        if self.left is not None:
            pcm = pcm[:, : self.left]
            self.left -= pcm.shape[-1]
        return pcm


def decode_codes(model: MusicGen, codes: np.ndarray, channels: int, prompt_frames: int = 0,
                 length: int | None = None, write: Callable[[np.ndarray], None] | None = None,
                 chunk_frames: int = 250) -> np.ndarray | None:
    """Codes [K, T] -> the new audio [channels, n] (see `ContextDecoder`), `chunk_frames` at a time. With `write`,
    each chunk goes to it and nothing is returned (a long take never sits in memory whole)."""
    dec = ContextDecoder(model, channels, prompt_frames, length)
    out = []
    t = codes.shape[1]
    for lo in range(0, t, chunk_frames):
        pcm = dec.push(codes[:, lo : lo + chunk_frames], last=lo + chunk_frames >= t)
        if write is not None:
            write(pcm)
        else:
            out.append(pcm)
    if write is None:
        return np.concatenate(out, axis=1) if out else np.zeros((channels, 0), np.float32)
    return None
