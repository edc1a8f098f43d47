"""LM decode speed: segue's stream against transformers' generate on the very same weights, same process.

A MusicGen decoder with a published shape (mono, stereo, melody, AudioGen) and random weights is built with
transformers; segue's LM is made from that model's state dict by segue's own key mapping (`lm_from_transformers`),
and then both models read ONE copy of the weights (transformers' q/k/v projections, embeddings and heads are
pointed at views of segue's packed tensors, every other matrix is shared as it is). So a large model fits twice on
a machine that holds it once, and both sides read exactly the same bytes. Both then generate the same number of
frames with CFG 3 and top-k 250 sampling; runs alternate so that machine noise hits both alike.

Each take is split into its prefill (the first forward: conditioning and prompt; MusicGen-Melody's 235 chroma
frames and the text go through it) and its decode steps; ms/step is over the decode steps only.
"""

from __future__ import annotations

import copy
import gc
import statistics
import time
from dataclasses import dataclass

import torch

FRAME_RATE = 50
# The tests' character tokenizer gives one token per character (a word's first character carries its space): 10
# tokens with </s>, about what T5 gives for a typical description ("dub techno, deep chords, 120 bpm": 12 tokens).
PROMPT = "dub techno"
CHROMA_LENGTH = 235  # melody: one-hot chroma frames of a 30 s segment (32 kHz, hop 4096)


@dataclass(frozen=True)
class Shape:
    """A published LM shape. Stereo: 8 codebooks (delays [0, 0, 1, 1, 2, 2, 3, 3]), L/R through the mono codec.
    Melody: no cross-attention, chroma + text prepended. AudioGen: MusicGen's LM at medium scale, 10 s context,
    T5-large text (1024 wide) and a 16 kHz codec (neither is in the step)."""

    dim: int
    heads: int
    layers: int
    n_q: int = 4
    channels: int = 1
    melody: bool = False
    audiogen: bool = False

    @property
    def text_dim(self) -> int:
        return 1024 if self.audiogen else 768  # t5-large / t5-base width

    @property
    def max_duration(self) -> float:
        return 10.0 if self.audiogen else 30.0

    @property
    def cross_attention(self) -> bool:
        return not self.melody

    def params(self) -> int:
        """LM parameters (projections, embeddings, heads; LayerNorms and the text projection left out)."""
        per_layer = (16 if self.cross_attention else 12) * self.dim**2
        return self.layers * per_layer + self.n_q * (2 * 2048 + 1) * self.dim

    def step_bytes(self, elt: int, cross_read: bool) -> int:
        """Weight bytes one decode step reads: q/k/v/o and the FFN of every layer, plus (`cross_read`) the cross
        query and output projections (transformers caches the cross keys/values), and the K output heads. The
        embedding tables are gathered (K rows per CFG row), not read whole."""
        per_layer = 12 * self.dim**2 + (2 * self.dim**2 if cross_read and self.cross_attention else 0)
        return elt * (self.layers * per_layer + self.n_q * 2048 * self.dim)

    def segue_cache_bytes(self, elt: int, rows: int = 2, max_text: int = 256) -> int:
        """segue preallocates the whole context: self-attention K/V (prefix room included for melody) and the
        cross-attention K/V of the longest text."""
        context = 1 + int(self.max_duration * FRAME_RATE) + 3
        if self.melody:
            return 2 * self.layers * rows * (CHROMA_LENGTH + max_text + context) * self.dim * elt
        return 2 * self.layers * rows * (context + max_text) * self.dim * elt


SHAPES = {  # audiocraft model_scale: dim / heads / layers, FFN 4 x dim
    "small": Shape(1024, 16, 24),
    "medium": Shape(1536, 24, 48),
    "large": Shape(2048, 32, 48),
    "stereo-small": Shape(1024, 16, 24, n_q=8, channels=2),
    "stereo-medium": Shape(1536, 24, 48, n_q=8, channels=2),
    "stereo-large": Shape(2048, 32, 48, n_q=8, channels=2),
    "melody": Shape(1536, 24, 48, melody=True),
    "melody-large": Shape(2048, 32, 48, melody=True),
    "audiogen-medium": Shape(1536, 24, 48, audiogen=True),
}


