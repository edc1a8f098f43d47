"""The models the daemon holds, and how a new one is brought in while the music plays.

A `Loaded` model is a `MusicGen` with what the engine keeps beside it: idle LM streams (KV caches) for the next
takes and the speed measured at warm-up, which paces them. `ModelLoader` reads and warms up a model on its own
thread, so that `set model=...` never stops the engine: the engine thread only adopts the finished model between
two iterations, and takes already playing finish on the model that started them.
"""

from __future__ import annotations

import errno
import gc
import itertools
import math
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from segue.daemon.vocabulary import BUSY, MODEL_ERROR, OUT_OF_MEMORY, CommandError
from segue.models.errors import SegueError
from segue.models.generation import Take, prompt_codes
from segue.models.lm.config import SamplingParams
from segue.models.lm.quant import step_ms
from segue.models.lm.stream import max_prompt_frames
from segue.models.musicgen import MusicGen

log = logging.getLogger("segue.models")


@dataclass
class Loaded:
    """A model ready for takes: warm, with its streams allocated and its speed known."""

    model: MusicGen
    pool: list = field(default_factory=list)  # idle LM streams, reused by the next takes
    rate: float = 1.0  # audio seconds one take generates per wall second (measured at warm-up, then learned from
    # the takes that generated alone: `learn_rate`)
    first_latency: float = 0.5  # seconds from request to a take's first chunk (measured at warm-up)
    # Seconds a take's audio arrives behind its own timeline at worst, counted from its launch: the most, over its
    # chunks, of (arrival - audio queued before it). A start needs that much lead not to run dry. Measured at
    # warm-up, then learned from the takes played (`learn_lag`): the device side (resampler, writer, mixer, other
    # threads and processes on the CPU) is in those.
    lag: float = 0.5
    warm_rate: float = math.inf  # `rate` as the warm-up measured it: the most the takes may teach it
    # How much slower a step is per position of context, relative to an empty one (measured at warm-up): the
    # attention reads the whole KV cache, so a long take generates slower than a short one (`context_rate`).
    slowdown: float = 0.0
    prompt_setup_s: float = 0.05  # seconds to set up a continuation, per second of its prompt (measured at warm-up)
    load_s: float = 0.0
    load_wait_s: float = 0.0  # of load_s: waiting for the playing takes to get far enough ahead

    @property
    def ref(self) -> str:
        return self.model.info.ref

    @cached_property
    def weight_bytes(self) -> int:
        """Bytes of the codec's, the LM's and the text encoder's tensors (counted once: weights never change)."""
        m = self.model
        modules = [m.codec, m.lm] + ([m.text.encoder] if m.text is not None else [])
        return sum(t.nbytes for mod in modules for t in itertools.chain(mod.parameters(), mod.buffers()))

    def longest_prompt_setup(self, longest_audio_s: float) -> float:
        """Seconds setting up a continuation (or a melody) may take at worst: its prompt as long as the model's
        context takes and `longest_audio_s` allows, at the measured cost per second, x1.5 (the prefill grows faster
        than the prompt)."""
        cfg = self.model.require_lm().cfg
        return 1.5 * min(longest_audio_s, max_prompt_frames(cfg) / cfg.frame_rate) * self.prompt_setup_s

    def average_context(self, prompt_frames: int, seconds: float) -> float:
        """Positions of LM context a take of `seconds` after `prompt_frames` of prompt averages: its prompt and half
        its length, at most the model's context (a longer take re-prompts within it)."""
        cfg = self.model.require_lm().cfg
        return min(prompt_frames + seconds * cfg.frame_rate / 2, cfg.context)

    def context_rate(self, context: float) -> float:
        """`rate` at an average of `context` positions of context (the warm-up's takes are short: `rate` is the
        speed at an empty cache)."""
        return self.rate / (1.0 + self.slowdown * max(context, 0.0))

    def learn_rate(self, measured: float) -> None:
        """A take's sustained speed (audio s per engine s, brought back to an empty cache with `slowdown`): taken
        at once when slower, else approached by a fifth per take, but never past what the warm-up measured. (Short
        takes, learned from as they came, overstated long ones: at musicgen-small's shapes in int8 on a 2-core
        CPU, 1 s takes ran at 0.66x and an 8-bar take paced on that ran dry for 2.3 s.)"""
        self.rate = min(measured, 0.8 * self.rate + 0.2 * measured, self.warm_rate)

    def learn_lag(self, measured: float) -> None:
        """A take's measured lag (s): taken at once when worse, else approached by a fifth per take."""
        self.lag = max(measured, 0.8 * self.lag + 0.2 * measured)

    def describe(self) -> dict:
        m = self.model
        streams = sum(_stream_bytes(s) for s in self.pool)
        return dict(model=m.info.ref, kind=m.info.kind, layout=m.info.layout, sample_rate=m.sample_rate,
                    channels=m.channels, codebooks=m.lm.cfg.n_q, device=str(m.device),
                    dtype=m.lm.precision, threads=torch.get_num_threads() if m.device.type == "cpu" else None,
                    weights_mb=round(self.weight_bytes / 2**20, 1),
                    idle_streams_mb=round(streams / 2**20, 1), rate=round(self.rate, 3), lag_s=round(self.lag, 4),
                    slowdown_per_position=round(self.slowdown, 7),
                    load_s=round(self.load_s, 2), load_wait_s=round(self.load_wait_s, 2))


