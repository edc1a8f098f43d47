"""Tiny members of the family saved in their published layouts, for tests that run the daemon on them: a stereo
MusicGen (transformers layout) and an AudioGen-shaped model (audiocraft export: 16 kHz codec, 10 s segments)."""

from pathlib import Path

import torch

import support


def stereo_musicgen(folder: Path) -> Path:
    """facebook/musicgen-stereo-* shape: 8 codebooks (L/R interleaved), delays [0,0,1,1,2,2,3,3], 32 kHz codec."""
    model, tok = support.hf_musicgen(stereo=True, seed=1)
    return support.save_musicgen(model, tok, folder)


def mono_musicgen(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    model, tok = support.hf_musicgen(seed=seed, layers=layers)
    return support.save_musicgen(model, tok, folder)


def hf_audiogen():
    """(transformers model, tokenizer) of the facebook/audiogen-medium shape (narrow): a 16 kHz codec with hop 320,
    random codebooks and token embeddings spread wide enough that sampling is not uniform."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    torch.manual_seed(3)
    tok = support.char_tokenizer()
    t5 = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=support.hf_encodec_config("16k").to_dict(),
                         decoder=MusicgenDecoderConfig(vocab_size=2048, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, ffn_dim=64).to_dict())
    hf = MusicgenForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        support.init_codebooks(hf.audio_encoder, 3)
        for name, p in hf.decoder.named_parameters():
            if "embed_tokens" in name or "lm_heads" in name:
                p.normal_(0, 0.5)
    return hf, tok


def audiogen(folder: Path, hf=None) -> Path:
    """facebook/audiogen-medium shape: `hf` (model, tokenizer; default `hf_audiogen()`) exported in the audiocraft
    layout with its solver name, constant padding and 10 s training segments; its T5 saved beside it and named by
    path in xp.cfg."""
    hf, tok = hf or hf_audiogen()
    t5_folder = support.save_t5(hf, tok, folder.parent / (folder.name + "-t5"))
    return support.export_audiocraft(hf, tok, folder, t5_name=str(t5_folder), solver="audiogen/audiogen_base_16khz",
                                     duration=10.0)


def wide_musicgen(folder: Path, width: int = 512, layers: int = 8) -> Path:
    """A MusicGen whose weights take ~170 MB in float32 (for memory tests): tiny T5 and codec, a wide decoder."""
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    torch.manual_seed(5)
    tok = support.char_tokenizer()
    t5 = T5Config(vocab_size=len(tok), d_model=24, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=support.hf_encodec_config("32k").to_dict(),
                         decoder=MusicgenDecoderConfig(vocab_size=2048, hidden_size=width, num_hidden_layers=layers,
                                                       num_attention_heads=8, ffn_dim=4 * width).to_dict())
    return support.save_musicgen(MusicgenForConditionalGeneration(cfg).eval(), tok, folder)
