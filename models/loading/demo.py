"""The built-in `demo` model: a tiny random-weight MusicGen + codec + T5, built from a seed, no files, no network.

It has the real architecture and data path (32 kHz, hop 640, 4 x 2048 codebooks, delay pattern, CFG, T5
cross-attention), so every command runs anywhere; with random weights it makes noise, not music. `demo-melody` is
the same with MusicGen-Melody's conditioning (235 chroma frames and the text prepended, no cross-attention).
"""

from __future__ import annotations

import dataclasses
import string

import torch

from segue.models.codec.config import CodecConfig
from segue.models.codec.conv import LSTM, Conv1d, ConvTranspose1d
from segue.models.codec.encodec import Encodec
from segue.models.lm.conditioning import TextEncoder
from segue.models.lm.config import LMConfig
from segue.models.lm.model import MusicGenLM

DEMO_SEED = 1234
DEMO_CODEC = CodecConfig(sample_rate=32000, ratios=(8, 5, 4, 4), n_filters=4, dimension=16, lstm_layers=1,
                         pad_mode="reflect", n_q=4, bins=2048)
DEMO_LM = LMConfig(dim=64, num_heads=4, num_layers=2, ffn_dim=256, n_q=4, card=2048, delays=(0, 1, 2, 3),
                   text_dim=32, max_duration=30.0, frame_rate=50.0)
DEMO_MELODY_LM = dataclasses.replace(DEMO_LM, cross_attention=False, chroma_length=235)
DEMO_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8)


def char_tokenizer():
    """A T5 (Unigram) tokenizer over single characters, built in memory."""
    from transformers import T5Tokenizer

    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -4.0)]
    vocab += [("▁" + c, -2.0) for c in chars] + [(c, -3.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _normal_(t: torch.Tensor, std: float, gen: torch.Generator) -> None:
    t.copy_(torch.randn(t.shape, generator=gen) * std)


@torch.no_grad()
def random_codec(cfg: CodecConfig, seed: int) -> Encodec:
    """Random codec weights with sensible levels: diverse codes on noise, decoded audio around -20 dBFS."""
    gen = torch.Generator().manual_seed(seed)
    codec = Encodec(cfg).eval()
    for module in codec.modules():
        if isinstance(module, Conv1d):
            w = module.conv.weight
            _normal_(w, (w.shape[1] * w.shape[2]) ** -0.5, gen)
            module.conv.bias.zero_()
        elif isinstance(module, ConvTranspose1d):
            w = module.convtr.weight
            _normal_(w, (w.shape[0] * w.shape[2] / module.stride) ** -0.5, gen)
            module.convtr.bias.zero_()
        elif isinstance(module, LSTM):
            for p in module.lstm.parameters():
                _normal_(p, module.out_channels**-0.5, gen)
    # Codebooks drawn from the latents of noise (as k-means initialisation would), residual after residual.
    probe = torch.randn(1, cfg.channels, cfg.hop_length * 256, generator=gen) * 0.1
    residual = codec.encoder(probe)[0].t()  # [T, D]
    for k in range(cfg.n_q):
        pick = torch.randint(0, residual.shape[0], (cfg.bins,), generator=gen)
        noise = torch.randn(cfg.bins, cfg.dimension, generator=gen) * residual.std() * 0.5
        codec.quantizer.codebooks[k].copy_(residual[pick] + noise)
        codes = codec.quantizer.encode(residual.t()[None], 1)
        residual = residual - codec.quantizer.codebooks[k][codes[0, 0]]
    # Output level: scale the last conv so random codes decode at an RMS of 0.1.
    codes = torch.randint(0, cfg.bins, (1, cfg.n_q, 50), generator=gen)
    rms = codec.decode(codes).pow(2).mean().sqrt().clamp(min=1e-6)
    last = codec.decoder.layers[-1].conv
    last.weight.mul_(0.1 / rms)
    return codec


@torch.no_grad()
def random_lm(cfg: LMConfig, seed: int) -> MusicGenLM:
    gen = torch.Generator().manual_seed(seed)
    lm = MusicGenLM(cfg).eval()
    for name, p in lm.named_parameters():
        if name.endswith("norm1.weight") or ".norm" in name or name.startswith("out_norm"):
            continue  # LayerNorms keep weight 1, bias 0
        fan_in = p.shape[-1]
        _normal_(p, 1.0 if name == "emb" else fan_in**-0.5, gen)
    return lm


def random_text_encoder(t5: dict, seed: int) -> TextEncoder:
    from transformers import T5Config, T5EncoderModel

    tokenizer = char_tokenizer()
    cfg = T5Config(vocab_size=len(tokenizer), **t5)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = T5EncoderModel(cfg)
    return TextEncoder(tokenizer, encoder)


def build_demo(seed: int = DEMO_SEED, melody: bool = False) -> tuple[Encodec, MusicGenLM, TextEncoder]:
    lm = random_lm(DEMO_MELODY_LM if melody else DEMO_LM, seed + 1)
    return random_codec(DEMO_CODEC, seed), lm, random_text_encoder(DEMO_T5, seed + 2)