def _stream_bytes(stream) -> int:
    return sum(t.nbytes for st in stream.states for t in (st.k, st.v, st.cross_k, st.cross_v))


@torch.no_grad()
def warm_up(model: MusicGen, chunk_frames: int, pool_size: int, seconds: float = 1.0) -> Loaded:
    """Run a short take and a continuation once (kernels, allocator, text encoder), measure the rate, and keep
    their streams for the pool."""
    frames = max(2, round(seconds * model.frame_rate))
    t = time.monotonic()
    take = first_take = Take(model, "warm up", None, frames, SamplingParams(seed=0), chunk_frames)
    first = None
    lag, before, audio = 0.0, 0, 0  # samples of the chunks before the previous one, and of all so far
    first_audio = 0  # samples of the first chunk
    for pcm in take:
        now = time.monotonic() - t
        if first is None:
            first, first_audio = now, pcm.shape[-1]
        # As if each chunk could play only once the next one is in: on the device side the resampler's delay and
        # a finite take's held-back fade make the first chunk short (a sixth of its samples with the demo model).
        lag = max(lag, now - before / model.sample_rate)
        before, audio = audio, audio + pcm.shape[-1]
    took = time.monotonic() - t
    # A continuation of a second of noise: what setting one up costs per second of prompt (encoding it, the LM's
    # prefill, the decoders running through it), the first time (kernels for its shapes included: an overestimate).
    noise = 0.1 * torch.randn(model.channels, model.sample_rate, generator=torch.Generator().manual_seed(0))
    t = time.monotonic()
    take = Take(model, None, prompt_codes(model, noise), frames, SamplingParams(seed=0), chunk_frames)
    setup_s = time.monotonic() - t
    for _ in take:
        pass
    # The speed after the first chunk: that one carries the text encoder, the prefill and every kernel's first
    # call (2.4 s of a 3.4 s warm-up at small int8 on a CPU), which `lag` covers; counted in, it put the rate at
    # 0.29x where the takes then ran at 0.5-0.66x.
    if audio > first_audio and took > first:
        rate = (audio - first_audio) / model.sample_rate / (took - first)
    else:
        rate = frames / model.frame_rate / max(took, 1e-6)
    return Loaded(model, [first_take.stream, take.stream][:pool_size], rate, first or took, lag=lag or took,
                  warm_rate=rate, slowdown=context_slowdown(model.require_lm()), prompt_setup_s=setup_s)


def context_slowdown(lm, positions: int = 1000, timed: int = 6) -> float:
    """A CFG step's extra time per position of context, relative to a step at an empty cache: 0.001 means a step
    at 1000 positions takes twice as long (timed with `quant.step_ms`).
    Measured on a 2-core AMD EPYC, one thread: 0.0013 at musicgen-small's shapes in int8 (2.3x slower at 1000
    positions), 0.00013 for the tiny demo model."""
    at = min(positions, lm.cfg.context - timed - 4)
    if at <= 0:
        return 0.0
    empty, full = step_ms(lm, 0, timed=timed), step_ms(lm, at, timed=timed)
    return max(0.0, (full / empty - 1.0) / at)


