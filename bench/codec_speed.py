"""Streaming EnCodec speed at the real 32 kHz shape (64 filters, 2-layer 1024 LSTM), random weights."""

from __future__ import annotations

import time

import torch

from segue.models.codec.config import ENCODEC_32KHZ
from segue.models.loading.demo import random_codec


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stream_decode_rtf(codec, codes: torch.Tensor, chunk: int) -> float:
    """Audio seconds decoded per wall second when codes arrive `chunk` frames at a time."""
    dec = codec.stream_decoder(codes.shape[0])
    _sync(codec.device)
    t = time.perf_counter()
    for i in range(0, codes.shape[-1], chunk):
        dec.push(codes[..., i : i + chunk], check=False).cpu()  # LM codes; the PCM reaches the host, as it must
    dec.flush().cpu()
    elapsed = time.perf_counter() - t
    return codes.shape[-1] * codec.cfg.hop_length / codec.cfg.sample_rate / elapsed


def stream_encode_rtf(codec, audio: torch.Tensor, chunk_samples: int) -> float:
    enc = codec.stream_encoder(audio.shape[0])
    _sync(codec.device)
    t = time.perf_counter()
    for i in range(0, audio.shape[-1], chunk_samples):
        enc.push(audio[..., i : i + chunk_samples])
    enc.flush().cpu()
    elapsed = time.perf_counter() - t
    return audio.shape[-1] / codec.cfg.sample_rate / elapsed


def measure(device: torch.device, seconds: float = 10.0) -> dict[str, float]:
    codec = random_codec(ENCODEC_32KHZ, 0).to(device)
    frames = int(seconds * codec.cfg.frame_rate)
    codes = torch.randint(0, codec.cfg.bins, (1, codec.cfg.n_q, frames), device=device)
    audio = torch.randn(1, 1, int(seconds * codec.cfg.sample_rate), device=device) * 0.1
    stream_decode_rtf(codec, codes[..., :50], 5)  # warm-up
    out = {}
    _sync(device)
    t = time.perf_counter()
    codec.decode(codes).cpu()
    out["one-pass decode"] = seconds / (time.perf_counter() - t)
    for chunk in (1, 5, 25):
        out[f"stream decode, {chunk} frame{'s' if chunk > 1 else ''} ({chunk * 20} ms) per push"] = \
            stream_decode_rtf(codec, codes, chunk)
    out["stream encode, 20 ms (640 samples) per push"] = stream_encode_rtf(codec, audio, 640)
    out["decoder look-ahead (ms)"] = codec.decoder_lookahead_samples() / codec.cfg.sample_rate * 1000
    return out
