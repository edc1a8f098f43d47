"""Folders in audiocraft's export layout: `state_dict.bin` (LM) + `compression_state_dict.bin` (codec).

Each `.bin` is a torch package {'best_state': weights, 'xp.cfg': the Hydra config as YAML}; the codec file may
instead be a pointer {'pretrained': 'facebook/encodec_32khz'} to a transformers EnCodec repo. The T5 text encoder is
not inside: the config names it (t5-base for MusicGen, t5-large for AudioGen) and it is fetched by that name.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml

from segue.models.codec.encodec import Encodec
from segue.models.errors import ModelFileError
from segue.models.lm.conditioning import TextEncoder
from segue.models.lm.model import MusicGenLM
from segue.models.loading.codec_keys import codec_config_from_audiocraft, load_codec_from_audiocraft
from segue.models.loading.lm_keys import lm_config_from_audiocraft, lm_from_audiocraft
from segue.models.loading.weights import read_torch_package

_REF = re.compile(r"^\$\{([\w.]+)\}$")


def parse_xp_cfg(text: str, source: str) -> dict:
    """YAML of an OmegaConf config -> dict, with `${a.b}` references to other keys resolved."""
    try:
        root = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelFileError(f"{source}: xp.cfg is not valid YAML ({exc})") from exc
    if not isinstance(root, dict):
        raise ModelFileError(f"{source}: xp.cfg does not hold a config mapping")

    def lookup(path: str):
        node = root
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ModelFileError(f"{source}: xp.cfg refers to missing key {path}")
            node = node[part]
        return resolve(node)

    def resolve(node):
        if isinstance(node, dict):
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        if isinstance(node, str) and _REF.match(node):
            return lookup(_REF.match(node).group(1))
        return node

    return resolve(root)


def _package(path: Path) -> tuple[dict, dict | None]:
    pkg = read_torch_package(path)
    if "pretrained" in pkg:
        return pkg, None
    if "best_state" not in pkg or "xp.cfg" not in pkg:
        raise ModelFileError(f"{path} lacks 'best_state' or 'xp.cfg'; it is not an audiocraft export")
    state = pkg["best_state"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # some fine-tuning flows wrap the weights once more
    return state, parse_xp_cfg(pkg["xp.cfg"], str(path))


def load_codec(folder: Path, fetch) -> Encodec:
    """The codec of an audiocraft folder: full weights, or the transformers repo a pointer names."""
    path = folder / "compression_state_dict.bin"
    state, cfg = _package(path)
    if cfg is None:  # pointer to a transformers EnCodec repo
        from segue.models.loading import transformers_format as tf

        target = fetch(str(state["pretrained"]))
        target_cfg = tf.read_config(target)
        if target_cfg is None:
            raise ModelFileError(f"{path} points to {state['pretrained']}, which has no config.json")
        return tf.load_codec(target, target_cfg)
    codec = Encodec(codec_config_from_audiocraft(cfg))
    load_codec_from_audiocraft(codec, state, str(path))
    return codec.eval()


def load_text_encoder(name: str, fetch) -> TextEncoder:
    """T5 encoder + tokenizer by hub name (t5-base, t5-large, ...) or local folder."""
    from transformers import T5EncoderModel

    from segue.models.loading.transformers_format import load_tokenizer

    folder = fetch(name)
    tokenizer = load_tokenizer(folder)
    try:
        encoder = T5EncoderModel.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as exc:
        raise ModelFileError(f"cannot load the T5 text encoder {name!r} from {folder} ({exc})") from exc
    return TextEncoder(tokenizer, encoder)


def load_audiocraft(folder: Path, dtype: torch.dtype, fetch) -> tuple[Encodec, MusicGenLM, TextEncoder, str]:
    """Codec, LM, text encoder and kind ('musicgen' / 'audiogen') of an audiocraft export folder."""
    path = folder / "state_dict.bin"
    state, cfg = _package(path)
    if cfg is None:
        raise ModelFileError(f"{path} is a pointer, not an LM export")
    codec = load_codec(folder, fetch)
    try:
        cond = cfg["conditioners"]["description"]
        if cond["model"] != "t5":
            raise KeyError("conditioners.description.model is not t5")
        t5_name = cond["t5"]["name"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: only T5 text-conditioned LMs are supported ({exc})") from exc
    text = load_text_encoder(t5_name, fetch)
    text_dim = text.encoder.config.d_model
    try:
        lm_cfg = lm_config_from_audiocraft(cfg, codec.cfg.frame_rate, text_dim)
    except ModelFileError as exc:
        raise ModelFileError(f"{path}: {exc}") from exc
    lm = lm_from_audiocraft(lm_cfg, state, str(path), dtype)
    kind = "audiogen" if str(cfg.get("solver", "")).startswith("audiogen") else "musicgen"
    return codec, lm.eval(), text, kind
