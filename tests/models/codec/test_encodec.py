"""EnCodec against transformers' EncodecModel, and streaming against segue's own full pass."""

import random

import pytest
import torch

import near_ties
import support
from segue.models.codec.config import ENCODEC_16KHZ, ENCODEC_24KHZ, ENCODEC_32KHZ
from segue.models.codec.encodec import Encodec, emitted
from segue.models.loading.codec_keys import codec_config_from_transformers, load_codec_from_transformers


def segue_codec(hf):
    codec = Encodec(codec_config_from_transformers(hf.config.to_dict())).eval()
    load_codec_from_transformers(codec, hf.state_dict(), "test")
    return codec


@pytest.fixture(scope="module", params=["32k", "16k", "24k"])
def pair(request):
    hf = support.hf_encodec(request.param, seed=3)
    return request.param, hf, segue_codec(hf)


def test_config_matches_published_values():
    assert ENCODEC_32KHZ.hop_length == 640 and ENCODEC_32KHZ.frame_rate == 50
    assert ENCODEC_16KHZ.hop_length == 320 and ENCODEC_16KHZ.frame_rate == 50
    assert ENCODEC_24KHZ.frame_rate == 75 and ENCODEC_24KHZ.causal


@pytest.mark.parametrize("length", [640 * 7, 9000, 321])
def test_codes_and_audio_match_transformers(pair, length):
    kind, hf, codec = pair
    x = torch.randn(2, 1, length) * 0.3
    bw = hf.config.target_bandwidths[-1]
    with torch.no_grad():
        ref_codes = hf.encode(x, bandwidth=bw).audio_codes[0]
        ref_audio = hf.decode(ref_codes[None], [None]).audio_values
    codes = codec.encode(x)
    assert torch.equal(codes, ref_codes)
    if codes.shape[-1] >= 5:
        assert codes.unique().numel() > 8, "codes should be diverse for the comparison to mean something"
    audio = codec.decode(codes)
    assert audio.shape == ref_audio.shape == (2, 1, codes.shape[-1] * hf.config.hop_length)
    torch.testing.assert_close(audio, ref_audio, atol=1e-4, rtol=0)


def test_fewer_codebooks_match_transformers(pair):
    kind, hf, codec = pair
    x = torch.randn(1, 1, 6400) * 0.3
    codes = codec.encode(x)[:, :2]
    with torch.no_grad():
        ref = hf.decode(codes[None], [None]).audio_values
    torch.testing.assert_close(codec.decode(codes), ref, atol=1e-4, rtol=0)
    assert torch.equal(codec.encode(x, n_q=2), codes)


def test_weight_norm_key_styles_load_identically():
    hf = support.hf_encodec("32k", seed=5)
    new_style = hf.state_dict()
    old_style = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in new_style.items()}
    assert any(k.endswith("weight_g") for k in old_style)
    a, b = segue_codec(hf), Encodec(codec_config_from_transformers(hf.config.to_dict()))
    load_codec_from_transformers(b, old_style, "old-style")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_48khz_chunked_stereo_matches_transformers():
    hf = support.hf_encodec("48k", seed=2)
    codec = segue_codec(hf)
    x = torch.randn(1, 2, 30000) * 0.3  # 2.5 chunks of 0.25 s
    with torch.no_grad():
        enc = hf.encode(x, bandwidth=6.0)
        ref = hf.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length)
    codes, scales = codec.encode_chunks(x)
    assert torch.equal(codes, enc.audio_codes)
    torch.testing.assert_close(scales, torch.stack([s.view(-1) for s in enc.audio_scales]))
    audio = codec.decode_chunks(codes, scales, x.shape[-1])
    torch.testing.assert_close(audio, ref.audio_values[..., : x.shape[-1]], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="cannot stream"):
        codec.stream_decoder()


CHUNKINGS = [[1], [2], [7], [50], "random"]


@pytest.mark.parametrize("sizes", CHUNKINGS, ids=str)
def test_streaming_decoder_equals_full_pass(pair, sizes):
    kind, hf, codec = pair
    codes = codec.encode(torch.randn(2, 1, hf.config.hop_length * 61) * 0.3)
    full = codec.decode(codes)
    if sizes == "random":
        sizes = [random.Random(1).randint(1, 9) for _ in range(64)]
    dec = codec.stream_decoder(2)
    outs, t, i = [], 0, 0
    while t < codes.shape[-1]:
        chunk = codes[..., t : t + sizes[i % len(sizes)]]
        outs.append(dec.push(chunk))
        t += chunk.shape[-1]
        i += 1
        assert dec.counters.n_out == emitted(codec.decoder, t)  # every determined sample is out, no more
    outs.append(dec.flush())
    y = torch.cat(outs, -1)
    assert y.shape == full.shape
    assert (y - full).abs().max() <= 1e-5


