"""Audio files: resampled with soxr, channels mixed, and bad files refused with a sentence."""

import numpy as np
import pytest
import soundfile as sf

import support
from segue.models.audio import AudioWriter, read_audio, to_model_audio, write_audio
from segue.models.errors import AudioInputError


def test_stereo_44k1_becomes_mono_32k(tmp_path):
    t = np.arange(44100) / 44100
    left, right = np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 440 * t + 0.5)
    path = support.write_wav(tmp_path / "in.wav", np.stack([left, right]).astype(np.float32), 44100, "PCM_16")
    data, sr = read_audio(path)
    assert sr == 44100 and data.shape == (2, 44100)
    out = to_model_audio(data, sr, 32000, 1)
    assert out.shape == (1, 32000)
    expected = np.sin(2 * np.pi * 440 * np.arange(32000) / 32000 + 0.25) * np.cos(0.25)  # mean of the two
    assert np.abs(out[0, 1000:-1000].numpy() - expected[1000:-1000]).max() < 2e-3


def test_mono_is_duplicated_for_a_stereo_model():
    data = np.random.default_rng(0).standard_normal((1, 800)).astype(np.float32)
    out = to_model_audio(data, 32000, 32000, 2)
    assert out.shape == (2, 800) and np.array_equal(out[0].numpy(), out[1].numpy())


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("folder", "is a folder"),
    ("text", "not an audio file"),
    ("empty", "no audio samples"),
    ("nan", "NaN or infinite"),
    ("inf", "NaN or infinite"),
])
def test_bad_audio_files(tmp_path, case, message):
    path = tmp_path / "x.wav"
    if case == "folder":
        path.mkdir()
    elif case == "text":
        path.write_text("this is not a wav file\n")
    elif case == "empty":
        support.write_wav(path, np.zeros((1, 0), np.float32), 32000)
    elif case in ("nan", "inf"):
        x = np.zeros((1, 100), np.float32)
        x[0, 50] = np.nan if case == "nan" else np.inf
        support.write_wav(path, x, 32000)
    with pytest.raises(AudioInputError, match=message):
        read_audio(path)


def test_chunked_writer_equals_one_write(tmp_path):
    x = np.random.default_rng(1).standard_normal((2, 5000)).astype(np.float32)
    write_audio(tmp_path / "a.wav", x, 32000)
    with AudioWriter(tmp_path / "b.wav", 32000, 2) as w:
        for i in range(0, 5000, 777):
            w.write(x[:, i : i + 777])
    a, sr = sf.read(str(tmp_path / "a.wav"), dtype="float32")
    b, _ = sf.read(str(tmp_path / "b.wav"), dtype="float32")
    assert sr == 32000 and np.array_equal(a, b) and np.array_equal(a.T, x)
