"""Where a continuation's prompt comes from: the live input's last bars, cut on the song's grid and encoded as whole
codec frames that end exactly on the bar line (real rings, the demo model's codec)."""

import numpy as np
import pytest
import torch

from segue.daemon.audio_io import Audio
from segue.daemon.clock import Grid
from segue.daemon.sources import encode_prompt, live_span, prompt_audio
from segue.daemon.vocabulary import LiveSource, PcmSource
from segue.models.audio import to_model_audio

RATE = 48000


@pytest.fixture
def played():
    """An audio side whose input ring holds 12 s of noise, as if played live."""
    audio = Audio(RATE, 1, 2, 256)
    x = np.random.default_rng(0).standard_normal((12 * RATE, 1)).astype(np.float32) * 0.1
    for i in range(0, len(x), 256):
        audio.input.write(x[i : i + 256])
    return audio


@pytest.mark.parametrize("bars", [1, 2, 3])
def test_a_live_bar_prompt_ends_on_its_bar_line_in_whole_frames(demo, played, bars):
    """At 133 bpm a bar is 90.2 frames: the prompt is the newest whole frames ending on the bar line (the codec
    used to pad the last frame, so the context ran up to 20 ms past the bar line where the take then starts)."""
    grid = Grid(RATE, bpm=133.0, beats_per_bar=4, anchor=1234.5)
    start, stop = live_span(played, grid, LiveSource(bars=bars), 10.0, None)
    assert stop == grid.last_bar(played.input.end) and stop - start == grid.bars(bars)
    pcm, sr, desc = prompt_audio(LiveSource(bars=bars), audio=played, grid=grid, take_audio=None, folders=(),
                                 default_seconds=10.0, default_bars=None)
    codes = encode_prompt(demo, pcm, sr)  # [1, K, T]
    heard = to_model_audio(pcm, sr, demo.sample_rate, demo.channels)  # [C, n] at 32 kHz
    n, hop = heard.shape[-1], demo.hop_length
    assert n % hop  # the bars are not whole frames at this tempo
    assert codes.shape[-1] == n // hop
    # Exactly the frames of the newest n - n % hop samples: the context ends on the prompt's last sample.
    assert torch.equal(codes, demo.encode(heard[None, :, n % hop :]))


def test_a_prompt_longer_than_the_context_keeps_its_newest_whole_frames(demo):
    from segue.models.lm.stream import max_prompt_frames

    limit = max_prompt_frames(demo.lm.cfg)
    pcm = np.random.default_rng(1).standard_normal((1, (limit + 7) * 960 + 333)).astype(np.float32) * 0.1
    src = PcmSource(pcm, RATE)
    got, sr, _ = prompt_audio(src, audio=None, grid=Grid(RATE), take_audio=None, folders=(), default_seconds=10.0,
                              default_bars=None)
    codes = encode_prompt(demo, got, sr)
    assert codes.shape[-1] == limit
    # The same frames as encoding the whole input's newest part, up to the resampler's edge in the input that was
    # cut away first (different lengths: compared by agreement, not bit for bit).
    heard = to_model_audio(pcm, RATE, demo.sample_rate, demo.channels)
    ref = demo.encode(heard[None, :, -limit * demo.hop_length :])
    assert (codes == ref).float().mean() > 0.95


def test_a_prompt_shorter_than_a_frame_is_refused_with_its_length(demo):
    from segue.daemon.vocabulary import CommandError

    with pytest.raises(CommandError) as e:
        encode_prompt(demo, np.zeros((1, 500), np.float32), RATE)
    assert e.value.code == "bad_audio" and "10.4 ms" in e.value.message and "20 ms" in e.value.message


def test_a_path_that_cannot_be_resolved_is_refused_not_internal(tmp_path):
    """A loop of links raises inside `Path.resolve()`: it is `path_not_allowed`, with the folders named."""
    from segue.daemon.sources import allowed_path
    from segue.daemon.vocabulary import CommandError

    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(CommandError) as e:
        allowed_path(str(tmp_path / "a"), (tmp_path,))
    assert e.value.code == "path_not_allowed" and str(tmp_path) in e.value.message
