"""Tiny random models built with transformers (the reference) and saved in the published layouts.

Nothing here is segue code: these are the oracle and the fixtures segue is checked against.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from segue.models.loading.demo import char_tokenizer

SPECIAL = 2048


def hf_encodec_config(kind: str = "32k"):
    from transformers import EncodecConfig

    if kind == "32k":  # facebook/encodec_32khz shape, narrow
        return EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                             num_filters=4, codebook_size=2048, use_causal_conv=False, use_conv_shortcut=False,
                             hidden_size=8, pad_mode="reflect")
    if kind == "32k-full":  # facebook/encodec_32khz at its full width (64 filters, 2-layer LSTM of 1024): for speed
        return EncodecConfig(sampling_rate=32000, upsampling_ratios=[8, 5, 4, 4], target_bandwidths=[2.2],
                             num_filters=64, codebook_size=2048, use_causal_conv=False, use_conv_shortcut=False,
                             hidden_size=128, num_lstm_layers=2, pad_mode="reflect")
    if kind == "16k":  # AudioGen's codec
        return EncodecConfig(sampling_rate=16000, upsampling_ratios=[8, 5, 4, 2], target_bandwidths=[2.2],
                             num_filters=4, codebook_size=2048, use_causal_conv=False, use_conv_shortcut=False,
                             hidden_size=8, pad_mode="constant")
    if kind == "24k":  # facebook/encodec_24khz shape: causal, conv shortcut, 1024 bins, 75 Hz
        return EncodecConfig(sampling_rate=24000, upsampling_ratios=[8, 5, 4, 2], target_bandwidths=[1.5, 6.0],
                             num_filters=4, codebook_size=1024, use_causal_conv=True, use_conv_shortcut=True,
                             hidden_size=8)
    if kind == "48k":  # facebook/encodec_48khz shape: stereo, group norm, normalised 1 s chunks
        return EncodecConfig(sampling_rate=48000, audio_channels=2, upsampling_ratios=[8, 5, 4, 2],
                             target_bandwidths=[3.0, 6.0], num_filters=4, codebook_size=1024, use_causal_conv=False,
                             norm_type="time_group_norm", normalize=True, chunk_length_s=0.25, overlap=0.01,
                             hidden_size=8)
    raise ValueError(kind)


@torch.no_grad()
def init_codebooks(encodec, seed: int = 0) -> None:
    """Codebooks from the encoder's own latents on noise (like k-means init), so that codes are diverse."""
    gen = torch.Generator().manual_seed(seed)
    cfg = encodec.config
    probe = torch.randn(1, cfg.audio_channels, cfg.hop_length * 128, generator=gen) * 0.2
    residual = encodec.encoder(probe)[0].t()  # [T, D]
    for layer in encodec.quantizer.layers:
        pick = torch.randint(0, residual.shape[0], (cfg.codebook_size,), generator=gen)
        noise = torch.randn(cfg.codebook_size, residual.shape[1], generator=gen) * residual.std() * 0.3
        layer.codebook.embed.copy_(residual[pick] + noise)
        idx = layer.codebook.encode(residual)
        residual = residual - layer.codebook.embed[idx]


def hf_encodec(kind: str = "32k", seed: int = 0):
    from transformers import EncodecModel

    torch.manual_seed(seed)
    model = EncodecModel(hf_encodec_config(kind)).eval()
    init_codebooks(model, seed)
    return model


def hf_musicgen(stereo: bool = False, seed: int = 0, layers: int = 2, max_positions: int = 2048):
    """A tiny MusicgenForConditionalGeneration with a character T5 tokenizer."""
    from transformers import (MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config)

    torch.manual_seed(seed)
    tok = char_tokenizer()
    dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                ffn_dim=64, num_codebooks=8 if stereo else 4, audio_channels=2 if stereo else 1,
                                max_position_embeddings=max_positions)
    t5 = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=hf_encodec_config("32k").to_dict(),
                         decoder=dec.to_dict())
    model = MusicgenForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        init_codebooks(model.audio_encoder, seed)
        for name, p in model.decoder.named_parameters():
            if "embed_tokens" in name or "lm_heads" in name:
                p.normal_(0, 0.5)  # larger than the init default so that greedy choices depend on the input
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = SPECIAL
    return model, tok


