"""The one entry point from a model reference to modules: `load_model` (codec + LM + T5) and `load_codec`."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from segue.models.errors import ModelFileError, SegueError
from segue.models.loading import audiocraft_format as ac
from segue.models.loading import transformers_format as tf
from segue.models.loading.demo import DEMO_CODEC, DEMO_SEED, build_demo, random_codec
from segue.models.loading.hub import fetch as hub_fetch
from segue.models.musicgen import ModelInfo, MusicGen

DEMOS = {"demo": "musicgen", "demo-melody": "musicgen-melody"}  # built from a seed, no files

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name.lower()]
    except KeyError:
        raise SegueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16") from None


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is bfloat16 on CUDA and float32 on CPU (where bfloat16 matmuls are slow); else `parse_dtype`."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return parse_dtype(name)


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


def load_model(ref: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               fetch: Callable[[str], Path] = hub_fetch) -> MusicGen:
    """Codec + LM + text encoder for `ref`: 'demo' or 'demo-melody', a local folder, or a hub id (downloaded
    into the HF cache).

    The LM runs in `dtype`; the codec and T5 stay in float32.
    """
    device = torch.device(device)
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
    return MusicGen(codec.to(device), lm.to(device=device, dtype=dtype), text.to(device), info)


def load_codec(ref: str, device: torch.device | str = "cpu", fetch: Callable[[str], Path] = hub_fetch) -> MusicGen:
    """Only the codec of `ref` (an EnCodec repo, the codec inside a MusicGen repo, or the demo's)."""
    device = torch.device(device)
    if ref in DEMOS:
        return MusicGen(random_codec(DEMO_CODEC, DEMO_SEED).to(device), None, None,
                        ModelInfo(ref, None, "demo", "encodec"))
    folder = fetch(ref)
    layout, cfg = _layout(folder)
    codec = tf.load_codec(folder, cfg) if layout == "transformers" else ac.load_codec(folder, fetch)
    return MusicGen(codec.to(device), None, None, ModelInfo(ref, str(folder), layout, "encodec"))