def weights_on_disk(folder: Path) -> int:
    """Bytes of the weight files a model folder holds: what loading it needs at least."""
    names = ("*.safetensors", "pytorch_model*.bin", "state_dict.bin", "compression_state_dict.bin")
    return sum(p.stat().st_size for pattern in names for p in folder.glob(pattern))


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on `device` (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: let the allocation itself tell


def out_of_memory(exc: BaseException | None) -> bool:
    """Whether a failed load ran out of memory: torch's allocators raise RuntimeError with a message, mmap of a
    weight file fails with ENOMEM (and a loader may have wrapped that in its own error, kept as the cause)."""
    while exc is not None:
        if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
            return True
        if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
            return True
        text = str(exc).lower()
        if any(s in text for s in ("out of memory", "can't allocate memory", "cannot allocate memory")):
            return True
        exc = exc.__cause__
    return False


class ModelLoader:
    """Loads one model at a time on its own thread and hands it over with `deliver(rid, ref, loaded, error)`.

    Reading and warming up a model share the cores (and the interpreter lock) with the engine. A take that has just
    started has only its pacing lead queued, so before each heavy part the loader waits, `max_wait` seconds at most,
    until every playing take is `min_headroom` seconds ahead of the playhead (`headroom()`); and it runs at a lower
    OS priority than the engine and the audio.

    Args:
        load: model reference -> MusicGen on the daemon's device and dtype (reads the files; may raise).
        prepare: MusicGen -> Loaded (the warm-up).
        deliver: called on the loader thread when done, with the `Loaded` or the `CommandError` that says why not.
        headroom: seconds of audio the least-ahead playing take has queued (inf with none playing); read from the
            loader thread.
    """

    def __init__(self, load: Callable[[str], MusicGen], prepare: Callable[[MusicGen], Loaded],
                 deliver: Callable[[int, str, Loaded | None, CommandError | None], None],
                 headroom: Callable[[], float] = lambda: float("inf"), min_headroom: float = 1.0,
                 max_wait: float = 5.0):
        self.load, self.prepare, self.deliver = load, prepare, deliver
        self.headroom, self.min_headroom, self.max_wait = headroom, min_headroom, max_wait
        self.loading: tuple[int, str, float] | None = None  # (request id, ref, monotonic start)
        self.waiting = False  # for the playing takes to get ahead
        self._lock = threading.Lock()  # request() may come from the engine while the thread is finishing

    def request(self, rid: int, ref: str) -> None:
        with self._lock:
            if self.loading is not None:
                raise CommandError(BUSY, f"{self.loading[1]} is still loading; wait for its 'done' (or 'error') "
                                         "before asking for another model")
            self.loading = (rid, ref, time.monotonic())
        threading.Thread(target=self._run, args=(rid, ref), name="segue-loader", daemon=True).start()

    def status(self) -> dict | None:
        busy = self.loading
        return None if busy is None else dict(model=busy[1], id=busy[0], for_s=round(time.monotonic() - busy[2], 1),
                                              waiting_for_takes=self.waiting)

    def _wait_for_headroom(self) -> float:
        """Until the playing takes are far enough ahead (at most `max_wait`) -> seconds waited."""
        t0 = time.monotonic()
        self.waiting = True
        while self.headroom() < self.min_headroom and time.monotonic() - t0 < self.max_wait:
            time.sleep(0.02)
        self.waiting = False
        return time.monotonic() - t0

    def _run(self, rid: int, ref: str) -> None:
        t0 = time.monotonic()
        loaded = error = None
        try:
            try:  # this thread only (Linux threads have their own nice value; the engine's stay as they are)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except (AttributeError, OSError):
                pass
            waited = self._wait_for_headroom()
            model = self.load(ref)
            if model.lm is None:
                raise SegueError(f"{ref} has no language model (a codec only); load a MusicGen or AudioGen model")
            waited += self._wait_for_headroom()
            loaded = self.prepare(model)
            loaded.load_s, loaded.load_wait_s = time.monotonic() - t0, waited
        except CommandError as exc:
            error = exc
        except BaseException as exc:  # noqa: BLE001 - whatever stops a load, the model playing stays
            loaded = None
            if out_of_memory(exc):
                error = CommandError(OUT_OF_MEMORY, f"not enough memory to load {ref} ({exc}); the current model "
                                                    "stays. Free memory (fewer takes, another dtype) or pick a "
                                                    "smaller model")
            elif isinstance(exc, SegueError):
                error = CommandError(MODEL_ERROR, f"cannot load {ref}: {exc}")
            else:
                log.exception("loading %s", ref)
                error = CommandError(MODEL_ERROR, f"cannot load {ref} ({type(exc).__name__}: {exc})")
        finally:
            if loaded is None:
                gc.collect()  # what the failed load allocated goes now, not at some later collection
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        with self._lock:
            self.loading = None
        self.deliver(rid, ref, loaded, error)


def client_fetch(ref: str) -> Path:
    """The folder of a model a client names with `set model=` (already checked by `sources.allowed_model`): an
    absolute folder, or a hub id, which is never looked up as a folder relative to the daemon's working directory
    (that folder is not the client's to load, and the answer would tell whether it exists)."""
    from segue.models.loading.hub import fetch, fetch_hub

    return fetch(ref) if Path(ref).is_absolute() else fetch_hub(ref)


def checked_load(ref: str, device: torch.device, dtype: torch.dtype, fetch, load_model) -> MusicGen:
    """`load_model(ref)` after checking that its weights can fit in what `device` has free (a Linux box out of
    memory kills the process rather than raising, so the old model would go too)."""
    from segue.models.loading.builder import DEMOS

    if ref not in DEMOS:  # the demos are built from a seed: nothing to read
        folder = fetch(ref)
        need, free = weights_on_disk(folder), free_memory(device)
        if need > free:
            raise CommandError(OUT_OF_MEMORY, f"{ref} needs at least {need / 2**30:.2f} GiB for its weights but "
                                              f"{device} has {free / 2**30:.2f} GiB free; the current model stays. "
                                              "Free memory or pick a smaller model")
    return load_model(ref, device, dtype, fetch=fetch)