def memory_needed(shape: str, dtype: torch.dtype) -> int:
    """Bytes a comparison of `shape` holds at its peak: one copy of the weights, segue's q/k/v packing before
    transformers' copies are dropped, segue's preallocated cache, and 1 GiB for everything else."""
    s = SHAPES[shape]
    elt = 5 if dtype == "int8" else torch.finfo(dtype).bits // 8  # int8: the float32 weights and the int8 ones
    return s.params() * elt + 3 * s.layers * s.dim**2 * elt + s.segue_cache_bytes(elt) + 2**30


@dataclass
class Result:
    name: str
    device: str
    dtype: str
    frames: int
    steps: int  # decode steps after the prefill
    seconds: float  # their wall time
    prefill_s: float  # the first forward (conditioning, prompt/prefix) with its sampling
    step_ms: list[float] | None = None  # each decode step's time (CPU, where every step ends on the host)

    @property
    def mean_ms(self) -> float:
        return 1000 * self.seconds / self.steps

    @property
    def ms_per_step(self) -> float:
        """The median decode step where each step was timed (a burst of another process's load then moves it
        little), else the mean."""
        return statistics.median(self.step_ms) if self.step_ms else self.mean_ms

    @property
    def steps_per_s(self) -> float:
        return 1000 / self.ms_per_step

    @property
    def rtf(self) -> float:
        """Audio seconds produced per wall second of decoding (>= 1 is real time)."""
        return self.steps_per_s / FRAME_RATE


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _support():
    import sys
    from pathlib import Path

    path = str(Path(__file__).resolve().parent.parent / "tests")
    if path not in sys.path:
        sys.path.insert(0, path)
    import support

    return support


def build_reference(shape: str, full_codec: bool = False):
    """A transformers MusicGen (or MusicGen-Melody) with the real decoder shape and random weights; tiny T5 and
    codec (they are not in the step loop) of the real widths where the LM sees them. `full_codec`: the codec at
    facebook/encodec_32khz's full width instead, for what times the codec too (a whole process, the daemon)."""
    support = _support()
    from transformers import (MusicgenConfig, MusicgenDecoderConfig, MusicgenForConditionalGeneration,
                              MusicgenMelodyConfig, MusicgenMelodyDecoderConfig,
                              MusicgenMelodyForConditionalGeneration, T5Config)

    s = SHAPES[shape]
    tok = support.char_tokenizer()
    dec = dict(vocab_size=2048, hidden_size=s.dim, num_hidden_layers=s.layers, num_attention_heads=s.heads,
               ffn_dim=4 * s.dim, num_codebooks=s.n_q, audio_channels=s.channels)
    t5 = T5Config(vocab_size=len(tok), d_model=s.text_dim, d_kv=64, d_ff=256, num_layers=1, num_heads=2)
    codec = support.hf_encodec_config("16k" if s.audiogen else "32k-full" if full_codec else "32k").to_dict()
    torch.manual_seed(0)
    if s.melody:
        cfg = MusicgenMelodyConfig(text_encoder=t5.to_dict(), audio_encoder=codec,
                                   decoder=MusicgenMelodyDecoderConfig(**dec).to_dict(), chroma_length=CHROMA_LENGTH)
        model = MusicgenMelodyForConditionalGeneration(cfg).eval()
    else:
        cfg = MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=codec,
                             decoder=MusicgenDecoderConfig(**dec).to_dict())
        model = MusicgenForConditionalGeneration(cfg).eval()
    model.requires_grad_(False)
    gcfg = model.generation_config
    gcfg.decoder_start_token_id = gcfg.pad_token_id = gcfg.bos_token_id = 2048
    return model, tok


