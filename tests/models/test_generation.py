"""A take yields only the new audio, decoded in context, with the exact length."""

import numpy as np
import pytest
import torch

import near_ties
from segue.models.errors import RequestError
from segue.models.generation import Take, frames_for, prompt_codes, pump_takes
from segue.models.lm.config import LMConfig, SamplingParams
from segue.models.loading.builder import load_model
from segue.models.loading.demo import DEMO_CODEC, DEMO_T5, random_codec, random_lm, random_text_encoder
from segue.models.musicgen import ModelInfo, MusicGen

SHORT = LMConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=64, n_q=4, card=2048, text_dim=32, max_duration=2.0,
                 frame_rate=50.0)  # context of 104 positions: an endless take re-prompts every ~50 steps


@pytest.fixture(scope="module")
def short_model():
    return MusicGen(random_codec(DEMO_CODEC, 1), random_lm(SHORT, 2), random_text_encoder(DEMO_T5, 3),
                    ModelInfo("short", None, "demo", "musicgen"))


def collect(take):
    return np.concatenate(list(take), axis=1)


def test_continuation_audio_is_the_tail_of_one_pass_decode(tiny_segue):
    model = tiny_segue
    prompt = model.encode(torch.randn(1, 1, 640 * 12) * 0.2)
    take = Take(model, "bass", prompt, 30, SamplingParams(seed=4), chunk_frames=7)
    audio = collect(take)
    new = torch.from_numpy(take.new_codes())[None]
    assert audio.shape == (1, 30 * 640) and new.shape == (1, 4, 30)
    full = model.decode(torch.cat([prompt, new], -1))[0, :, 12 * 640 :].numpy()
    assert np.abs(audio - full).max() <= 1e-5


def test_text_only_take(tiny_segue):
    take = Take(tiny_segue, "pads", None, 17, SamplingParams(seed=1), chunk_frames=4)
    audio = collect(take)
    full = tiny_segue.decode(torch.from_numpy(take.new_codes())[None])[0].numpy()
    assert audio.shape == (1, 17 * 640) and np.abs(audio - full).max() <= 1e-5


def test_stereo_take_has_two_channels(tiny_stereo):
    model = load_model(str(tiny_stereo[2]))
    take = Take(model, "strings", model.encode(torch.randn(1, 2, 640 * 4) * 0.2), 10, SamplingParams(seed=1))
    audio = collect(take)
    assert audio.shape == (2, 10 * 640) and take.new_codes().shape == (8, 10)


@pytest.mark.parametrize("seconds, message", [(0, "positive"), (-2, "positive"), (1e6, "limit"), (0.001, "one frame"),
                                              (float("nan"), "positive")])
def test_durations_out_of_range(tiny_segue, seconds, message):
    with pytest.raises(RequestError, match=message):
        frames_for(tiny_segue, seconds)


def test_text_prompt_too_long(tiny_segue):
    with pytest.raises(RequestError, match="256"):
        Take(tiny_segue, "x" * 400, None, 5)


def test_take_snapshot_replays_and_retries_without_reencoding(tiny_segue):
    model = tiny_segue
    prompt = model.encode(torch.randn(1, 1, 640 * 8) * 0.2)
    take = Take(model, "bass", prompt, 20, SamplingParams(seed=5), chunk_frames=6)
    snap = take.snapshot()  # the prefilled prompt: what instant retry restarts from
    first = collect(take)
    take.restore(snap)
    assert np.array_equal(collect(take), first)  # same seed: the same take, sample for sample
    take.restore(snap, seed=6)
    retry = collect(take)
    assert retry.shape == first.shape and not np.array_equal(retry, first)
    assert take.new_codes().shape == (4, 20)


def _takes(model, prompt):
    """A prompted take, a short one that finishes first, an endless one that outlives the context."""
    return [Take(model, "bass", prompt, 30, SamplingParams(seed=4), chunk_frames=7),
            Take(model, None, None, 9, SamplingParams(seed=5), chunk_frames=4),
            Take(model, "pads", None, None, SamplingParams(seed=6), chunk_frames=10)]


def test_pump_takes_equals_pumping_each_alone(short_model):
    model = short_model
    prompt = model.encode(torch.randn(1, 1, 640 * 12) * 0.2)
    alone, together = _takes(model, prompt), _takes(model, prompt)
    got = near_ties.pumped_together_equals_alone(alone, together, 3 * SHORT.context)
    assert together[0].done and together[1].done and not together[2].done
    assert together[2].stream.base > 0  # the endless take re-prompted while pumped with the others
    assert sum(p.shape[1] for p in got[0] if p is not None) == 30 * 640
    assert sum(p.shape[1] for p in got[1] if p is not None) == 9 * 640


def test_pump_takes_decodes_what_a_finished_stream_left(short_model):
    """A take whose LM stream is already done still yields its last chunk; a done take yields None."""
    outs = []
    for batched in (False, True):
        left = Take(short_model, "x", None, 12, SamplingParams(seed=1), chunk_frames=50)
        other = Take(short_model, "y", None, 20, SamplingParams(seed=2))
        while not left.stream.done:
            left.stream.step()
        pcm = pump_takes([left, other])[0] if batched else left.pump()
        assert left.done and pcm.shape == (1, 12 * 640)
        assert (pump_takes([left, other])[0] if batched else left.pump()) is None
        outs.append(pcm)
    assert np.array_equal(outs[0], outs[1])


def test_pump_takes_refuses_bad_batches(short_model, tiny_segue):
    a = Take(short_model, "x", None, 5, SamplingParams(seed=1))
    with pytest.raises(ValueError, match="twice"):
        pump_takes([a, a])
    with pytest.raises(ValueError, match="different LMs"):
        pump_takes([a, Take(tiny_segue, "x", None, 5, SamplingParams(seed=1))])
    assert pump_takes([]) == []


def test_a_reused_stream_gives_the_take_a_fresh_one_would(short_model):
    """The daemon keeps finished takes' streams (their KV caches) for the next takes: nothing of the old take
    leaks into the new one, endless re-prompting included."""
    m = short_model
    old = Take(m, "old", None, None, SamplingParams(seed=9), chunk_frames=4)
    for _ in range(3 * m.lm.cfg.context // 4):  # far enough to have used the second cache
        old.pump()
    prompt = prompt_codes(m, torch.randn(m.channels, m.hop_length * 6) * 0.1)
    fresh = Take(m, "new", prompt, 12, SamplingParams(seed=3), chunk_frames=4)
    reused = Take(m, "new", prompt, 12, SamplingParams(seed=3), chunk_frames=4, stream=old.stream)
    np.testing.assert_allclose(collect(reused), collect(fresh), atol=1e-6)
    np.testing.assert_array_equal(reused.new_codes(), fresh.new_codes())
    unseeded = Take(m, "new", None, 4, SamplingParams(), stream=fresh.stream)
    assert unseeded.seed != 3  # a reused stream never carries the last take's seed over
    with pytest.raises(ValueError, match="1-item stream"):
        Take(m, "new", None, 4, SamplingParams(), stream=m.stream(2))
