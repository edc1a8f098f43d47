"""The built-in demo model: deterministic, the real data path, sane levels."""

import torch

import support
from segue.models.lm.config import SamplingParams
from segue.models.loading.builder import load_codec, load_model


def test_demo_is_deterministic_and_musicgen_shaped():
    a, b = load_model("demo"), load_model("demo")
    for (ka, va), (kb, vb) in zip(a.lm.state_dict().items(), b.lm.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.codec.quantizer.codebooks, b.codec.quantizer.codebooks)
    assert a.sample_rate == 32000 and a.hop_length == 640 and a.lm.cfg.n_q == 4 and a.lm.cfg.card == 2048
    assert a.codec.decoder_lookahead_frames() == 4
    x = torch.randn(1, 1, 32000) * 0.1
    assert a.codec.encode(x).unique().numel() > 50  # random, but the codes are used


def test_demo_generates_audio_at_a_sane_level():
    model = load_model("demo")
    audio = model.decode(support.generate_frames(model, ["anything"], 50, sampling=SamplingParams(seed=1)))
    rms = audio.pow(2).mean().sqrt()
    assert audio.shape == (1, 1, 32000) and 0.01 < rms < 0.5 and audio.abs().max() < 4


def test_demo_codec_alone_is_the_same_codec():
    assert torch.equal(load_codec("demo").codec.quantizer.codebooks, load_model("demo").codec.quantizer.codebooks)