def save_musicgen(model, tok, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def finish(stream) -> torch.Tensor:
    """Step a finite LM stream to its end; its codes [B, K, total] (prompt frames included)."""
    while not stream.done:
        stream.step()
    return stream.read_frames(0, stream.total)


def generate_frames(model, texts, frames: int, prompt: torch.Tensor | None = None, sampling=None,
                    cuda_graphs: bool | None = None, chroma: torch.Tensor | None = None) -> torch.Tensor:
    """segue's codes for `frames` new frames after an optional prompt (greedy with CFG 3 unless told otherwise);
    `chroma` [B, T, 12]: the melody, for MusicGen-Melody models."""
    from segue.models.lm.config import SamplingParams

    sampling = sampling or SamplingParams(top_k=1, cfg_coef=3.0)
    stream = model.stream(len(texts), sampling, cuda_graphs=cuda_graphs)
    stream.start(texts, prompt, total_frames=(0 if prompt is None else prompt.shape[-1]) + frames, chroma=chroma)
    return finish(stream)


def codes_to_codec(model, run) -> torch.Tensor:
    """Codes [B, K, T] that transformers' generate (called by `run()`) hands to its codec. Stereo decodes left
    ([::2]) then right ([1::2]) codebooks in two calls; they are interleaved again."""
    captured = []
    decode = model.audio_encoder.decode

    def capture(codes, *args, **kwargs):
        captured.append(codes[0].clone())
        return decode(codes, *args, **kwargs)

    model.audio_encoder.decode = capture
    try:
        with torch.no_grad():
            run()
    finally:
        model.audio_encoder.decode = decode
    if len(captured) == 1:
        return captured[0]
    return torch.stack(captured, 2).flatten(1, 2)  # [B, K/2, 2, T] -> interleaved [B, K, T]


def hf_greedy_codes(model, tok, text: str, new_steps: int, audio: torch.Tensor | None = None,
                    guidance: float = 3.0) -> torch.Tensor:
    """Codes [B, K, T] that transformers' generate hands to its codec (prompt frames included)."""
    inputs = tok([text] if isinstance(text, str) else text, return_tensors="pt", padding=True)
    kwargs = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, do_sample=False,
                  guidance_scale=guidance, max_new_tokens=new_steps)
    if audio is not None:
        kwargs["input_values"] = audio
    return codes_to_codec(model, lambda: model.generate(**kwargs))


# -- audiocraft export layout -----------------------------------------------------------------------------------------

_XP_TEMPLATE = """
solver: {solver}
sample_rate: {sample_rate}
channels: 1
compression_model: encodec
lm_model: transformer_lm
dataset:
  segment_duration: {duration}
encodec:
  autoencoder: seanet
  quantizer: rvq
  sample_rate: ${{sample_rate}}
  channels: ${{channels}}
  causal: false
  renormalize: false
seanet:
  dimension: {dimension}
  channels: ${{channels}}
  causal: ${{encodec.causal}}
  n_filters: {n_filters}
  n_residual_layers: 1
  ratios: {ratios}
  activation: ELU
  norm: weight_norm
  kernel_size: 7
  residual_kernel_size: 3
  last_kernel_size: 7
  dilation_base: 2
  pad_mode: {pad_mode}
  true_skip: true
  compress: 2
  lstm: 2
  disable_norm_outer_blocks: 0
  decoder:
    trim_right_ratio: 1.0
    final_activation: null
  encoder: {{}}
rvq:
  n_q: {n_q}
  bins: {bins}
codebooks_pattern:
  modeling: delay
  delay:
    delays: {delays}
    flatten_first: 0
    empty_initial: 0
transformer_lm:
  dim: {dim}
  num_heads: {heads}
  num_layers: {layers}
  hidden_scale: {hidden_scale}
  n_q: {n_q}
  card: {bins}
  norm_first: true
  bias_ff: false
  bias_attn: false
  bias_proj: false
  norm: layer_norm
  positional_embedding: sin
  layer_scale: null
  qk_layer_norm: false
  custom: false
  memory_efficient: true
classifier_free_guidance:
  training_dropout: 0.3
  inference_coef: 3.0
fuser:
  cross_attention_pos_emb: false
  sum: []
  prepend: {prepend}
  cross: {cross}
  input_interpolate: []
interleave_stereo_codebooks:
  use: {stereo}
conditioners:{self_wav}
  description:
    model: t5
    t5:
      name: {t5_name}
      finetune: false
      word_dropout: 0.3
      normalize_text: false
"""