@torch.no_grad()
def segue_from_reference(ref, tok, shape: str):
    """segue's MusicGen over the reference's own weight memory (see the module docstring). The reference must
    already be on its device and dtype. segue's codec and T5 are copies (tiny), in float32 as its loader keeps them."""
    from segue.models.codec.encodec import Encodec
    from segue.models.lm.conditioning import TextEncoder
    from segue.models.loading.codec_keys import codec_config_from_transformers, load_codec_from_transformers
    from segue.models.loading.lm_keys import lm_config_from_transformers, lm_from_transformers
    from segue.models.musicgen import ModelInfo, MusicGen

    s = SHAPES[shape]
    device, dtype = ref.decoder.lm_heads[0].weight.device, ref.decoder.lm_heads[0].weight.dtype
    cfg = ref.config.to_dict()
    codec = Encodec(codec_config_from_transformers(cfg["audio_encoder"]))
    load_codec_from_transformers(codec, {k: v.float().cpu() for k, v in ref.audio_encoder.state_dict().items()},
                                 shape)
    text = TextEncoder(tok, copy.deepcopy(ref.text_encoder))  # TextEncoder makes its encoder float32
    lm_cfg = lm_config_from_transformers(cfg, codec.cfg.frame_rate, max_duration=s.max_duration)
    sd = {k: v for k, v in ref.state_dict().items()
          if k.startswith(("decoder.", "enc_to_dec_proj.", "audio_enc_to_dec_proj."))}
    lm = lm_from_transformers(lm_cfg, sd, shape, dtype).eval()
    del sd
    # One copy of the weights: transformers' projections become views of segue's packed ones.
    d = s.dim
    dec = ref.decoder.model.decoder
    for layer, ours in zip(dec.layers, lm.layers):
        for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
            getattr(layer.self_attn, name).weight = torch.nn.Parameter(ours.wqkv.weight[i * d:(i + 1) * d],
                                                                       requires_grad=False)
    for k in range(s.n_q):
        dec.embed_tokens[k].weight = torch.nn.Parameter(lm.emb[k], requires_grad=False)
        ref.decoder.lm_heads[k].weight = torch.nn.Parameter(lm.heads[k], requires_grad=False)
    gc.collect()
    for a, b in ((dec.layers[0].fc1.weight, lm.layers[0].fc1.weight),
                 (dec.layers[-1].self_attn.v_proj.weight, lm.layers[-1].wqkv.weight[2 * d:])):
        assert a.data_ptr() == b.data_ptr(), "the weights are not shared"
    kind = "audiogen" if s.audiogen else "musicgen-melody" if s.melody else "musicgen"
    return MusicGen(codec.to(device), lm, text.to(device), ModelInfo(shape, None, "transformers", kind))


