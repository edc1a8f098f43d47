"""MusicGen LM checkpoint keys (transformers and audiocraft layouts) -> segue's `MusicGenLM`."""

from __future__ import annotations

import re

import torch

from segue.models.errors import ModelFileError
from segue.models.lm.config import LMConfig
from segue.models.lm.model import MusicGenLM


def _delays(n_q: int, channels: int) -> tuple[int, ...]:
    # Stereo interleaves left/right codebooks [1L, 1R, 2L, 2R, ...] and delays each pair together.
    return tuple(k // channels for k in range(n_q))


def lm_config_from_transformers(cfg: dict, frame_rate: float, max_duration: float = 30.0,
                                chroma_rate: float = 32000 / 4096) -> LMConfig:
    """A `MusicgenConfig` or `MusicgenMelodyConfig` dict (config.json of a MusicGen repo) -> LMConfig."""
    melody = cfg.get("model_type") == "musicgen_melody"
    try:
        dec, text = cfg["decoder"], cfg["text_encoder"]
        if dec.get("activation_function", "gelu") != "gelu":
            raise ModelFileError(f"activation {dec.get('activation_function')!r} is not supported (MusicGen: gelu)")
        if dec.get("scale_embedding", False):
            raise ModelFileError("scaled embeddings are not supported (no published MusicGen uses them)")
        dim = int(dec["hidden_size"])
        text_dim = int(text.get("d_model", text.get("hidden_size", 768)))
        channels = int(dec.get("audio_channels", 1))
        n_q = int(dec["num_codebooks"])
        return LMConfig(
            dim=dim,
            num_heads=int(dec["num_attention_heads"]),
            num_layers=int(dec["num_hidden_layers"]),
            ffn_dim=int(dec["ffn_dim"]),
            n_q=n_q,
            card=int(dec["vocab_size"]),
            delays=_delays(n_q, channels),
            text_dim=text_dim,
            cond_proj=text_dim != dim and dec.get("cross_attention_hidden_size") is None,
            max_duration=max_duration,
            frame_rate=frame_rate,
            channels=channels,
            cross_attention=not melody,
            chroma_length=int(cfg.get("chroma_length", 235)) if melody else 0,
            n_chroma=int(cfg.get("num_chroma", 12)),
            chroma_rate=chroma_rate,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the MusicGen config is not one segue understands ({exc}); check config.json") from exc


def _melody_from_audiocraft(cfg: dict) -> tuple[int, int, float]:
    """(chroma_length, n_chroma, chroma_rate) of an audiocraft melody LM (fuser prepend [self_wav, description]),
    or (0, 12, default rate) for a text-only one; refuses every other fusing."""
    fuser = cfg.get("fuser", {})
    prepend, cross = set(fuser.get("prepend") or []), list(fuser.get("cross") or [])
    if fuser.get("sum") or fuser.get("input_interpolate"):
        raise ModelFileError("LMs with 'sum' or 'input_interpolate' conditions are not supported (MusicGen uses "
                             "cross-attention, MusicGen-Melody prepends)")
    if not prepend:
        if set(cross) - {"description"}:
            raise ModelFileError(f"cross-attention conditions {cross} are not supported (only a T5 description)")
        return 0, 12, 32000 / 4096
    if prepend != {"self_wav", "description"} or cross:
        raise ModelFileError(f"fuser prepend {sorted(prepend)} with cross {cross} is not supported: segue reads "
                             "MusicGen-Melody (prepend [self_wav, description], no cross-attention)")
    wav = cfg["conditioners"]["self_wav"]
    if wav.get("model") != "chroma_stem":
        raise ModelFileError(f"melody conditioner {wav.get('model')!r} is not supported (only chroma_stem)")
    chroma = wav.get("chroma_stem", {})
    if not chroma.get("argmax", True):
        raise ModelFileError("chroma_stem with argmax: false is not supported (the published melody models use "
                             "one-hot chroma)")
    sample_rate = int(chroma.get("sample_rate", cfg.get("sample_rate", 32000)))
    hop = 2 ** int(chroma.get("radix2_exp", 14)) // 4  # audiocraft's window hop: a quarter of the window
    duration = float(chroma.get("duration", cfg["dataset"]["segment_duration"]))
    # The chroma length the model was trained on: frames of a whole segment (1 + 960000 // 4096 = 235 for 30 s).
    return 1 + int(duration * sample_rate) // hop, int(chroma.get("n_chroma", 12)), sample_rate / hop


def lm_config_from_audiocraft(cfg: dict, frame_rate: float, text_dim: int) -> LMConfig:
    """An audiocraft `xp.cfg` (MusicGen / AudioGen LM solver) -> LMConfig."""
    try:
        if cfg.get("lm_model", "transformer_lm") != "transformer_lm":
            raise ModelFileError(f"LM type {cfg.get('lm_model')!r} is not supported (MAGNeT and others are not)")
        tl = cfg["transformer_lm"]
        pattern = cfg.get("codebooks_pattern", {})
        if pattern.get("modeling") != "delay":
            raise ModelFileError(f"codebook pattern {pattern.get('modeling')!r} is not supported (only 'delay')")
        chroma_length, n_chroma, chroma_rate = _melody_from_audiocraft(cfg)
        for key in ("bias_ff", "bias_attn", "bias_proj"):
            if tl.get(key, False):
                raise ModelFileError(f"LMs with {key}=true are not supported (MusicGen has no biases)")
        if not tl.get("norm_first", False) or tl.get("norm", "layer_norm") != "layer_norm":
            raise ModelFileError("only pre-norm LayerNorm transformers are supported")
        if tl.get("positional_embedding", "sin") != "sin" or tl.get("layer_scale") or tl.get("qk_layer_norm"):
            raise ModelFileError("only sinusoidal positions without layer scale or qk-norm are supported")
        n_q = int(tl["n_q"])
        delays = tuple(int(d) for d in pattern["delay"]["delays"])
        dim = int(tl["dim"])
        return LMConfig(
            dim=dim,
            num_heads=int(tl["num_heads"]),
            num_layers=int(tl["num_layers"]),
            ffn_dim=int(tl.get("hidden_scale", 4) * dim),
            n_q=n_q,
            card=int(tl["card"]),
            delays=delays,
            text_dim=text_dim,
            cond_proj=True,
            max_duration=float(cfg["dataset"]["segment_duration"]),
            frame_rate=frame_rate,
            max_period=float(tl.get("max_period", 10000.0)),
            channels=2 if cfg.get("interleave_stereo_codebooks", {}).get("use", False) else 1,
            cross_attention=chroma_length == 0,
            chroma_length=chroma_length,
            n_chroma=n_chroma,
            chroma_rate=chroma_rate,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the audiocraft LM config is not one segue understands ({exc})") from exc


def _finish(cfg: LMConfig, out: dict[str, torch.Tensor], source: str, dtype: torch.dtype) -> MusicGenLM:
    with torch.device("meta"):
        ref = MusicGenLM(cfg).state_dict()  # names and shapes, no memory
    missing = sorted(set(ref) - set(out))
    unexpected = sorted(set(out) - set(ref))
    if missing or unexpected:
        raise ModelFileError(f"{source}: LM weights do not match its config (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); the checkpoint is corrupt or of an unsupported variant")
    for key, value in out.items():
        if value.shape != ref[key].shape:
            raise ModelFileError(f"{source}: {key} has shape {list(value.shape)}, config implies "
                                 f"{list(ref[key].shape)}; the checkpoint is corrupt")
    return MusicGenLM.from_state(cfg, {k: v.to(dtype) for k, v in out.items()})


def _stack(sd: dict, pattern: str, n: int, source: str) -> torch.Tensor:
    try:
        parts = [sd.pop(pattern.format(k)) for k in range(n)]
    except KeyError as exc:
        raise ModelFileError(f"{source}: missing {exc.args[0]}; the checkpoint is incomplete") from exc
    shapes = {tuple(p.shape) for p in parts}
    if len(shapes) != 1:
        raise ModelFileError(f"{source}: {pattern.format('*')} have differing shapes {sorted(shapes)}; "
                             "the checkpoint is corrupt")
    return torch.stack(parts)


def lm_from_transformers(cfg: LMConfig, raw: dict[str, torch.Tensor], source: str,
                         dtype: torch.dtype = torch.float32) -> MusicGenLM:
    """The LM from the `decoder.*` + `enc_to_dec_proj.*` (+ melody: `audio_enc_to_dec_proj.*`) keys of a
    `MusicgenForConditionalGeneration` / `MusicgenMelodyForConditionalGeneration`."""
    sd = dict(raw)
    cross = any(".encoder_attn." in k for k in sd)
    if cross != cfg.cross_attention:
        raise ModelFileError(f"{source}: config.json says {'MusicGen' if cfg.cross_attention else 'MusicGen-Melody'} "
                             f"but the weights {'have' if cross else 'lack'} cross-attention; the checkpoint and "
                             "its config.json do not belong together, download the model again")
    out = {
        "emb": _stack(sd, "decoder.model.decoder.embed_tokens.{}.weight", cfg.n_q, source),
        "heads": _stack(sd, "decoder.lm_heads.{}.weight", cfg.n_q, source),
    }
    prefix = "decoder.model.decoder."
    names = {"self_attn.out_proj": "wo", "encoder_attn.q_proj": "cq", "encoder_attn.out_proj": "co",
             "self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm_cross", "final_layer_norm": "norm2",
             "fc1": "fc1", "fc2": "fc2"}
    try:
        for i in range(cfg.num_layers):
            p = f"{prefix}layers.{i}."
            out[f"layers.{i}.wqkv.weight"] = torch.cat([sd.pop(f"{p}self_attn.{x}_proj.weight") for x in "qkv"])
            if cross:
                out[f"layers.{i}.ckv.weight"] = torch.cat([sd.pop(f"{p}encoder_attn.{x}_proj.weight") for x in "kv"])
            for hf, ours in names.items():
                for suffix in ("weight", "bias"):
                    key = f"{p}{hf}.{suffix}"
                    if key in sd:
                        out[f"layers.{i}.{ours}.{suffix}"] = sd.pop(key)
    except KeyError as exc:
        raise ModelFileError(f"{source}: missing {exc.args[0]}; the checkpoint is incomplete") from exc
    for suffix in ("weight", "bias"):
        if f"{prefix}layer_norm.{suffix}" in sd:
            out[f"out_norm.{suffix}"] = sd.pop(f"{prefix}layer_norm.{suffix}")
        if f"enc_to_dec_proj.{suffix}" in sd:
            out[f"cond_proj.{suffix}"] = sd.pop(f"enc_to_dec_proj.{suffix}")
        if f"audio_enc_to_dec_proj.{suffix}" in sd:
            out[f"chroma_proj.{suffix}"] = sd.pop(f"audio_enc_to_dec_proj.{suffix}")
    leftover = [k for k in sd if not k.startswith(f"{prefix}embed_positions")]
    if leftover:
        raise ModelFileError(f"{source}: unexpected LM weights {leftover[:3]}; this MusicGen variant is not supported")
    return _finish(cfg, out, source, dtype)


_AC_NAMES = {"self_attn.out_proj": "wo", "cross_attention.out_proj": "co", "norm1": "norm1",
             "norm_cross": "norm_cross", "norm2": "norm2", "linear1": "fc1", "linear2": "fc2"}


def lm_from_audiocraft(cfg: LMConfig, raw: dict[str, torch.Tensor], source: str,
                       dtype: torch.dtype = torch.float32) -> MusicGenLM:
    """The LM from an audiocraft `best_state` (`transformer.layers.N.self_attn.in_proj_weight`, ...)."""
    sd = dict(raw)
    d = cfg.dim
    out = {
        "emb": _stack(sd, "emb.{}.weight", cfg.n_q, source),
        "heads": _stack(sd, "linears.{}.weight", cfg.n_q, source),
    }
    for key in list(sd):
        m = re.match(r"^transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            i, name, suffix = m.groups()
            if name in _AC_NAMES:
                out[f"layers.{i}.{_AC_NAMES[name]}.{suffix}"] = sd.pop(key)
        elif key.startswith("out_norm."):
            out[key] = sd.pop(key)
        elif key.startswith("condition_provider.conditioners.description.output_proj."):
            out["cond_proj." + key.rsplit(".", 1)[1]] = sd.pop(key)
        elif key.startswith("condition_provider.conditioners.self_wav.output_proj."):
            out["chroma_proj." + key.rsplit(".", 1)[1]] = sd.pop(key)
    # Packed q|k|v projections are named `in_proj_weight` (no `.weight` suffix).
    for key in list(sd):
        m = re.match(r"^transformer\.layers\.(\d+)\.(self_attn|cross_attention)\.in_proj_weight$", key)
        if m:
            i, kind = m.groups()
            w = sd.pop(key)
            if kind == "self_attn":
                out[f"layers.{i}.wqkv.weight"] = w
            else:
                out[f"layers.{i}.cq.weight"], out[f"layers.{i}.ckv.weight"] = w[:d], w[d:]
    leftover = [k for k in sd if not k.startswith("condition_provider.")]
    if leftover:
        raise ModelFileError(f"{source}: unexpected LM weights {leftover[:3]}; this audiocraft LM is not supported")
    return _finish(cfg, out, source, dtype)