def audiocraft_codec_state(hf_codec_state: dict, decoder_convtr: set[int]) -> dict:
    """transformers EnCodec keys -> audiocraft keys (weight norm as weight_g / weight_v, as in the 2023 exports)."""
    out = {}
    for key, value in hf_codec_state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        m = re.match(r"^quantizer\.layers\.(\d+)\.codebook\.(.+)$", key)
        if m:
            out[f"quantizer.vq.layers.{m.group(1)}._codebook.{m.group(2)}"] = value
            continue
        m = re.match(r"^(encoder|decoder)\.layers\.(\d+)\.(.+)$", key)
        side, idx, rest = m.group(1), int(m.group(2)), m.group(3)
        if rest.startswith("lstm."):
            pass
        elif side == "decoder" and idx in decoder_convtr:
            rest = rest.replace("conv.", "convtr.convtr.", 1)
        else:
            rest = re.sub(r"(^|\.)conv\.", r"\1conv.conv.", rest)
        out[f"{side}.model.{idx}.{rest}"] = value
    return out


_SELF_WAV = """
  self_wav:
    model: chroma_stem
    chroma_stem:
      sample_rate: ${sample_rate}
      n_chroma: 12
      radix2_exp: 14
      argmax: true
      match_len_on_eval: false
      eval_wavs: null
      n_eval_wavs: 100
      cache_path: null"""


def audiocraft_lm_state(hf_state: dict, layers: int, n_q: int) -> dict:
    """MusicgenForConditionalGeneration (or ...Melody...) keys -> audiocraft LMModel keys (packed in_proj_weight;
    a melody LM has no cross-attention and a `self_wav` chroma projection)."""
    p = "decoder.model.decoder."
    out = {}
    for k in range(n_q):
        out[f"emb.{k}.weight"] = hf_state[f"{p}embed_tokens.{k}.weight"]
        out[f"linears.{k}.weight"] = hf_state[f"decoder.lm_heads.{k}.weight"]
    for i in range(layers):
        q = f"{p}layers.{i}."
        t = f"transformer.layers.{i}."
        out[t + "self_attn.in_proj_weight"] = torch.cat([hf_state[f"{q}self_attn.{x}_proj.weight"] for x in "qkv"])
        out[t + "self_attn.out_proj.weight"] = hf_state[q + "self_attn.out_proj.weight"]
        norms = (("self_attn_layer_norm", "norm1"), ("final_layer_norm", "norm2"))
        if q + "encoder_attn.q_proj.weight" in hf_state:
            out[t + "cross_attention.in_proj_weight"] = torch.cat(
                [hf_state[f"{q}encoder_attn.{x}_proj.weight"] for x in "qkv"])
            out[t + "cross_attention.out_proj.weight"] = hf_state[q + "encoder_attn.out_proj.weight"]
            norms += (("encoder_attn_layer_norm", "norm_cross"),)
        out[t + "linear1.weight"] = hf_state[q + "fc1.weight"]
        out[t + "linear2.weight"] = hf_state[q + "fc2.weight"]
        for hf, ac in norms:
            for s in ("weight", "bias"):
                out[f"{t}{ac}.{s}"] = hf_state[f"{q}{hf}.{s}"]
    for s in ("weight", "bias"):
        out[f"out_norm.{s}"] = hf_state[f"{p}layer_norm.{s}"]
        out[f"condition_provider.conditioners.description.output_proj.{s}"] = hf_state[f"enc_to_dec_proj.{s}"]
        if f"audio_enc_to_dec_proj.{s}" in hf_state:
            out[f"condition_provider.conditioners.self_wav.output_proj.{s}"] = hf_state[f"audio_enc_to_dec_proj.{s}"]
    if "audio_enc_to_dec_proj.weight" in hf_state:  # the published files carry the chroma's STFT window too
        out["condition_provider.conditioners.self_wav.chroma.spec.window"] = torch.hann_window(16384)
    return out


