"""Chroma extraction against an independent float64 numpy computation (transformers' own filter bank, numpy FFT
frames: the feature extractor itself needs torchaudio), and pitch classes that must come out of known signals."""

import numpy as np
import pytest
import torch

from segue.models.errors import AudioInputError
from segue.models.lm.chroma import ChromaConfig, chroma_filter_bank, chroma_from_audio
from segue.models.melody import melody_from_audio

SR, N_FFT, HOP = 32000, 16384, 4096
C, E, G, A = 0, 4, 7, 9  # pitch classes, C first (as the filter bank's rows)


def assert_same_classes(chroma: np.ndarray, wav: np.ndarray) -> None:
    """One-hot chroma [T, 12] computed another way (torch's FFT and GEMMs, in blocks) is the one transformers'
    MusicgenMelodyFeatureExtractor computes (here in numpy float64) from `wav`, except in a frame whose two
    strongest classes are a float64 near tie: within 1e-9 of each other, relative (float64's own rounding through
    the FFT and the filter bank is ~1e-15)."""
    norm = reference_energies(wav)  # [12, T]
    differ = (chroma != np.eye(12)[norm.argmax(axis=0)]).any(-1)
    top2 = np.sort(norm[:, differ], axis=0)[-2:]  # [2, frames that differ]
    assert np.all(top2[1] - top2[0] <= 1e-9 * np.abs(top2[1])), f"frames {np.flatnonzero(differ)} differ"


def reference_energies(wav: np.ndarray) -> np.ndarray:
    """The reference's class energies [12, T], each frame divided by its largest (inf-norm), in numpy float64."""
    from transformers.audio_utils import chroma_filter_bank as hf_bank

    x = wav.astype(np.float64)
    if len(x) < N_FFT:  # centred zero padding up to one window
        pad = N_FFT - len(x)
        x = np.pad(x, (pad // 2, pad // 2 + pad % 2))
    x = np.pad(x, N_FFT // 2, mode="reflect")  # torchaudio Spectrogram(center=True)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
    frames = np.stack([x[i : i + N_FFT] * window for i in range(0, len(x) - N_FFT + 1, HOP)])
    power = np.abs(np.fft.rfft(frames, axis=-1)) ** 2 / np.sum(window**2)  # power 2, normalized=True
    raw = hf_bank(num_frequency_bins=N_FFT, num_chroma=12, sampling_rate=SR, tuning=0) @ power.T  # [12, T]
    return raw / np.maximum(np.abs(raw).max(axis=0, keepdims=True), 1e-6)  # inf-norm over the classes


def tone(freq: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def ours(wav: np.ndarray, **kwargs) -> np.ndarray:
    out = chroma_from_audio(torch.from_numpy(wav), ChromaConfig(), **kwargs)
    assert out.dtype == torch.float32 and out.shape[0] == 1
    return out[0].numpy()


def test_filter_bank_is_transformers_one():
    from transformers.audio_utils import chroma_filter_bank as hf_bank

    ref = hf_bank(num_frequency_bins=N_FFT, num_chroma=12, sampling_rate=SR, tuning=0)
    np.testing.assert_allclose(chroma_filter_bank(SR, N_FFT, 12), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("freq, cls", [(261.63, C), (329.63, E), (392.0, G), (440.0, A), (185.0, 6), (1760.0, A)])
def test_a_tone_gives_its_pitch_class(freq, cls):
    chroma = ours(tone(freq, 1.5))
    assert chroma.shape == (1 + int(1.5 * SR) // HOP, 12)
    assert (chroma.argmax(-1) == cls).all()
    assert_same_classes(chroma, tone(freq, 1.5))


def test_c_major_arpeggio_follows_the_notes():
    notes = [(261.63, C), (329.63, E), (392.0, G), (523.25, C)]
    seg = 8 * HOP  # 8 chroma frames per note (1.024 s)
    wav = np.concatenate([tone(f, seg / SR) for f, _ in notes])
    chroma = ours(wav)
    assert_same_classes(chroma, wav)
    classes = chroma.argmax(-1)
    for i, (_, cls) in enumerate(notes):
        inside = classes[8 * i + 2 : 8 * i + 7]  # frames whose window lies within the note (edges blend)
        assert (inside == cls).all(), (i, classes)


def test_silence_is_bin_zero_and_short_input_is_padded():
    silent = ours(np.zeros(5 * HOP + 5, np.float32))
    assert silent.shape == (6, 12) and (silent.argmax(-1) == 0).all() and silent.sum() == 6
    short = tone(440.0, 5000 / SR)  # shorter than one window: zero-padded to 16384, centred
    chroma = ours(short)
    assert chroma.shape == (1 + N_FFT // HOP, 12)
    assert_same_classes(chroma, short)
    assert chroma.argmax(-1)[2] == A  # the middle frame sees the tone
    one = ours(np.zeros(1, np.float32))  # a single sample: audiocraft's null melody
    assert one.shape == (5, 12) and (one.argmax(-1) == 0).all()


def test_a_mix_matches_the_reference_and_blocks_do_not_matter():
    rng = np.random.default_rng(0)
    wav = (tone(196.0, 3.0) + tone(293.66, 3.0, 0.3) + 0.05 * rng.standard_normal(3 * SR)).astype(np.float32)
    chroma = ours(wav)
    assert_same_classes(chroma, wav)
    assert_same_classes(ours(wav, block=5), wav)  # bounded memory: frames in blocks


def test_melody_from_audio_mixes_channels_to_mono():
    left, right = tone(440.0, 2.0), tone(261.63, 2.0, 0.1)
    melody = melody_from_audio(torch.from_numpy(np.stack([left, right])), ChromaConfig())
    assert melody.chroma.shape == (1, 1 + 2 * SR // HOP, 12) and melody.separation.startswith("full mix")
    assert_same_classes(melody.chroma[0].numpy(), (left + right) / 2)
    assert melody.frame_rate == SR / HOP and abs(melody.seconds - 2.0) < 0.2


@pytest.mark.parametrize("audio, message", [
    (torch.zeros(1, 0), "samples"),
    (torch.zeros(100), "channels, samples"),
    (torch.full((1, 100), float("nan")), "NaN"),
])
def test_bad_melody_audio(audio, message):
    with pytest.raises(AudioInputError, match=message):
        melody_from_audio(audio, ChromaConfig())
