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


def test_demo_melody_takes_a_melody():
    """`--model demo-melody`: the demo's codec and T5 with a MusicGen-Melody LM (no files), for the daemon."""
    from segue.models.generation import Take

    model, plain = load_model("demo-melody"), load_model("demo")
    assert model.takes_melody and not plain.takes_melody and model.info.kind == "musicgen-melody"
    assert model.lm.cfg.chroma_length == 235 and torch.equal(model.codec.quantizer.codebooks,
                                                              plain.codec.quantizer.codebooks)
    t = torch.arange(32000) / 32000
    melody = model.melody_from_audio(torch.sin(2 * torch.pi * 440 * t)[None] * 0.3)
    take = Take(model, "anything", None, 20, SamplingParams(seed=1), melody=melody)
    audio = torch.cat([torch.from_numpy(c) for c in take], -1)
    assert audio.shape == (1, 20 * 640) and take.new_codes().max() < 2048
