"""The one entry point from a model reference to modules: `load_model` (codec + LM + T5) and `load_codec`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch

from segue.models.errors import ModelFileError, SegueError
from segue.models.lm.quant import auto_cache_path, int8_is_faster, int8_supported
from segue.models.loading import audiocraft_format as ac
from segue.models.loading import transformers_format as tf
from segue.models.loading.demo import DEMO_CODEC, DEMO_SEED, build_demo, random_codec
from segue.models.loading.hub import fetch as hub_fetch
from segue.models.musicgen import ModelInfo, MusicGen

log = logging.getLogger("segue")

DEMOS = {"demo": "musicgen", "demo-melody": "musicgen-melody"}  # built from a seed, no files

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


INT8 = "int8"  # the LM's step projections in int8 on a CPU (models/lm/quant.py); everything else float32
AUTO = "auto"  # on a CPU: float32, or int8 where it measures faster at load (see `load_model`)


def parse_dtype(name: str) -> torch.dtype | str:
    """A float dtype, or INT8."""
    if name.lower() == INT8:
        return INT8
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SegueError(f"unknown dtype {name!r}; use {DTYPE_NAMES}") from None


DTYPE_NAMES = "auto, float32, bfloat16, float16 or int8 (CPU)"  # what --dtype takes, for messages


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | str:
    """'auto' is bfloat16 on CUDA; on a CPU, AUTO (float32 or int8, measured at load; float32 where this PyTorch
    has no int8 kernels); else `parse_dtype`. INT8 runs on a CPU only (fbgemm)."""
    if name == AUTO:
        if device.type == "cuda":
            return torch.bfloat16
        return AUTO if int8_supported() else torch.float32
    dtype = parse_dtype(name)
    if dtype == INT8:
        _check_int8(device)
    return dtype


def _check_int8(device: torch.device) -> None:
    """INT8 runs here, or SegueError says why not."""
    if device.type != "cpu":
        raise SegueError(f"int8 runs on the CPU (fbgemm); on {device} use bfloat16")
    if not int8_supported():
        raise SegueError("int8 needs PyTorch's x86 (fbgemm) quantized kernels, which this build lacks; use float32")


def parse_device(name: str | None) -> torch.device:
    """'auto' (or None) picks CUDA when present; 'cuda' without a GPU is an error, not a silent fallback."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SegueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SegueError(f"--device {name} but no CUDA device is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SegueError(f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def _layout(folder: Path) -> tuple[str, dict | None]:
    cfg = tf.read_config(folder)
    if cfg is not None and cfg.get("model_type") in ("musicgen", "encodec", "musicgen_melody"):
        return "transformers", cfg
    if (folder / "state_dict.bin").exists() or (folder / "compression_state_dict.bin").exists():
        return "audiocraft", None
    raise ModelFileError(f"{folder} holds neither a transformers MusicGen/EnCodec (config.json) nor an audiocraft "
                         "export (state_dict.bin); point --model at a model folder")


def load_model(ref: str, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32,
               fetch: Callable[[str], Path] = hub_fetch) -> MusicGen:
    """Codec + LM + text encoder for `ref`: 'demo' or 'demo-melody', a local folder, or a hub id (downloaded
    into the HF cache).

    The LM runs in `dtype` (INT8: float32 weights, its step projections quantized at load; AUTO on a CPU: int8
    where its step measures at least 1.2x faster than float32's here, else float32, measured once per machine and
    model shape and remembered in `auto_cache_path()`, so the same seed keeps giving the same take); the codec and
    T5 stay in float32. `lm.precision` says which.
    """
    device = torch.device(device)
    auto = dtype == AUTO
    if auto:
        if device.type != "cpu":
            raise SegueError(f"dtype auto is resolved for {device} by resolve_dtype, not here")
        dtype = torch.float32
    int8 = dtype == INT8
    if int8:
        _check_int8(device)
        dtype = torch.float32
    if ref in DEMOS:
        codec, lm, text = build_demo(DEMO_SEED, melody=ref == "demo-melody")
        info = ModelInfo(ref, None, "demo", DEMOS[ref])
    else:
        folder = fetch(ref)
        layout, cfg = _layout(folder)
        if layout == "transformers":
            if tf.model_kind(cfg) == "encodec":
                raise ModelFileError(f"{ref} is an EnCodec codec, not a language model; use `segue codec` with it, "
                                     "or a MusicGen model such as facebook/musicgen-small to generate")
            codec, lm, text = tf.load_musicgen(folder, cfg, dtype)
            kind = "musicgen"
        else:
            codec, lm, text, kind = ac.load_audiocraft(folder, dtype, fetch)
        if lm.cfg.takes_melody:
            kind = "musicgen-melody"
        info = ModelInfo(ref, str(folder), layout, kind)
    lm = lm.to(device=device, dtype=dtype)
    if int8:
        lm.quantize_int8()
    elif auto:
        int8_is_faster(lm, cache=auto_cache_path())
    return MusicGen(codec.to(device), lm, text.to(device), info)


def load_codec(ref: str, device: torch.device | str = "cpu", fetch: Callable[[str], Path] = hub_fetch) -> MusicGen:
    """Only the codec of `ref` (an EnCodec repo, the codec inside a MusicGen repo, or the demo's). For a MusicGen
    repo the result's `channels` are the LM's: 2 for a stereo MusicGen, whose codes interleave left and right over
    its mono codec."""
    device = torch.device(device)
    if ref in DEMOS:
        return MusicGen(random_codec(DEMO_CODEC, DEMO_SEED).to(device), None, None,
                        ModelInfo(ref, None, "demo", "encodec"))
    folder = fetch(ref)
    layout, cfg = _layout(folder)
    codec = tf.load_codec(folder, cfg) if layout == "transformers" else ac.load_codec(folder, fetch)
    channels = _lm_channels(folder, layout, cfg) * codec.cfg.channels
    return MusicGen(codec.to(device), None, None, ModelInfo(ref, str(folder), layout, "encodec"), channels=channels)


def _lm_channels(folder: Path, layout: str, cfg: dict | None) -> int:
    """Channels of the LM a model folder holds beside its codec (1 without an LM): the transformers config's
    `decoder.audio_channels`, or the audiocraft LM's `interleave_stereo_codebooks` (its xp.cfg, read with the
    weights memory-mapped, not loaded)."""
    if layout == "transformers":
        if cfg is None or tf.model_kind(cfg) == "encodec":
            return 1
        try:
            return int((cfg.get("decoder") or {}).get("audio_channels", 1))
        except (TypeError, ValueError) as exc:
            raise ModelFileError(f"{folder}/config.json: decoder.audio_channels is not a number ({exc})") from exc
    path = folder / "state_dict.bin"
    if not path.exists():
        return 1  # a codec export alone
    try:
        pkg = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # an old (non-zip) file cannot be mapped: read it whole
        log.debug("%s cannot be memory-mapped (%s); reading it", path, exc)
        pkg = ac.read_torch_package(path)
    text = pkg.get("xp.cfg") if isinstance(pkg, dict) else None
    if not isinstance(text, str):
        return 1
    xp = ac.parse_xp_cfg(text, str(path))
    stereo = xp.get("interleave_stereo_codebooks") or {}
    return 2 if isinstance(stereo, dict) and stereo.get("use", False) else 1