@pytest.mark.parametrize("sizes", [[1], [7], [640], [1333], "random"], ids=str)
def test_streaming_encoder_equals_full_pass(pair, sizes):
    kind, hf, codec = pair
    frames = 8 if sizes == [1] else 40  # one push per sample is slow; 8 frames still cross every layer's edge
    x = torch.randn(2, 1, hf.config.hop_length * frames + 77) * 0.3
    if sizes == "random":
        sizes = [random.Random(2).randint(1, 3000) for _ in range(64)]
    enc = codec.stream_encoder(2)
    outs, t, i = [], 0, 0
    while t < x.shape[-1]:
        outs.append(enc.push(x[..., t : t + sizes[i % len(sizes)]]))
        t += sizes[i % len(sizes)]
        i += 1
    outs.append(enc.flush())
    # The chunks' convolutions and quantizer GEMMs have other shapes than the full pass's: the same codes up to a
    # near tie of the quantizer.
    with torch.no_grad():
        z = codec.encoder(x)  # [2, D, T] the full pass's latents
    near_ties.assert_codes_equal_up_to_near_ties(codec.quantizer, z, torch.cat(outs, -1), codec.encode(x))


def test_decoder_lookahead_is_four_frames_for_musicgen_codec():
    codec = Encodec(ENCODEC_32KHZ)  # the real layer shapes; look-ahead depends on kernels and strides only
    assert codec.decoder_lookahead_samples() == 2402  # 75.1 ms at 32 kHz
    assert codec.decoder_lookahead_frames() == 4
    assert codec.encoder_lookahead_samples() == 2560


def test_decoder_lookahead_is_minimal():
    """The first sample the stream still holds back really depends on a frame it has not received yet."""
    hf = support.hf_encodec("32k", seed=4)
    codec = segue_codec(hf)
    codes = codec.encode(torch.randn(1, 1, 640 * 30) * 0.3)
    codec = codec.double()  # the dependency through the whole decoder is ~1e-9: below float32's resolution
    for t in (5, 12, 20):
        held_from = emitted(codec.decoder, t)  # samples emitted after t frames
        changed = codes.clone()
        changed[:, :, t] = (changed[:, :, t] + 17) % codec.cfg.bins  # frame t has not been received yet
        a, b = codec.decode(codes), codec.decode(changed)
        assert torch.equal(a[..., :held_from], b[..., :held_from])  # emitted samples cannot depend on it
        assert not torch.equal(a[..., held_from], b[..., held_from])  # the next sample does: wait was needed


def test_decoder_snapshot_restore_replays_identically(pair):
    kind, hf, codec = pair
    codes = codec.encode(torch.randn(1, 1, hf.config.hop_length * 30) * 0.3)
    dec = codec.stream_decoder()
    dec.push(codes[..., :10])
    saved = dec.snapshot()
    first = torch.cat([dec.push(codes[..., 10:20]), dec.flush()], -1)
    dec.restore(saved)
    again = torch.cat([dec.push(codes[..., 10:20]), dec.flush()], -1)
    assert torch.equal(first, again)


def test_bad_inputs_say_what_to_do():
    codec = segue_codec(support.hf_encodec("32k"))
    with pytest.raises(ValueError, match=r"\[batch, 1, samples\]"):
        codec.encode(torch.randn(100))
    with pytest.raises(ValueError, match="integers"):
        codec.decode(torch.zeros(1, 4, 3))
    with pytest.raises(ValueError, match=r"lie in \[0, 2047\]"):
        codec.decode(torch.full((1, 4, 3), 2048))
    with pytest.raises(ValueError, match="4 codebooks"):
        codec.decode(torch.zeros(1, 5, 3, dtype=torch.long))
    dec = codec.stream_decoder()
    dec.flush()
    with pytest.raises(RuntimeError, match="flushed"):
        dec.push(torch.zeros(1, 4, 1, dtype=torch.long))