def random_chroma(seed: int = 0) -> torch.Tensor:
    """A melody: one-hot chroma [1, 235, 12] (a pitch class per frame, held for a few frames as a tune would be)."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 12, (CHROMA_LENGTH // 4 + 1,), generator=gen).repeat_interleave(4)[:CHROMA_LENGTH]
    return torch.nn.functional.one_hot(classes, 12).float()[None]


def run_segue(model, frames: int, prompt: str, chroma: torch.Tensor | None = None,
              cuda_graphs: bool | None = None) -> tuple[float, int, float, list[float] | None]:
    """(prefill seconds, decode steps, their seconds, each step's ms or None on CUDA) of one take."""
    from segue.models.lm.config import SamplingParams

    stream = model.stream(1, SamplingParams(seed=0), cuda_graphs=cuda_graphs)
    _sync(model.device)
    t0 = time.perf_counter()
    stream.start([prompt], None, total_frames=frames, chroma=chroma)  # the prefill produces the first column
    _sync(model.device)
    t1 = time.perf_counter()
    stamps = [t1]
    while not stream.done:
        stream.step()
        stamps.append(time.perf_counter())
    stream.read_frames(0, frames).cpu()  # the host sees the tokens: all queued work is done
    _sync(model.device)
    return t1 - t0, len(stamps) - 1, time.perf_counter() - t1, _step_ms(stamps, model.device)


def _step_ms(stamps: list[float], device: torch.device) -> list[float] | None:
    # On CUDA a step returns before the device has run it: only the whole take's time means anything.
    return None if device.type == "cuda" else [1000 * (b - a) for a, b in zip(stamps, stamps[1:])]


def run_transformers(model, tok, frames: int, prompt: str, device: torch.device,
                     chroma: torch.Tensor | None = None) -> tuple[float, int, float, list[float] | None]:
    """(prefill seconds, decode steps, their seconds, each step's ms or None on CUDA) of one `generate`.

    A hook stamps the end of every decoder forward. The decode steps are the last `frames + 2` forwards, as many as
    segue's; whatever came before them is the prefill. transformers 5.x's MusicGen `generate` runs the first forward
    twice (its own `_prefill`, whose result `_sample` does not use, then `_sample`'s), so its prefill is two forwards;
    MusicGen-Melody's is one."""
    calls = []

    def hook(*_):
        if len(calls) < 2:  # the prefill ends at the first or the second forward
            _sync(device)
        calls.append(time.perf_counter())

    inputs = tok([prompt], return_tensors="pt").to(device)
    kwargs = {} if chroma is None else dict(input_features=chroma.to(device, model.dtype))
    handle = model.decoder.register_forward_hook(hook)
    try:
        _sync(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, **kwargs, do_sample=True, guidance_scale=3.0, top_k=250,
                           max_new_tokens=frames + 3)
        _sync(device)
        t2 = time.perf_counter()
    finally:
        handle.remove()
    steps = frames + 2
    if len(calls) <= steps:
        raise RuntimeError(f"transformers ran {len(calls)} forwards for {frames} frames; expected more than {steps}")
    stamps = calls[-(steps + 1):]
    return stamps[0] - t0, steps, t2 - stamps[0], _step_ms(stamps, device)


@torch.no_grad()
def weight_floor_pieces(lm, reps: int = 5) -> list[float]:
    """Time (ms) of the bare weight GEMMs one step needs (2 CFG rows), best of `reps`: what reading the weights
    costs on this machine. It is the floor no implementation beats at this precision; the gap above it is per-step
    overhead. The GEMMs are those of segue's step: q/k/v/o and FFN per layer (a melody LM has nothing else; a
    cross-attention LM's query/output projections are folded into the conditioning) and the K heads.

    On CPU each layer (and the heads) is timed on its own and keeps its own best, so a burst of another
    process's load spoils one piece of one repetition, not the floor; `weight_floor_ms` sums the pieces. On CUDA,
    where a sync per piece would add launch gaps that are not the weights' cost, the whole chain is one piece.
    """
    import torch.nn.functional as F

    d = lm.cfg.dim
    x = torch.randn(2, d, device=lm.device, dtype=lm.dtype)
    h = torch.randn(2, lm.cfg.ffn_dim, device=lm.device, dtype=lm.dtype)

    def layer_gemms(layer) -> None:
        F.linear(x, layer.wqkv.weight), F.linear(x, layer.wo.weight), F.linear(x, layer.fc1.weight)
        F.linear(h, layer.fc2.weight)

    def int8_gemms(q: dict) -> None:  # an int8 LM: the same products through its int8 weights
        q["wqkv"](x), q["wo"](x), q["fc1"](x), q["fc2"](h)

    if lm.int8 is not None:
        pieces = [lambda q=q: int8_gemms(q) for q in lm.int8]
        pieces.append(lambda: lm.int8_heads(x))
    else:
        pieces = [lambda layer=layer: layer_gemms(layer) for layer in lm.layers]
        pieces.append(lambda: F.linear(x, lm.heads.view(-1, d)))
    if lm.device.type == "cuda":
        parts = list(pieces)
        pieces = [lambda: [p() for p in parts]]
    for p in pieces:
        p()
    best = [float("inf")] * len(pieces)
    for _ in range(reps):
        for i, p in enumerate(pieces):
            _sync(lm.device)
            t = time.perf_counter()
            p()
            _sync(lm.device)
            best[i] = min(best[i], 1000 * (time.perf_counter() - t))
    return best


def weight_floor_ms(*pieces: list[float]) -> float:
    """The floor from one or more `weight_floor_pieces` measurements of one model: each piece's best, summed."""
    return sum(min(p) for p in zip(*pieces))


def floor_bytes(lm) -> int:
    """Bytes of the tensors `weight_floor_ms` reads, counted from the tensors themselves (an int8 LM: its int8
    weights and their scales)."""
    if lm.int8 is not None:
        return lm.int8_heads.nbytes + sum(q[n].nbytes for q in lm.int8 for n in ("wqkv", "wo", "fc1", "fc2"))
    ts = [lm.heads] + [w for layer in lm.layers for w in (layer.wqkv.weight, layer.wo.weight, layer.fc1.weight,
                                                          layer.fc2.weight)]
    return sum(t.numel() * t.element_size() for t in ts)


def copy_bandwidth(device: torch.device, gib: float = 1.0, reps: int = 5) -> float:
    """GB/s of copying one tensor of `gib` GiB into another (bytes read + bytes written), best of `reps`."""
    n = int(gib * 2**30) // 4
    a = torch.ones(n, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t)
    del a, b
    return 2 * n * 4 / best / 1e9


def random_model(shape: str, device: torch.device, dtype: torch.dtype):
    """segue alone at a real mono/stereo shape, random weights built in memory (no transformers model)."""
    from segue.models.lm.config import LMConfig
    from segue.models.loading.demo import DEMO_CODEC, random_codec, random_lm, random_text_encoder
    from segue.models.musicgen import ModelInfo, MusicGen

    s = SHAPES[shape]
    if s.melody:
        raise ValueError("random_model builds text-conditioned shapes only")
    lm = random_lm(LMConfig(dim=s.dim, num_heads=s.heads, num_layers=s.layers, ffn_dim=4 * s.dim, n_q=s.n_q,
                            delays=tuple(k // s.channels for k in range(s.n_q)), channels=s.channels,
                            text_dim=768), 0)
    text = random_text_encoder(dict(d_model=768, d_kv=64, d_ff=256, num_layers=1, num_heads=2), 0)
    return MusicGen(random_codec(DEMO_CODEC, 0), lm.to(device=device, dtype=dtype), text.to(device),
                    ModelInfo(shape, None, "demo", "musicgen"))


def compare(shape: str, device: torch.device, dtype: torch.dtype | str, plan: list[tuple[float, int]],
            prompt: str = PROMPT) -> dict:
    """Both sides on one copy of the weights; for each (take seconds, trials) in `plan`, alternating trials.
    dtype "int8": segue's LM quantized from those float32 weights (models/lm/quant.py), transformers in float32.

    Returns dict(takes=[(seconds, [segue Result per trial], [transformers Result per trial])], floor_ms,
    floor_bytes, hf_bytes, prefill_tokens)."""
    s = SHAPES[shape]
    int8 = dtype == "int8"
    dname = "int8" if int8 else str(dtype).replace("torch.", "")
    dtype = torch.float32 if int8 else dtype
    ref, tok = build_reference(shape)
    ref = ref.to(device=device, dtype=dtype)
    ours = segue_from_reference(ref, tok, shape)
    if int8:
        ours.lm.quantize_int8()
    chroma = random_chroma() if s.melody else None
    run_segue(ours, 10, prompt, chroma)  # warm-up (allocator, kernels, graph capture)
    run_transformers(ref, tok, 10, prompt, device, chroma)
    floors = [weight_floor_pieces(ours.lm)]  # before and after the takes: each piece keeps its best
    takes = []
    for secs, trials in plan:
        frames = int(secs * FRAME_RATE)
        mine, theirs = [], []
        for _ in range(trials):
            pre, steps, t, each = run_segue(ours, frames, prompt, chroma)
            mine.append(Result("segue", device.type, dname, frames, steps, t, pre, each))
            pre, steps, t, each = run_transformers(ref, tok, frames, prompt, device, chroma)
            theirs.append(Result("transformers", device.type, dname, frames, steps, t, pre, each))
        takes.append((secs, mine, theirs))
    text_tokens = ours.text.token_count(prompt)
    floors.append(weight_floor_pieces(ours.lm))
    out = dict(takes=takes, floor_ms=weight_floor_ms(*floors), floor_bytes=floor_bytes(ours.lm),
               hf_bytes=s.step_bytes(torch.finfo(dtype).bits // 8, cross_read=True),
               prefill_tokens=(CHROMA_LENGTH + text_tokens + 1) if s.melody else 1, text_tokens=text_tokens)
    del ours, ref
    release_memory(device)
    return out


def release_memory(device: torch.device) -> None:
    """Free the weights for whatever runs next in this process (CUDA's caching allocator keeps its blocks until
    emptied). glibc keeps freed heap blocks (GBs after a medium shape) and trimming them changes how transformers'
    per-step cache reallocations are served, so `bench/run.py` measures every shape in a fresh process instead."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str]) -> None:
    """python bench/lm_speed.py SHAPE DEVICE DTYPE PLAN OUT.json, PLAN as seconds:trials[,seconds:trials...]:
    one shape's `compare` in this (fresh) process, written to OUT.json for `bench/run.py`."""
    import json
    from dataclasses import asdict

    shape, device, dtype, plan, out = argv
    plan_t = [(float(a), int(b)) for a, b in (p.split(":") for p in plan.split(","))]
    res = compare(shape, torch.device(device), dtype if dtype == "int8" else getattr(torch, dtype), plan_t)
    res["takes"] = [(secs, [asdict(r) for r in mine], [asdict(r) for r in theirs])
                    for secs, mine, theirs in res["takes"]]
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
