"""LM decode speed: segue's stream against transformers' generate on the very same weights, same process.

A real-shape MusicGen decoder (small / medium / large) with random weights is built with transformers, saved with
`save_pretrained`, and loaded by segue through its normal loader. Both then generate the same number of frames
with CFG 3 and top-k 250 sampling; runs alternate so that machine noise hits both alike.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass

import torch

SHAPES = {  # audiocraft model_scale: dim / heads / layers, FFN 4 x dim
    "small": (1024, 16, 24),
    "medium": (1536, 24, 48),
    "large": (2048, 32, 48),
}
FRAME_RATE = 50
# The tests' character tokenizer gives one token per character: 11 tokens with </s>, what T5 gives for a typical
# description such as "dub techno, deep chords, 120 bpm" (12 tokens).
PROMPT = "dub techno"


@dataclass
class Result:
    name: str
    device: str
    dtype: str
    frames: int
    steps: int
    seconds: float

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / self.steps

    @property
    def rtf(self) -> float:
        """Audio seconds produced per wall second (>= 1 is real time)."""
        return self.frames / FRAME_RATE / self.seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_reference(shape: str, folder: str):
    """A transformers MusicGen with the real decoder shape (tiny T5 and codec: they are not in the step loop)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import support
    from transformers import MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration, T5Config

    dim, heads, layers = SHAPES[shape]
    tok = support.char_tokenizer()
    dec = MusicgenDecoderConfig(vocab_size=2048, hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads,
                                ffn_dim=4 * dim, num_codebooks=4)
    t5 = T5Config(vocab_size=len(tok), d_model=768, d_kv=64, d_ff=256, num_layers=1, num_heads=2)  # t5-base width
    cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=support.hf_encodec_config("32k").to_dict(),
                         decoder=dec.to_dict())
    torch.manual_seed(0)
    model = MusicgenForConditionalGeneration(cfg).eval()
    gcfg = model.generation_config
    gcfg.decoder_start_token_id = gcfg.pad_token_id = gcfg.bos_token_id = 2048
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model, tok


def run_segue(model, frames: int, prompt: str, cuda_graphs: bool | None = None) -> tuple[int, float]:
    from segue.models.lm.config import SamplingParams

    stream = model.stream(1, SamplingParams(seed=0), cuda_graphs=cuda_graphs)
    _sync(model.device)
    t = time.perf_counter()
    stream.start([prompt], None, total_frames=frames)
    steps = 1  # the prefill produced the first column
    while not stream.done:
        stream.step()
        steps += 1
    stream.read_frames(0, frames).cpu()  # the host sees the tokens: all queued work is done
    _sync(model.device)
    return steps, time.perf_counter() - t


def run_transformers(model, tok, frames: int, prompt: str, device: torch.device) -> tuple[int, float]:
    inputs = tok([prompt], return_tensors="pt").to(device)
    _sync(device)
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(**inputs, do_sample=True, guidance_scale=3.0, top_k=250, max_new_tokens=frames + 3)
    _sync(device)
    return frames + 3, time.perf_counter() - t


def weight_floor_ms(lm, reps: int = 5) -> float:
    """Time of the bare weight GEMMs one step needs (2 CFG rows): what reading the weights costs on this machine.

    It is the floor no implementation beats at this precision; the gap above it is per-step overhead.
    """
    import torch.nn.functional as F

    d = lm.cfg.dim
    x = torch.randn(2, d, device=lm.device, dtype=lm.dtype)
    h = torch.randn(2, lm.cfg.ffn_dim, device=lm.device, dtype=lm.dtype)

    def chain() -> None:
        for layer in lm.layers:
            F.linear(x, layer.wqkv.weight), F.linear(x, layer.wo.weight), F.linear(x, layer.fc1.weight)
            F.linear(h, layer.fc2.weight)
        F.linear(x, lm.heads.view(-1, d))

    chain()
    best = float("inf")
    for _ in range(reps):
        _sync(lm.device)
        t = time.perf_counter()
        chain()
        _sync(lm.device)
        best = min(best, time.perf_counter() - t)
    return best * 1000


def random_model(shape: str, device: torch.device, dtype: torch.dtype):
    """segue alone at a real shape, random weights built in memory (for shapes too big to hold twice)."""
    from segue.models.lm.config import LMConfig
    from segue.models.loading.demo import DEMO_CODEC, random_codec, random_lm, random_text_encoder
    from segue.models.musicgen import ModelInfo, MusicGen

    dim, heads, layers = SHAPES[shape]
    lm = random_lm(LMConfig(dim=dim, num_heads=heads, num_layers=layers, ffn_dim=4 * dim, text_dim=768), 0)
    text = random_text_encoder(dict(d_model=768, d_kv=64, d_ff=256, num_layers=1, num_heads=2), 0)
    return MusicGen(random_codec(DEMO_CODEC, 0), lm.to(device=device, dtype=dtype), text.to(device),
                    ModelInfo(shape, None, "demo", "musicgen"))


def segue_alone(shape: str, device: torch.device, dtype: torch.dtype, seconds: float) -> tuple[Result, float]:
    model = random_model(shape, device, dtype)
    run_segue(model, 10, PROMPT)
    frames = int(seconds * FRAME_RATE)
    steps, t = run_segue(model, frames, PROMPT)
    floor = weight_floor_ms(model.lm)
    del model
    gc.collect()
    return Result("segue", device.type, str(dtype).replace("torch.", ""), frames, steps, t), floor


def compare(shape: str, device: torch.device, dtype: torch.dtype, seconds: list[float], trials: int = 2,
            prompt: str = PROMPT) -> tuple[list[tuple], float]:
    """([(seconds, [segue Result per trial], [transformers Result per trial])], weight floor ms/step)."""
    from segue.models.loading.builder import load_model

    out = []
    with tempfile.TemporaryDirectory(prefix=f"segue-bench-{shape}-") as folder:
        ref, tok = build_reference(shape, folder)
        ref = ref.to(device=device, dtype=dtype)
        ours = load_model(folder, device, dtype)
        dname = str(dtype).replace("torch.", "")
        run_segue(ours, 10, prompt)  # warm-up (allocator, kernels, graph capture)
        run_transformers(ref, tok, 10, prompt, device)
        for secs in seconds:
            frames = int(secs * FRAME_RATE)
            mine, theirs = [], []
            for _ in range(trials):
                steps, t = run_segue(ours, frames, prompt)
                mine.append(Result("segue", device.type, dname, frames, steps, t))
                steps, t = run_transformers(ref, tok, frames, prompt, device)
                theirs.append(Result("transformers", device.type, dname, frames, steps, t))
            out.append((secs, mine, theirs))
        floor = weight_floor_ms(ours.lm)
        del ours, ref
        gc.collect()
    return out, floor