def export_audiocraft(model, tok, folder: Path, t5_name: str, pointer: str | None = None,
                      solver: str = "musicgen/musicgen_base_32khz", duration: float = 30.0,
                      half: bool = True) -> Path:
    """Write `state_dict.bin` + `compression_state_dict.bin` (+ the T5 at `t5_name` if it is a path)."""
    folder.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    sd = model.state_dict()
    dec = cfg.decoder
    enc = cfg.audio_encoder
    melody = cfg.model_type == "musicgen_melody"  # fuser prepend [self_wav, description], no cross-attention
    channels = dec.audio_channels
    xp = _XP_TEMPLATE.format(
        solver=solver, sample_rate=enc.sampling_rate, duration=duration, dimension=enc.hidden_size,
        n_filters=enc.num_filters, ratios=list(enc.upsampling_ratios), pad_mode=enc.pad_mode, n_q=dec.num_codebooks,
        bins=enc.codebook_size, delays=[k // channels for k in range(dec.num_codebooks)], dim=dec.hidden_size,
        heads=dec.num_attention_heads, layers=dec.num_hidden_layers, hidden_scale=dec.ffn_dim // dec.hidden_size,
        t5_name=t5_name, prepend="[self_wav, description]" if melody else "[]",
        cross="[]" if melody else "[description]", stereo="true" if channels == 2 else "false",
        self_wav=_SELF_WAV if melody else "")
    lm_state = audiocraft_lm_state(sd, dec.num_hidden_layers, dec.num_codebooks)
    if half:  # the released LM checkpoints are float16
        lm_state = {k: v.half() for k, v in lm_state.items()}
    torch.save({"best_state": lm_state, "xp.cfg": xp, "version": "1.0", "exported": True}, folder / "state_dict.bin")
    if pointer is not None:
        torch.save({"pretrained": pointer, "exported": True, "version": "1.0"}, folder / "compression_state_dict.bin")
    else:
        convtr = {i for i, layer in enumerate(model.audio_encoder.decoder.layers)
                  if type(layer).__name__ == "EncodecConvTranspose1d"}
        codec_state = audiocraft_codec_state(
            {k[len("audio_encoder."):]: v for k, v in sd.items() if k.startswith("audio_encoder.")}, convtr)
        torch.save({"best_state": codec_state, "xp.cfg": xp, "version": "1.0", "exported": True},
                   folder / "compression_state_dict.bin")
    return folder


def save_t5(model, tok, folder: Path) -> Path:
    """The text encoder of a tiny MusicGen as a standalone T5 repo (what audiocraft loads by name)."""
    from transformers import T5EncoderModel

    t5 = T5EncoderModel(model.config.text_encoder)
    t5.load_state_dict(model.text_encoder.state_dict())
    t5.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def hub_cache_entry(cache: Path, repo_id: str, src: Path, commit: str = "0" * 40) -> Path:
    """Place `src`'s files in the huggingface_hub cache layout (models--org--name/snapshots/<commit>, refs/main)."""
    import shutil

    root = cache / ("models--" + repo_id.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def write_wav(path: Path, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    """audio [C, N] -> WAV."""
    sf.write(str(path), np.ascontiguousarray(audio.T), sr, subtype=subtype)
    return path


def offline_take(model, wav_path: str, rate: int, channel: int = 0) -> np.ndarray:
    """A daemon take rebuilt offline from its files: decode the whole codes file (prompt frames, then new ones) in
    one pass, drop the prompt's samples, resample to the device rate in one call -> [N] (of `channel`)."""
    import json

    import soxr

    stem = wav_path[: -len(".wav")]
    meta = json.loads(Path(stem + ".json").read_text())
    codes = torch.from_numpy(np.load(stem + ".codes.npy").astype(np.int64))[None]  # [1, K, P + T]
    pcm = model.decode(codes)[0, channel].numpy()  # [N] at the model rate
    pcm = pcm[meta["prompt_frames"] * model.hop_length :]
    return soxr.resample(pcm, model.sample_rate, rate, quality="HQ")


def start_engine(model, takes: Path, make_transport, allowed: tuple = (), rate: int = 48000, **cfg):
    """A warmed-up engine on the no-device clock (`--audio-device none`) and the transport `make_transport(engine)`
    builds for it, both running -> (engine, transport). Close the transport, then the engine. `set model=` loads
    on the CPU in float32."""
    from segue.daemon.audio_io import NullAudio
    from segue.daemon.engine import Engine
    from segue.daemon.session import EngineConfig
    from segue.models.loading.builder import load_model

    transports = []
    engine = Engine(model, NullAudio(rate, 2, 256), EngineConfig(takes, allowed, **cfg),
                    emit=lambda ev: transports and transports[0].event(ev), load=load_model)
    engine.warm_up(0.2)
    transports.append(make_transport(engine))
    engine.start()
    transports[0].start()
    return engine, transports[0]


def wait_until(predicate, timeout: float, what: str):
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` s naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
