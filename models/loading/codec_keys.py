"""EnCodec checkpoint keys (transformers and audiocraft layouts) -> segue's `Encodec` modules."""

from __future__ import annotations

import re

import torch

from segue.models.codec.config import CodecConfig
from segue.models.codec.conv import ConvTranspose1d
from segue.models.codec.encodec import Encodec
from segue.models.errors import ModelFileError
from segue.models.loading.weights import fold_weight_norms


def codec_config_from_transformers(cfg: dict) -> CodecConfig:
    """`EncodecConfig` (config.json, or the `audio_encoder` part of a MusicGen config) -> CodecConfig."""
    import math

    try:
        sr = int(cfg["sampling_rate"])
        ratios = tuple(int(r) for r in cfg.get("upsampling_ratios", (8, 5, 4, 2)))
        bins = int(cfg.get("codebook_size", 1024))
        frame_rate = math.ceil(sr / math.prod(ratios))
        bandwidth = float(cfg.get("target_bandwidths", (1.5, 3.0, 6.0, 12.0, 24.0))[-1])
        n_q = int(1000 * bandwidth // (frame_rate * math.ceil(math.log2(bins))))
        codebook_dim = cfg.get("codebook_dim") or cfg.get("hidden_size", 128)
        if codebook_dim != cfg.get("hidden_size", 128):
            raise ModelFileError("codecs whose codebook dimension differs from the latent size are not supported")
        return CodecConfig(
            sample_rate=sr,
            channels=int(cfg.get("audio_channels", 1)),
            ratios=ratios,
            n_filters=int(cfg.get("num_filters", 32)),
            dimension=int(cfg.get("hidden_size", 128)),
            n_residual_layers=int(cfg.get("num_residual_layers", 1)),
            kernel_size=int(cfg.get("kernel_size", 7)),
            last_kernel_size=int(cfg.get("last_kernel_size", 7)),
            residual_kernel_size=int(cfg.get("residual_kernel_size", 3)),
            dilation_base=int(cfg.get("dilation_growth_rate", 2)),
            compress=int(cfg.get("compress", 2)),
            lstm_layers=int(cfg.get("num_lstm_layers", 2)),
            causal=bool(cfg.get("use_causal_conv", True)),
            pad_mode=str(cfg.get("pad_mode", "reflect")),
            norm=str(cfg.get("norm_type", "weight_norm")),
            true_skip=not bool(cfg.get("use_conv_shortcut", True)),
            trim_right_ratio=float(cfg.get("trim_right_ratio", 1.0)),
            n_q=n_q,
            bins=bins,
            normalize=bool(cfg.get("normalize", False)),
            chunk_length_s=cfg.get("chunk_length_s"),
            overlap=cfg.get("overlap"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the EnCodec config is not one segue understands ({exc}); check config.json") from exc


def codec_config_from_audiocraft(cfg: dict) -> CodecConfig:
    """An audiocraft `xp.cfg` (compression solver) -> CodecConfig."""
    try:
        if cfg.get("compression_model", "encodec") != "encodec":
            raise ModelFileError(f"compression model {cfg.get('compression_model')!r} is not EnCodec; not supported")
        seanet = dict(cfg["seanet"])
        seanet.update(seanet.get("decoder") or {})  # decoder overrides (trim_right_ratio, final_activation)
        if seanet.get("final_activation"):
            raise ModelFileError("codecs with a final activation are not supported")
        if seanet.get("disable_norm_outer_blocks", 0):
            raise ModelFileError("codecs with disable_norm_outer_blocks are not supported")
        encodec, rvq = cfg["encodec"], cfg["rvq"]
        if encodec.get("renormalize", False):
            raise ModelFileError("renormalising EnCodec checkpoints are not supported")
        return CodecConfig(
            sample_rate=int(cfg["sample_rate"]),
            channels=int(cfg.get("channels", 1)),
            ratios=tuple(int(r) for r in seanet["ratios"]),
            n_filters=int(seanet["n_filters"]),
            dimension=int(seanet["dimension"]),
            n_residual_layers=int(seanet.get("n_residual_layers", 1)),
            kernel_size=int(seanet.get("kernel_size", 7)),
            last_kernel_size=int(seanet.get("last_kernel_size", 7)),
            residual_kernel_size=int(seanet.get("residual_kernel_size", 3)),
            dilation_base=int(seanet.get("dilation_base", 2)),
            compress=int(seanet.get("compress", 2)),
            lstm_layers=int(seanet.get("lstm", 2)),
            causal=bool(encodec.get("causal", False)),
            pad_mode=str(seanet.get("pad_mode", "constant")),
            norm=str(seanet.get("norm", "weight_norm")),
            true_skip=bool(seanet.get("true_skip", True)),
            trim_right_ratio=float(seanet.get("trim_right_ratio", 1.0)),
            n_q=int(rvq["n_q"]),
            bins=int(rvq["bins"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"the audiocraft codec config is not one segue understands ({exc})") from exc


def _load(codec: Encodec, sd: dict[str, torch.Tensor], codebooks: list[torch.Tensor], source: str) -> None:
    n_q = codec.cfg.n_q
    if len(codebooks) < n_q or any(c is None for c in codebooks[:n_q]):
        raise ModelFileError(f"{source}: expected {n_q} codebooks, found {len(codebooks)}; the file is incomplete")
    sd["quantizer.codebooks"] = torch.stack(codebooks[:n_q]).float()
    sd = {k: v.float() for k, v in sd.items()}
    missing, unexpected = codec.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ModelFileError(f"{source}: codec weights do not match its config (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]}); the checkpoint is corrupt or of an unsupported variant")


def _codebooks(sd: dict, pattern: str) -> list:
    found: dict[int, torch.Tensor] = {}
    rx = re.compile(pattern)
    for key in list(sd):
        m = rx.match(key)
        if m:
            found[int(m.group(1))] = sd.pop(key)
        elif ".codebook." in key or "._codebook." in key:
            sd.pop(key)  # EMA training buffers: inited, cluster_size, embed_avg
    return [found.get(i) for i in range(len(found))]


def load_codec_from_transformers(codec: Encodec, raw: dict[str, torch.Tensor], source: str) -> None:
    """Keys of transformers' `EncodecModel` (either weight-norm style) into `codec`, in place."""
    sd = fold_weight_norms(raw)
    codebooks = _codebooks(sd, r"^quantizer\.layers\.(\d+)\.codebook\.embed$")
    out = {}
    for key, value in sd.items():
        key = re.sub(r"\.block\.(\d+)\.", r".block.layers.\1.", key)
        m = re.match(r"^decoder\.layers\.(\d+)\.conv\.(.*)$", key)
        if m and isinstance(codec.decoder.layers[int(m.group(1))], ConvTranspose1d):
            key = f"decoder.layers.{m.group(1)}.convtr.{m.group(2)}"
        out[key] = value
    _load(codec, out, codebooks, source)


def load_codec_from_audiocraft(codec: Encodec, raw: dict[str, torch.Tensor], source: str) -> None:
    """Keys of audiocraft's `EncodecModel` state (`encoder.model.N.conv.conv.*`, ...) into `codec`, in place."""
    sd = fold_weight_norms(raw)
    codebooks = _codebooks(sd, r"^quantizer\.vq\.layers\.(\d+)\._codebook\.embed$")
    out = {}
    for key, value in sd.items():
        key = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", key)
        key = re.sub(r"\.block\.(\d+)\.", r".block.layers.\1.", key)
        key = key.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".convtr.")
        key = key.replace(".conv.norm.", ".norm.").replace(".convtr.norm.", ".norm.")
        out[key] = value
    _load(codec, out, codebooks, source)
