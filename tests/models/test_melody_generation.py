"""Takes that follow a melody: the public API the daemon uses (MusicGen.takes_melody, melody_from_audio,
Take(melody=...), retry from a snapshot, pump_takes), and what it refuses."""

import numpy as np
import pytest
import torch

import near_ties
from segue.models.errors import RequestError
from segue.models.generation import Take
from segue.models.lm.config import LMConfig, SamplingParams
from segue.models.loading.demo import DEMO_CODEC, DEMO_T5, random_codec, random_lm, random_text_encoder
from segue.models.melody import Melody
from segue.models.musicgen import ModelInfo, MusicGen

SHORT_MELODY = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, n_q=4, card=2048, text_dim=32,
                        max_duration=2.0, frame_rate=50.0, cross_attention=False, chroma_length=16)


@pytest.fixture(scope="module")
def short_melody():
    return MusicGen(random_codec(DEMO_CODEC, 1), random_lm(SHORT_MELODY, 2), random_text_encoder(DEMO_T5, 3),
                    ModelInfo("short-melody", None, "demo", "musicgen-melody"))


def sine(freq: float, seconds: float, sr: int = 32000, channels: int = 2) -> torch.Tensor:
    t = torch.arange(int(seconds * sr)) / sr
    return (0.4 * torch.sin(2 * torch.pi * freq * t)).expand(channels, -1).clone()  # [C, N]


def collect(take):
    return np.concatenate(list(take), axis=1)


def test_melody_take_is_decoded_in_context_and_retried_without_recomputing(tiny_melody_segue):
    model = tiny_melody_segue
    assert model.takes_melody and model.info.kind == "musicgen-melody"
    melody = model.melody_from_audio(sine(392.0, 1.0))  # G, stereo mixed to mono
    assert isinstance(melody, Melody) and melody.chroma.shape == (1, 8, 12) and melody.separation == "full mix"
    prompt = model.encode(torch.randn(1, 1, 640 * 6) * 0.2)
    take = Take(model, "bass", prompt, 20, SamplingParams(seed=4), chunk_frames=7, melody=melody)
    snap = take.snapshot()
    audio = collect(take)
    new = torch.from_numpy(take.new_codes())[None]
    full = model.decode(torch.cat([prompt, new], -1))[0, :, 6 * 640 :].numpy()
    assert audio.shape == (1, 20 * 640) and np.abs(audio - full).max() <= 1e-5
    retry = Take.from_snapshot(model, snap, 20, chunk_frames=7)  # the daemon's instant retry
    assert retry.stream.chroma is take.stream.chroma  # kept from the snapshot, not computed again
    assert np.array_equal(collect(retry), audio) and np.array_equal(retry.new_codes(), take.new_codes())
    other = Take.from_snapshot(model, snap, 20, seed=99, chunk_frames=7)
    assert not np.array_equal(collect(other), audio)
    plain = Take(model, "bass", prompt, 20, SamplingParams(seed=4), chunk_frames=7)  # no melody: the null one
    collect(plain)
    assert not np.array_equal(plain.new_codes(), take.new_codes())


def test_a_melody_for_a_model_that_takes_none(tiny_segue, tiny_melody_segue):
    melody = tiny_melody_segue.melody_from_audio(sine(440.0, 0.5))
    assert not tiny_segue.takes_melody
    with pytest.raises(RequestError, match="takes no melody.*musicgen-melody"):
        Take(tiny_segue, "x", None, 5, melody=melody)
    with pytest.raises(RequestError, match="musicgen-melody"):
        tiny_segue.melody_from_audio(sine(440.0, 0.5))


def test_a_melody_of_the_wrong_shape_is_a_request_error(tiny_melody_segue):
    for chroma in (torch.zeros(1, 4, 11), torch.zeros(2, 4, 12), torch.zeros(1, 0, 12)):
        with pytest.raises(RequestError, match=r"one-hot frames \[1, T, 12\]"):
            Take(tiny_melody_segue, "x", None, 5, melody=Melody(chroma, "full mix"))


def _takes(model, prompt, melody):
    """A prompted melody take, a short one without melody, an endless melody take that outlives the context."""
    return [Take(model, "bass", prompt, 30, SamplingParams(seed=4), chunk_frames=7, melody=melody),
            Take(model, None, None, 9, SamplingParams(seed=5), chunk_frames=4),
            Take(model, "pads", None, None, SamplingParams(seed=6), chunk_frames=10, melody=melody)]


def test_pump_takes_equals_pumping_each_alone(short_melody):
    model = short_melody
    melody = model.melody_from_audio(sine(261.63, 1.5, channels=1))
    prompt = model.encode(torch.randn(1, 1, 640 * 12) * 0.2)
    alone, together = _takes(model, prompt, melody), _takes(model, prompt, melody)
    near_ties.pumped_together_equals_alone(alone, together, 3 * SHORT_MELODY.context)
    assert together[0].done and together[1].done and not together[2].done
    assert together[2].stream.base > 0  # the endless take re-prompted (prefix included) while batched


def test_a_reused_stream_gives_the_melody_take_a_fresh_one_would(short_melody):
    m = short_melody
    melody = m.melody_from_audio(sine(329.63, 1.0))
    old = Take(m, "old", None, None, SamplingParams(seed=9), chunk_frames=4, melody=melody)
    for _ in range(3 * m.lm.cfg.context // 2):  # far enough to have used the second cache
        old.pump()
    fresh = Take(m, "new", None, 12, SamplingParams(seed=3), chunk_frames=4, melody=melody)
    reused = Take(m, "new", None, 12, SamplingParams(seed=3), chunk_frames=4, melody=melody, stream=old.stream)
    np.testing.assert_allclose(collect(reused), collect(fresh), atol=1e-6)
    np.testing.assert_array_equal(reused.new_codes(), fresh.new_codes())
