"""Folders in the transformers layout: `MusicgenForConditionalGeneration` and `MusicgenMelodyForConditionalGeneration`
repos, and `EncodecModel` repos."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from segue.models.codec.encodec import Encodec
from segue.models.errors import ModelFileError
from segue.models.lm.conditioning import TextEncoder
from segue.models.lm.model import MusicGenLM
from segue.models.loading.codec_keys import codec_config_from_transformers, load_codec_from_transformers
from segue.models.loading.lm_keys import lm_config_from_transformers, lm_from_transformers
from segue.models.loading.weights import read_state_dict


def read_config(folder: Path) -> dict | None:
    path = folder / "config.json"
    if not path.exists():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path} is not valid JSON ({exc}); download the model again") from exc
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{path} does not hold a config object")
    return cfg


def model_kind(cfg: dict) -> str:
    kind = cfg.get("model_type")
    if kind in ("musicgen", "musicgen_melody", "encodec"):
        return kind
    raise ModelFileError(f"model type {kind!r} is not a MusicGen or EnCodec model")


def load_codec(folder: Path, cfg: dict) -> Encodec:
    """The codec of a MusicGen repo (`audio_encoder.*`) or of an EnCodec repo."""
    if model_kind(cfg) != "encodec":
        codec_cfg, prefix = cfg.get("audio_encoder"), "audio_encoder."
        if not isinstance(codec_cfg, dict):
            raise ModelFileError(f"{folder}/config.json has no audio_encoder section")
    else:
        codec_cfg, prefix = cfg, ""
    codec = Encodec(codec_config_from_transformers(codec_cfg))
    load_codec_from_transformers(codec, read_state_dict(folder, prefix), str(folder))
    return codec.eval()


def _load_t5(folder: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> TextEncoder:
    from transformers import T5Config, T5EncoderModel

    try:
        t5_cfg = T5Config(**{k: v for k, v in cfg["text_encoder"].items() if k != "model_type"})
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{folder}/config.json has no usable text_encoder section") from exc
    encoder = T5EncoderModel(t5_cfg)
    if "shared.weight" in weights:
        weights.setdefault("encoder.embed_tokens.weight", weights["shared.weight"])
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    unexpected = [k for k in unexpected if not k.startswith("decoder.")]
    if missing or unexpected:
        raise ModelFileError(f"{folder}: text encoder weights incomplete (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); download the model again")
    tokenizer = load_tokenizer(folder)
    return TextEncoder(tokenizer, encoder)


TOKENIZER_FILES = ("tokenizer.json", "spiece.model")


def load_tokenizer(folder: Path):
    """The T5 tokenizer saved next to the weights (tokenizer.json or spiece.model must be there)."""
    from transformers import AutoTokenizer

    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        raise ModelFileError(f"{folder} has no T5 tokenizer ({' or '.join(TOKENIZER_FILES)}); download the model "
                             "again")
    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{folder} has no usable T5 tokenizer ({exc}); download the model again") from exc


def chroma_rate(folder: Path, cfg: dict, sample_rate: int) -> float:
    """Chroma frames per second of a melody repo: its feature extractor's hop (preprocessor_config.json), 4096 by
    default. segue computes chroma with a window of four hops at the codec's rate, as the published repos do."""
    path = folder / "preprocessor_config.json"
    if cfg.get("model_type") != "musicgen_melody" or not path.exists():
        return sample_rate / 4096
    try:
        pre = json.loads(path.read_text())
        hop, n_fft = int(pre.get("hop_length", 4096)), int(pre.get("n_fft", 16384))
        rate = int(pre.get("sampling_rate", sample_rate))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise ModelFileError(f"{path} is not a readable feature extractor config ({exc}); download the model "
                             "again") from exc
    if n_fft != 4 * hop or rate != sample_rate:
        raise ModelFileError(f"{path}: chroma with n_fft {n_fft}, hop {hop} at {rate} Hz is not supported (segue "
                             f"computes it at the codec's {sample_rate} Hz with a window of four hops)")
    return sample_rate / hop


def load_musicgen(folder: Path, cfg: dict, dtype: torch.dtype) -> tuple[Encodec, MusicGenLM, TextEncoder]:
    """Codec, LM and text encoder of a `MusicgenForConditionalGeneration` or `...MelodyForConditionalGeneration`
    folder."""
    lm_prefixes = ("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj.")

    def lm_dtype(key: str, t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype) if key.startswith(lm_prefixes) and t.is_floating_point() else t

    sd = read_state_dict(folder, convert=lm_dtype)
    codec = Encodec(codec_config_from_transformers(cfg.get("audio_encoder") or {}))
    load_codec_from_transformers(codec, _take(sd, "audio_encoder."), str(folder))
    lm_sd = {}
    for prefix in lm_prefixes:
        lm_sd.update(_take(sd, prefix, keep_prefix=True))
    rate = chroma_rate(folder, cfg, codec.cfg.sample_rate)
    lm_cfg = lm_config_from_transformers(cfg, codec.cfg.frame_rate, chroma_rate=rate)
    lm = lm_from_transformers(lm_cfg, lm_sd, str(folder), dtype)
    text = _load_t5(folder, cfg, _take(sd, "text_encoder."))
    return codec.eval(), lm.eval(), text


def _take(sd: dict[str, torch.Tensor], prefix: str, keep_prefix: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for key in [k for k in sd if k.startswith(prefix)]:
        out[key if keep_prefix else key[len(prefix):]] = sd.pop(key)
    return out
