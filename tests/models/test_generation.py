"""A take yields only the new audio, decoded in context, with the exact length."""

import numpy as np
import pytest
import torch

from segue.models.errors import RequestError
from segue.models.generation import Take, frames_for
from segue.models.lm.config import SamplingParams
from segue.models.loading.builder import load_model


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
