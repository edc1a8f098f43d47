"""Tiny MusicGen-Melody models built with transformers, and transformers' own melody generation as the reference
(including a cache-free greedy loop: see `hf_melody_greedy_codes`)."""

from __future__ import annotations

import torch

from support import SPECIAL, codes_to_codec, hf_encodec_config, init_codebooks
from segue.models.loading.demo import char_tokenizer


def hf_musicgen_melody(stereo: bool = False, seed: int = 0, layers: int = 2, chroma_length: int = 235):
    """A tiny MusicgenMelodyForConditionalGeneration with a character T5 tokenizer.

    Weights at realistic scales (fan-in, sharper queries/keys, a strong chroma projection): with transformers'
    0.02 init the last position attends almost uniformly over the 235-frame prefix and no melody changes a
    greedy token, which would make every melody test vacuous."""
    from transformers import (MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    torch.manual_seed(seed)
    tok = char_tokenizer()
    dec = MusicgenMelodyDecoderConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=layers,
                                      num_attention_heads=4, ffn_dim=64, num_codebooks=8 if stereo else 4,
                                      audio_channels=2 if stereo else 1)
    t5 = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    cfg = MusicgenMelodyConfig(text_encoder=t5.to_dict(), audio_encoder=hf_encodec_config("32k").to_dict(),
                               decoder=dec.to_dict(), chroma_length=chroma_length)
    model = MusicgenMelodyForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        init_codebooks(model.audio_encoder, seed)
        for name, p in model.decoder.named_parameters():
            if "embed_tokens" in name or "lm_heads" in name:
                p.normal_(0, 0.5)
            elif name.endswith("proj.weight") or ".fc" in name:
                sharp = 3.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                p.normal_(0, sharp * p.shape[-1] ** -0.5)
        model.audio_enc_to_dec_proj.weight.normal_(0, 1.0)
        model.enc_to_dec_proj.weight.normal_(0, 24**-0.5)
    gc = model.generation_config
    gc.decoder_start_token_id = gc.pad_token_id = gc.bos_token_id = SPECIAL
    return model, tok


def one_hot_chroma(classes) -> torch.Tensor:
    """Pitch-class indices [T] -> one-hot chroma [1, T, 12]."""
    idx = torch.as_tensor(classes, dtype=torch.long)
    return torch.nn.functional.one_hot(idx, 12).float()[None]


def hf_melody_conditioning(model, tok, texts, chroma: torch.Tensor | None, guidance: float = 3.0) -> torch.Tensor:
    """The prefix transformers' generate() builds ([chroma | text] for B conditional then B null rows when
    guidance > 1), through its own `_prepare_encoder_hidden_states_kwargs_for_generation`: [2B, P, dim]."""
    from transformers import GenerationConfig

    inputs = tok(texts, return_tensors="pt", padding=True)
    kwargs = {"attention_mask": inputs.attention_mask}
    if chroma is not None:
        kwargs["input_features"] = chroma
    with torch.no_grad():
        out = model._prepare_encoder_hidden_states_kwargs_for_generation(
            inputs.input_ids, kwargs, "input_ids", GenerationConfig(guidance_scale=guidance))
    return out["encoder_hidden_states"]


def hf_melody_greedy_codes(model, tok, texts, new_steps: int, chroma: torch.Tensor | None = None,
                           prompt: torch.Tensor | None = None, guidance: float = 3.0,
                           steps: list | None = None) -> torch.Tensor:
    """Codes [B, K, T] (prompt frames included) of transformers' greedy CFG generation for MusicGen-Melody, run
    WITHOUT the KV cache: the whole sequence (prefix + every column so far) through the decoder at each step.

    This is generate()'s algorithm with its own pieces (conditioning, build/apply_delay_pattern_mask,
    ClassifierFreeGuidanceLogitsProcessor, argmax), but immune to the cache path, where transformers 4.48 to 4.57+
    may ignore the melody (huggingface/transformers#45647). `steps`, when given, receives each column's
    (logits [2 * B * K, V], CFG scores [B * K, V]), for `near_ties.reference_draws`."""
    from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

    texts = [texts] if isinstance(texts, str) else list(texts)
    B, K = len(texts), model.decoder.num_codebooks
    states = hf_melody_conditioning(model, tok, texts, chroma, guidance)
    ids = torch.full((B * K, 1), SPECIAL, dtype=torch.long)
    if prompt is not None:
        ids = torch.cat([ids, prompt.reshape(B * K, -1)], -1)
    max_length = ids.shape[-1] + new_steps
    ids, pattern = model.decoder.build_delay_pattern_mask(ids, SPECIAL, max_length=max_length)
    cfg = ClassifierFreeGuidanceLogitsProcessor(guidance)
    with torch.no_grad():
        while ids.shape[-1] < max_length:
            ids = model.decoder.apply_delay_pattern_mask(ids, pattern)
            logits = model.decoder(input_ids=ids.repeat(2, 1), encoder_hidden_states=states,
                                   use_cache=False).logits[:, -1]  # [2 * B * K, V]
            scores = cfg(ids, logits)  # [B * K, V]
            if steps is not None:
                steps.append((logits.clone(), scores.clone()))
            ids = torch.cat([ids, scores.argmax(-1, keepdim=True)], -1)
    ids = model.decoder.apply_delay_pattern_mask(ids, pattern)
    return ids[ids != SPECIAL].reshape(B, K, -1)


def hf_melody_generate_codes(model, tok, texts, new_steps: int, chroma: torch.Tensor | None = None,
                             guidance: float = 3.0, use_cache: bool = True) -> torch.Tensor:
    """Codes [B, K, T] that transformers' own generate() hands to its codec for MusicGen-Melody."""
    inputs = tok([texts] if isinstance(texts, str) else list(texts), return_tensors="pt", padding=True)
    kwargs = dict(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask, do_sample=False,
                  guidance_scale=guidance, max_new_tokens=new_steps, use_cache=use_cache)
    if chroma is not None:
        kwargs["input_features"] = chroma
    return codes_to_codec(model, lambda: model.generate(**kwargs))
