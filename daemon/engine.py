"""The engine thread: it owns the model and every take, and is the only thread that runs model work.

Transports call `submit` (any thread): it numbers the command, queues it and returns at once. The engine loop
drains the queue, gives each generating take one LM step (decoding a chunk when one is due, resampling it to the
device rate, handing it to the take's files and queueing it on its voice), mixes the voices into the bus a short
horizon ahead of the playhead, and reports events. It never waits for the disk: take files are written on the
`TakeWriter`'s thread, and a take's `done` is reported once its files are whole; nor for a prompt file: those are
read on threads of their own (`Reads`). `status()` and `takes()` read snapshots the loop publishes, so a transport
never waits for a model step.
"""

from __future__ import annotations

import gc
import heapq
import itertools
import logging
import math
import os
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import torch

from segue.daemon.audio_io import Audio
from segue.daemon.clock import Grid
from segue.daemon.model_slot import Loaded, ModelLoader, warm_up
from segue.daemon.playback import Mixer, Voice
from segue.daemon.reads import READ_TIMEOUT_S, ReadDone, Reads
from segue.daemon.reproduce import change_record, recipe_meta
from segue.daemon.session import Defaults, EngineConfig
from segue.daemon.sources import MAX_PROMPT_AUDIO_S, allowed_model, encode_prompt, follow_melody, prompt_audio
from segue.daemon.take_stream import Run
from segue.daemon.takes import TakeFiles, TakeWriter, lock_folder, next_take_id, recover, take_wav
from segue.daemon.vocabulary import (BAD_AUDIO, BUSY, INTERNAL, MODEL_ERROR, NO_SUCH_TAKE, Command, CommandError,
                                     Continue, FileSource, Generate, Length, Retry, Set, Start, Stop, TakeSource, Tempo,
                                     error_code)
from segue.models.audio import read_audio
from segue.models.errors import SegueError
from segue.models.generation import Take, TakeSnapshot, pump_takes
from segue.models.loading.builder import DEMOS
from segue.models.musicgen import MusicGen

log = logging.getLogger("segue.engine")

GIL_SWITCH_S = 0.0005  # seconds (see `Engine.start`)
MAX_HELD = 256  # time-tagged `set` and `tempo` commands waiting for their time


@dataclass(frozen=True)
class _Adopt:
    """The loader thread's result for `set model=` (engine-internal, never parsed from a request)."""

    ref: str
    loaded: Loaded | None
    error: CommandError | None


class Engine:
    """Args:
        model: the model new takes use until `set model=` brings another.
        load: model reference -> MusicGen on the daemon's device (for `set model=`); None: the model is fixed.
    """

    def __init__(self, model: MusicGen, audio: Audio, cfg: EngineConfig, emit: Callable[[dict], None],
                 load: Callable[[str], MusicGen] | None = None):
        self.audio, self.cfg, self.emit = audio, cfg, emit
        self.current = Loaded(model)  # new takes use it
        self.loaded: list[Loaded] = [self.current]  # the current model, older ones still playing or kept
        self.headroom = math.inf  # seconds the least-ahead generating take has queued past the playhead
        self.loader = None if load is None else ModelLoader(
            load, lambda m: warm_up(m, cfg.chunk_frames, cfg.stream_pool), self._loaded, lambda: self.headroom,
            cfg.load_headroom, cfg.load_wait)
        cfg.takes_dir.mkdir(parents=True, exist_ok=True)
        self.folder_lock = lock_folder(cfg.takes_dir)  # first: the takes folder is this daemon's alone
        fixed = recover(cfg.takes_dir)
        if fixed:
            log.warning("takes %s were cut short by a crash: their sidecars now say 'interrupted', with the length "
                        "their WAVs hold", fixed)
        self.folders = (cfg.takes_dir.resolve(),) + tuple(p.resolve() for p in cfg.allowed_dirs)
        self.sr = audio.sample_rate
        self.grid = Grid(self.sr)
        self.tempo_source = "default"  # who set the tempo last (status)
        self.defaults = Defaults()
        guard = 2 * audio.block
        self.mixer = Mixer(audio.bus, guard, audio.bus.capacity // 2)  # a transport sets `mixer.publish`
        self.min_horizon = max(4 * audio.block, round(cfg.min_horizon * self.sr))
        self.load_horizon = max(self.min_horizon, round(cfg.load_horizon * self.sr))
        self.slow_horizon = max(self.min_horizon, round(cfg.slow_horizon * self.sr))
        self.horizon = self.min_horizon
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        # Take commands are numbered with the take's number (its files' NNNN); every other request gets a negative
        # id of its own, so a DAW resending `tempo` every second or a sync leader re-anchoring never uses up take
        # numbers.
        self.take_ids = itertools.count(next_take_id(cfg.takes_dir))
        self.request_ids = itertools.count(1)
        self.runs: list[Run] = []
        self.later: list = []  # (clock sample, id, command, time) held until their time: a heap
        self.snapshots: dict[int, tuple[TakeSnapshot, dict]] = {}  # recent takes' prompt state, for `retry`
        self.iter_time = 0.0
        # Seconds a take's set-up kept the engine from mixing: the longest of the last few. On a busy 2-core box they
        # vary 74-346 ms from one take to the next (musicgen-small's shapes, int8, JACK beside it); a decaying mean
        # premixed too little for the slow ones and the bus ran dry.
        self.setups: deque[float] = deque([0.2], maxlen=8)
        self._status: dict = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._changed = True  # takes started or ended: publish the status now
        # The takes folder's disk work runs on its own thread (see daemon/takes.py); ended takes wait in `closing`
        # until their files are final, then `done` is reported.
        self.writer = TakeWriter(cfg.takes_dir, self._wake.set)
        self.closing: list[tuple[TakeFiles, dict]] = []
        # Prompt and melody files are read on threads of their own, each within a deadline (see daemon/reads.py).
        self.reads = Reads(self._read_done)
        self._next_status = 0.0
        self.thread = threading.Thread(target=self._loop, name="segue-engine", daemon=True)

    @property
    def model(self) -> MusicGen:
        return self.current.model

    @property
    def rate(self) -> float:
        """Audio seconds one take of the current model generates per wall second (measured at warm-up)."""
        return self.current.rate

    @property
    def first_latency(self) -> float:
        return self.current.first_latency

    # -- any thread -------------------------------------------------------------------------------------------------
    def submit(self, cmd: Command, at: int | None = None, received: float | None = None) -> int:
        """Queue a command; returns its id at once: the take's number for take commands (generate, continue,
        retry), a negative request id for the others.

        `at`: the clock sample the command is meant for (an OSC bundle's time tag). `tempo` and `stop` take effect
        exactly there; a take without its own `start` starts there; `set` is held until then.
        `received`: the clock sample at which the transport received the request (default: now). Without `at`,
        the time-sensitive commands are placed from it, whatever the engine thread was doing when the request
        came: `tempo` anchors its beat there and `stop` acts from there (as soon as the mix allows). A take's
        `start` cannot be earlier than its audio can be ready, so `now` is paced from when generation begins.
        """
        if received is None:
            received = self.audio.now()
        take = isinstance(cmd, (Generate, Continue, Retry))
        rid = next(self.take_ids) if take else -next(self.request_ids)
        self.inbox.put((rid, cmd, time.monotonic(), at, received))
        self._wake.set()
        return rid

    def status(self) -> dict:
        return self._status

    def takes(self) -> list[dict]:
        return self.writer.listing

    def start(self) -> None:
        # The engine thread shares the interpreter with the transports and, without a sound card, the clock thread.
        # A thread asking for the interpreter lock waits up to the switch interval while this one runs Python (5 ms
        # by default): a transport's arrival stamp (a `tempo` anchored that late puts every bar line after it late by
        # as much) and the stand-in clock's blocks would wait that long. 0.5 ms keeps both within budget.
        sys.setswitchinterval(GIL_SWITCH_S)
        # A full collection of the cyclic garbage collector holds the interpreter lock while it scans every tracked
        # object, in whichever thread it happens: with torch and transformers loaded that is 100-250 ms (measured
        # on a 2-core AMD EPYC), longer than the horizon, so the bus ran dry. What exists now (the model, the
        # imports) lives as long as the daemon: it is moved out of the collector's sight, and collections scan only
        # what came after. (Frozen objects are still freed when their last reference goes.)
        gc.collect()
        gc.freeze()
        # The ring starts as silence: the first blocks are counted as mixed, so the callbacks that come before this
        # thread's first mix are not counted as underruns.
        bus = self.audio.bus
        bus.filled = max(bus.filled, bus.read_pos + self.min_horizon)
        self.audio.start()
        self._publish_state()
        self.thread.start()

    def close(self) -> None:
        """Stop the loop, finalize every take's files, close the audio."""
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        for run in self.runs:  # cut where playback is, as a stop would
            if self.cfg.pace != "asap":
                run.voice.stop(self.audio.bus.read_pos, round(self.cfg.end_fade * self.sr))
            self._finish(run, "cancelled" if run.voice.silenced else "stopped")
        self.runs.clear()
        self.writer.close()
        self._report_closed()
        self.audio.close()
        self.folder_lock.close()
        gc.unfreeze()  # an embedding process (a test suite) goes on collecting what this engine held

    def warm_up(self, seconds: float = 1.0) -> None:
        """Warm the first model up (before `start`): kernels, allocator, its streams and its measured speed."""
        self.current = self.loaded[0] = warm_up(self.model, self.cfg.chunk_frames, self.cfg.stream_pool, seconds)

    # -- engine thread ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        bus = self.audio.bus
        while not self._stop.is_set():
            t0 = time.monotonic()
            dry, ahead = bus.underruns, bus.filled - bus.read_pos
            t1 = t2 = t0
            try:
                self._drain()
                t1 = time.monotonic()
                worked = self._generate()
                t2 = time.monotonic()
                if self.cfg.pace != "asap":
                    self.mixer.mix(self.horizon)
                self._retire()
                self._report_closed()
                if self._changed or t0 >= self._next_status:
                    self._publish_state()  # status snapshots for the transports, at most every 20 ms unless a take
                    self._next_status = t0 + 0.02  # started or ended (building one costs more than a demo step)
            except Exception as exc:  # a bug must not take the daemon down: report it and go on
                log.exception("engine loop")
                self.emit(dict(event="error", id=None, code=INTERNAL, message=f"internal error: {exc}"))
                worked = False
            dt = time.monotonic() - t0
            if bus.underruns > dry and self.cfg.pace != "asap":  # says which pass, so a slow machine can be told
                log.warning("the mix ran dry (%d blocks): an engine pass took %.0f ms (take set-up %.0f, LM and "
                            "codec %.0f) with %.0f ms mixed ahead", bus.underruns - dry, 1000 * dt, 1000 * (t1 - t0),
                            1000 * (t2 - t1), 1000 * ahead / self.sr)
            self.iter_time = max(dt, 0.9 * self.iter_time)
            # The bus must hold what plays while the next iteration runs: a few iterations' worth, at least the floor
            # (a deeper one while a model loads beside the engine).
            floor = self.min_horizon if self.loader is None or self.loader.loading is None else self.load_horizon
            if any(r.generating and r.slot.rate < 1.0 for r in self.runs):
                floor = max(floor, self.slow_horizon)
            self.horizon = int(min(self.mixer.max_horizon, max(floor, 3 * self.iter_time * self.sr)))
            if not worked:
                self._wake.wait(timeout=max(0.002, 0.25 * self.horizon / self.sr))
                self._wake.clear()

    def _read_done(self, done: ReadDone) -> None:
        """A reader thread's result, back into the inbox (reader threads)."""
        self.inbox.put((done.rid, done, time.monotonic(), None, self.audio.now()))
        self._wake.set()

    def _drain(self) -> None:
        for rid, parked in self.reads.expired(time.monotonic()):
            self.emit(dict(event="error", id=rid, code=BAD_AUDIO,
                           message=f"reading {parked.what} did not finish within {self.reads.timeout:g} s (a disk "
                                   "that does not answer?); copy it to a local disk, or continue from the live input"))
        now = self.audio.now()
        while self.later and self.later[0][0] <= now:  # held commands whose time has come
            at, rid, cmd, t = heapq.heappop(self.later)
            self._handle_reporting(rid, cmd, t, None, at)
        while True:
            try:
                rid, cmd, t, at, received = self.inbox.get_nowait()
            except queue.Empty:
                return
            if at is not None and isinstance(cmd, (Set, Tempo)) and at > now:
                # Held until its time tag: a `tempo` for the next bar must not move the bar lines before it (takes
                # queued meanwhile go on the grid that is heard until then, and follow the new one if they start
                # after it).
                if len(self.later) >= MAX_HELD:
                    self.emit(dict(event="error", id=rid, code=BUSY, message=f"{MAX_HELD} time-tagged commands are "
                                   "waiting for their time already; send fewer ahead, or send them later"))
                    continue
                heapq.heappush(self.later, (at, rid, cmd, t))
                continue
            self._handle_reporting(rid, cmd, t, at, received)

    def _handle_reporting(self, rid: int, cmd: Command, t: float, at: int | None, received: float) -> None:
        try:
            self._handle(rid, cmd, t, at, received)
        except CommandError as exc:
            self.emit(dict(event="error", id=rid, code=exc.code, message=exc.message))
        except SegueError as exc:  # the request's own values or audio (see `error_code`), or the model failed
            self.emit(dict(event="error", id=rid, code=error_code(exc), message=str(exc)))
        except Exception as exc:  # a bug met by one request: it carries the request's id, and the loop goes on to
            log.exception("request %s", rid)  # generate and mix as if the request had not come
            self.emit(dict(event="error", id=rid, code=INTERNAL, message=f"internal error: {exc}"))

    def _handle(self, rid: int, cmd: Command, t: float, at: int | None, received: float) -> None:
        if at is not None and isinstance(cmd, (Generate, Continue, Retry)) and cmd.start is None:
            cmd = replace(cmd, start=Start(None, at))
        if isinstance(cmd, _Adopt):
            self._adopt(rid, cmd)
        elif isinstance(cmd, ReadDone):
            parked = self.reads.finish(cmd)
            if parked is None:
                return  # past its deadline (answered then) or stopped: the late result is dropped
            if cmd.error is not None:
                raise cmd.error  # reported with the request's id, as if read here
            self._take_command(rid, parked.request[0], parked.request[1], cmd.result)
        elif isinstance(cmd, (Generate, Continue, Retry)):
            self._take_command(rid, cmd, t)
        elif isinstance(cmd, Stop):
            self._stop_takes(rid, cmd, at if at is not None else received)
        elif isinstance(cmd, Set):
            self._set(rid, cmd)
        elif isinstance(cmd, Tempo):
            # Anchored where the request arrived (or its time tag), not where this thread got to it: a busy engine
            # must not shift the song's bar lines.
            self.grid = self.grid.retempo(received if at is None else at, cmd.bpm, cmd.beats_per_bar, cmd.beat)
            self.tempo_source = cmd.source
            self._follow_grid()
            self.emit(dict(event="done", id=rid, cmd="tempo", bpm=self.grid.bpm, beats_per_bar=self.grid.beats_per_bar,
                           anchor=self.grid.anchor, at=round(received if at is None else at, 1), source=cmd.source))

    def _take_command(self, rid: int, cmd: Generate | Continue | Retry, t: float, read: dict | None = None) -> None:
        """Set a take up, or first read the files its prompt and melody come from (off this thread: the request is
        parked, and comes back here with `read`, role -> (samples, rate, description))."""
        if sum(r.generating for r in self.runs) >= self.cfg.max_takes:
            raise CommandError(BUSY, f"{self.cfg.max_takes} takes are generating already; stop one first")
        if read is None and not isinstance(cmd, Retry):
            files = {role: src for role, src in (("melody", cmd.melody), ("source", getattr(cmd, "source", None)))
                     if isinstance(src, (FileSource, TakeSource))}
            if files:
                grid = self.grid  # the bars a `last_bars` asks for are counted at the tempo of now
                what = " and ".join(f"take {s.take}" if isinstance(s, TakeSource) else s.path for s in files.values())
                self.reads.start(rid, what, lambda: {role: self._audio_of(s, grid) for role, s in files.items()},
                                 (cmd, t))
                self._changed = True
                return
        read = read or {}
        # Setting a take up (encoding its prompt, prefilling the LM) keeps this thread from mixing for a while:
        # the bus gets that much more of what is playing first, so nothing drops out meanwhile. A prompt or a
        # melody from audio may be as long as the model's context: its encoding is counted at that worst case.
        if self.cfg.pace != "asap":
            setup = max(self.setups)
            if isinstance(cmd, Continue) or getattr(cmd, "melody", None) is not None:
                setup = max(setup, self.current.longest_prompt_setup(MAX_PROMPT_AUDIO_S))
            self.mixer.mix(self.horizon + round(1.5 * setup * self.sr))
        t_setup = time.monotonic()
        if isinstance(cmd, Retry):
            self._retry(rid, cmd, t)
        else:
            self._new_take(rid, cmd, t, read)
        self.setups.append(time.monotonic() - t_setup)

    # -- takes ------------------------------------------------------------------------------------------------------
    def _take_audio(self, tid: int, seconds: float) -> tuple[np.ndarray, int] | None:
        """The last `seconds` of take `tid`'s audio [C, n] and its rate; None when there is no such take."""
        self.writer.sync(READ_TIMEOUT_S)  # what was queued for it is on disk (this runs on a reader thread)
        path = take_wav(self.cfg.takes_dir, tid)
        if path is None:
            return None
        return read_audio(path, last_seconds=seconds)

    def _length_samples(self, length: Length) -> int | None:
        if length.endless:
            return None
        n = round(length.seconds * self.sr) if length.seconds is not None else self.grid.bars(length.bars)
        return max(1, n)

    def _frames_for(self, samples: int | None, model: MusicGen) -> int | None:
        if samples is None:
            return None
        # one frame of margin: the resampler's output for the last frame must cover the exact length
        return math.ceil(samples * model.sample_rate / self.sr / model.hop_length) + 1

    def _new_take(self, rid: int, cmd: Generate | Continue, t: float, read: dict) -> None:
        """`read`: the prompt's and the melody's audio when they came from files (role -> samples, rate,
        description)."""
        d = self.defaults
        text = cmd.prompt if cmd.prompt is not None else d.prompt
        length = d.length(cmd.length)
        samples = self._length_samples(length)
        meta = dict(cmd=type(cmd).__name__.lower(), prompt=text, length=asdict(length))
        prompt = heard = melody = tune = None
        slot = self.current
        if cmd.melody is not None:  # first: a model that takes no melody is refused before any encoding
            pcm, sr, desc = read.get("melody") or self._audio_of(cmd.melody)
            t_mel = time.monotonic()
            melody = follow_melody(slot.model, pcm, sr)
            meta["melody"] = dict(desc, seconds=round(melody.seconds, 3), separation=melody.separation,
                                  chroma_s=round(time.monotonic() - t_mel, 4))
            tune = (pcm, sr)
        if isinstance(cmd, Continue):
            pcm, sr, desc = read.get("source") or self._audio_of(cmd.source)
            t_enc = time.monotonic()
            prompt = encode_prompt(slot.model, pcm, sr)  # [1, K, P]
            meta.update(desc, prompt_encode_s=round(time.monotonic() - t_enc, 4))
            heard = (pcm, sr)
        sampling = d.sampling(cmd.sampling, cmd.seed)
        frames = self._frames_for(samples, slot.model)
        take = self._with_stream(slot, lambda stream: Take(slot.model, text, prompt, frames, sampling,
                                                           self.cfg.chunk_frames, stream=stream, melody=melody))
        codes = None if prompt is None else prompt[0].cpu().numpy().astype(np.int16)  # [K, P]
        self._launch(rid, meta["cmd"], slot, take, cmd.start, cmd.lane, samples, meta, t, prompt_codes=codes,
                     prompt_audio=heard, melody_audio=tune)

    def _audio_of(self, source, grid: Grid | None = None) -> tuple[np.ndarray, int, dict]:
        """(samples [C, n], their rate, a description) of a prompt or melody source. For a file or a take this runs
        on a reader thread (see `_take_command`), with the grid of when the request was handled."""
        d = self.defaults
        return prompt_audio(source, audio=self.audio, grid=grid or self.grid, take_audio=self._take_audio,
                            folders=self.folders, default_seconds=d.prompt_seconds, default_bars=d.prompt_bars)

    @staticmethod
    def _with_stream(slot: Loaded, make: Callable[[object], Take]) -> Take:
        """`make(stream)` with a pooled stream of the model when one is idle (else the take allocates its own); the
        stream goes back to the pool if the take cannot be made."""
        stream = slot.pool.pop() if slot.pool else None
        try:
            return make(stream)
        except BaseException:
            if stream is not None:
                slot.pool.append(stream)
            raise

    def _retry(self, rid: int, cmd: Retry, t: float) -> None:
        tid = cmd.take if cmd.take is not None else max(self.snapshots, default=None)
        if tid is None:
            raise CommandError(NO_SUCH_TAKE, "no take has been made in this session yet; generate or continue one "
                                             "first")
        if tid not in self.snapshots:
            raise CommandError(NO_SUCH_TAKE, f"take {tid} has no saved prompt state (only this session's recent "
                                             "takes can be retried); start a new one")
        snap, meta = self.snapshots[tid]
        slot, samples = meta["slot"], meta["samples"]
        seed = cmd.seed if cmd.seed is not None else int.from_bytes(os.urandom(4), "little")
        frames = self._frames_for(samples, slot.model)
        # The same prompt state on the same model, also after `set model=` while that model is still loaded.
        take = self._with_stream(slot, lambda stream: Take.from_snapshot(slot.model, snap, frames, seed,
                                                                         self.cfg.chunk_frames, stream))
        lane = cmd.lane if cmd.lane is not None else meta["lane"]
        # Resumed from the prompt state in memory: nothing is encoded or prefilled again.
        again = dict(meta["meta"], cmd="retry", retry_of=tid, prompt_encode_s=0.0)
        self._launch(rid, "retry", slot, take, cmd.start, lane, samples, again, t, snap,
                     meta["prompt_codes"])

    def _launch(self, rid: int, kind: str, slot: Loaded, take: Take, start: Start | None, lane: int,
                samples: int | None, meta: dict, t: float, snap: TakeSnapshot | None = None,
                prompt_codes: np.ndarray | None = None, prompt_audio: tuple[np.ndarray, int] | None = None,
                melody_audio: tuple[np.ndarray, int] | None = None) -> None:
        """Place a created take on the clock; `snap` is its prompt state when it already has one (a retry)."""
        snap = snap or take.snapshot()
        # The seed its prompt state was drawn with: a retry keeps its original's (`segue generate --from-take`).
        meta = dict(meta, prefill_seed=meta.get("prefill_seed", take.seed))
        self.snapshots[rid] = (snap, dict(slot=slot, samples=samples, lane=lane, meta=meta,
                                          prompt_codes=prompt_codes))
        while len(self.snapshots) > 8:
            del self.snapshots[min(self.snapshots)]
        start = start or self.defaults.start
        lead = self._lead(samples, slot, slot.average_context(take.n_prompt, (samples or 0) / self.sr))
        earliest = self.mixer.earliest_start + round(lead * self.sr)
        at, late = self.grid.resolve(start, earliest)
        unpaced, _ = self.grid.resolve(start, self.mixer.earliest_start + round(self.first_latency * self.sr))
        held = (at - unpaced) / self.sr
        fade = round(self.cfg.crossfade * self.sr)
        old = self.mixer.lane_voice(lane)
        voice = Voice(rid, lane, at, fade_in=fade if old is not None else 0, replaces=old)
        if old is not None:
            old.stop(at, fade)
        m = slot.model
        meta = dict(meta, model=m.info.ref, seed=take.seed, sampling=asdict(take.stream.sampling), lane=lane,
                    start=at, start_request=start.describe(), sample_rate=self.sr,
                    tempo=dict(bpm=self.grid.bpm, beats_per_bar=self.grid.beats_per_bar, anchor=self.grid.anchor),
                    requested_at=t, held_back_s=round(held, 3), **recipe_meta(m, take))
        files = TakeFiles(self.cfg.takes_dir, rid, kind, self.sr, self.audio.out_channels, m.lm.cfg.n_q, meta,
                          prompt_codes, prompt_audio, melody_audio, writer=self.writer)
        run = Run(rid, kind, take, voice, files, samples, self.sr, slot, self.audio.out_channels,
                  round(self.cfg.end_fade * self.sr), start, earliest)
        # It generates at most `max_lead` ahead of the playhead (finite takes too: seven `seconds=3600` takes grew
        # memory without bound), or what its pacing has it make before it starts on a machine slower than real
        # time (the rate x the lead), with a margin.
        run.max_ahead = round(max(self.cfg.max_lead, 1.2 * min(slot.rate, 1.0) * lead) * self.sr)
        self.runs.append(run)
        self._changed = True
        if self.cfg.pace != "asap":
            self.mixer.add(voice)
        self.emit(dict(event="queued", id=rid, cmd=kind, start=at, seed=take.seed, path=str(files.wav_path),
                       held_back_s=round(held, 3), late=late, lead_s=round(lead, 3),
                       realtime=self.rate >= 1.0))

    def _lead(self, samples: int | None, slot: Loaded, context: float = 0.0) -> float:
        """Seconds between now and the first sample so that the take never runs dry (pacing). `context`: the take's
        average positions of LM context (`Loaded.average_context`: a step slows as the context grows)."""
        busy = 1 + sum(r.generating for r in self.runs)
        rate = slot.context_rate(context) / busy  # takes share the engine
        lead = 1.25 * slot.lag + 0.02  # the margin: measured lags vary by a fifth, the clock moves a block at a time
        if samples is not None and rate < 1.0:
            lead += samples / self.sr * (1.0 / rate - 1.0) * 1.1
        return lead

    def _generate(self) -> bool:
        """One LM step for every take that still needs audio, batched into one call; True if any work was done."""
        playhead = self.audio.bus.read_pos
        due: list[Run] = []
        ahead = math.inf
        for run in self.runs:
            if not run.generating:
                continue
            v = run.voice
            end = v.end
            if end is not None and v.queued_end >= end:
                run.stop_generating()  # stopped: nothing more will be heard
                continue
            queued = v.queued_end - playhead
            ahead = min(ahead, queued)
            if self.cfg.pace != "asap" and queued > run.max_ahead:
                run.last_due = None
                continue  # far enough ahead: it waits for the playhead
            due.append(run)
        self.headroom = ahead / self.sr  # read by the model loader's thread (a float: replaced whole)
        if not due:
            return False
        t = time.monotonic()
        for run in due:  # the engine's whole loop counts (mixing, other work): it is what pacing must cover
            if run.last_due is not None:
                run.due_s += t - run.last_due
            run.last_due = t
            run.shared |= len(due) > 1
        for slot in self.loaded:  # one LM call per model (after a switch, old takes finish on their own model)
            group = [r for r in due if r.slot is slot]
            if not group:
                continue
            stepped = [r for r in group if not r.take.stream.done]
            if len(stepped) > 1:  # one batched LM call: not bit-identical to stepping alone (the sidecar says so)
                for run in stepped:
                    together = run.files.meta["stepped_with"]
                    together.extend(r.id for r in stepped if r is not run and r.id not in together)
            try:
                chunks = pump_takes([r.take for r in group])
            except Exception as exc:  # one LM call for all: a failure ends every take in it
                log.exception("takes %s", [r.id for r in group])
                for run in group:
                    self._fail(run, MODEL_ERROR, f"generation failed: {exc}")
                continue
            for run, pcm in zip(group, chunks):
                try:
                    self._deliver(run, pcm, t)
                except OSError as exc:  # from the writer's thread (TakeFiles.error)
                    self._fail(run, INTERNAL, f"writing the take failed ({exc}); check that the takes folder "
                                              f"{self.cfg.takes_dir} is writable and has space")
                except Exception as exc:
                    log.exception("take %s", run.id)
                    self._fail(run, INTERNAL, f"writing the take failed: {exc}")
        return True

    def _fail(self, run: Run, code: str, message: str) -> None:
        run.stop_generating()
        self.emit(dict(event="error", id=run.id, code=code, message=message))

    def _deliver(self, run: Run, pcm: np.ndarray | None, t: float) -> None:
        """A take's new chunk, if its step produced one -> device rate -> its files and its voice."""
        take = run.take
        if pcm is None:
            if take.done:  # the last step decoded nothing new
                run.stop_generating()
            return
        last = take.done
        x = run.to_device(pcm, last)
        new_codes = take.codes[run.codes_written:]
        run.codes_written = len(take.codes)
        codes = np.concatenate([c.numpy() for c in new_codes], axis=1) if new_codes else None
        if run.files.error is not None:  # the writer's thread could not write its files (a full disk...)
            raise OSError(run.files.error)
        run.files.write(x, codes)
        before = run.voice.queued_end - run.voice.start
        run.voice.push(x)
        if run.lag is not None:  # the pacing learns from each take's first second (see `Loaded.lag`)
            run.lag = max(run.lag, time.monotonic() - run.created - before / self.sr)
            if before >= self.sr or take.done:
                self._learn_lag(run)
        if run.first_audio is None:
            run.first_audio = t
        if last or (run.total is not None and run.release.out >= run.total):
            run.stop_generating()
        generated = run.voice.queued_end - run.voice.start
        if generated >= run.next_progress * self.sr:
            run.next_progress += 1.0
            self.emit(dict(event="progress", id=run.id, generated_s=round(generated / self.sr, 3),
                           played_s=round(max(0, self.audio.bus.read_pos - run.voice.start) / self.sr, 3)))
        if self.cfg.pace == "asap":
            run.voice.skip_queued()

    def _learn_rate(self, run: Run) -> None:
        """A take that generated alone for at least a second teaches its model's sustained speed (the warm-up's is a
        short burst on an otherwise idle engine: on a busy CPU a long take at that rate ran dry)."""
        generated = (run.voice.queued_end - run.voice.start) / self.sr
        if self.cfg.pace != "asap" and not run.shared and generated >= 1.0 and run.due_s > 0:
            slot = run.slot
            context = slot.average_context(run.take.n_prompt, generated)
            slot.learn_rate(generated / run.due_s * (1.0 + slot.slowdown * context))  # at an empty cache
        run.due_s = 0.0  # learned once

    def _learn_lag(self, run: Run) -> None:
        if run.lag is not None and run.first_audio is not None and self.cfg.pace != "asap":
            run.slot.learn_lag(run.lag)
        run.lag = None

    def _retire(self) -> None:
        """Events for takes that started playing or ended; files of ended takes are finalized."""
        pos = self.audio.bus.read_pos
        for run in list(self.runs):
            v = run.voice
            if v.silenced and run.state == "queued":  # stopped before it sounded: over now, never started
                done, state = True, "cancelled"
            else:
                if run.state == "queued" and (pos >= v.start or self.cfg.pace == "asap"):
                    run.state = "started"
                    self.emit(dict(event="started", id=run.id, start=v.start))
                done = (not run.generating and v.complete) if self.cfg.pace == "asap" else (v.finished and pos >= v.end)
                state = "stopped" if v.stop_at is not None and v.stop_at < v.queued_end else "done"
            if done:
                self._finish(run, state)
                self.runs.remove(run)
                if len(run.slot.pool) < self.cfg.stream_pool:
                    run.slot.pool.append(run.take.stream)
                self._let_go()

    def _finish(self, run: Run, state: str) -> None:
        self._learn_lag(run)
        if state == "done":
            self._learn_rate(run)
        v = run.voice
        cut = None
        if v.stop_at is not None:  # what was generated past the stop was never heard: the file ends as it sounded
            keep = max(0, v.stop_at + v.fade_out - v.start)
            cut = (keep, min(v.fade_out, keep), self._frames_for(keep, run.take.model) if keep else 0)
        if v.dropped:  # where it ran dry tells a slow model (its start) from a stalled engine (its middle)
            log.warning("take %d dropped %d samples, the first %.3f s into it", run.id, v.dropped,
                        v.first_drop / self.sr)
        run.files.close(cut, state=state, dropped=v.dropped, changes=run.changes,
                        dropped_at_s=None if v.first_drop is None else round(v.first_drop / self.sr, 4),
                        first_audio_s=None if run.first_audio is None else round(run.first_audio - run.created, 4))
        self._changed = True
        self.closing.append((run.files, dict(event="done", id=run.id, state=state, path=str(run.files.wav_path),
                                             samples=run.files.samples, frames=run.files.new_frames,
                                             dropped=v.dropped)))

    def _report_closed(self) -> None:
        """`done` for the ended takes whose files are final now (in the order they ended)."""
        while self.closing and self.closing[0][0].finalized.is_set():
            files, ev = self.closing.pop(0)
            if files.error is not None:
                ev = dict(ev, error=files.error)
            self.emit(ev)

    def _stop_takes(self, rid: int, cmd: Stop, when: float) -> None:
        """Stop from clock sample `when` (the request's arrival or time tag), or as soon as the mix allows. A take
        that has not started by then is silenced whole (state `cancelled`), and so is one still waiting for its files
        to be read (it has no files: its `done` has no path)."""
        runs = [r for r in self.runs if cmd.take is None or r.id == cmd.take]
        reading = [tid for tid in list(self.reads.parked) if cmd.take is None or tid == cmd.take]
        if cmd.take is not None and not runs and not reading:
            raise CommandError(NO_SUCH_TAKE, f"take {cmd.take} is not playing")
        for tid in reading:
            self.reads.cancel(tid)
            self.emit(dict(event="done", id=tid, state="cancelled", path=None, samples=0, frames=0, dropped=0))
        at = max(self.mixer.next_free, math.ceil(when))
        for r in runs:
            r.voice.stop(at, round(cmd.fade * self.sr))
        for r in runs:
            if r.voice.silenced:  # cancelled: a take it was to replace on its lane plays on
                replaced = next((o for o in self.runs if o.voice is r.voice.replaces), None)
                if replaced is not None:
                    replaced.resume_from(r.voice)
        self.emit(dict(event="done", id=rid, cmd="stop", takes=[r.id for r in runs] + reading, at=at))

    def _follow_grid(self) -> None:
        """Takes waiting for a grid line follow a grid that moved before they started (see `Run.follow`)."""
        for run in self.runs:
            was = run.follow(self.grid, self.mixer)
            if was is not None:
                self.emit(dict(event="queued", id=run.id, cmd=run.kind, start=run.voice.start, moved_from=was,
                               path=str(run.files.wav_path)))

    def _set(self, rid: int, cmd: Set) -> None:
        values = dict(cmd.values)
        ref = values.pop("model", None)
        if ref is not None and not self._switch(rid, ref):
            if values:
                self._set(None, Set(values))
            return  # the model loads meanwhile; its `done` (or error) comes when it is in
        self.defaults.apply(values)
        knobs = {k: values[k] for k in ("temperature", "top_k", "top_p", "cfg") if k in values}
        if knobs:
            params = {("cfg_coef" if k == "cfg" else k): v for k, v in knobs.items()}  # SamplingParams' names
            for r in self.runs:  # a knob moves the music while it plays, from the next step
                if r.generating:
                    r.changes.append(change_record(r.take.stream, r.take.n_prompt, knobs))
                r.take.stream.set_sampling(replace(r.take.stream.sampling, **params))
        if rid is not None:
            shown = {k: (v.describe() if isinstance(v, Start) else v) for k, v in values.items()}
            self.emit(dict(event="done", id=rid, cmd="set", values=shown | ({"model": ref} if ref else {})))

    # -- models -----------------------------------------------------------------------------------------------------
    def _switch(self, rid: int, ref: str) -> bool:
        """`set model=ref`: True when new takes use it from now on (it is loaded already), False when it is being
        loaded on the loader thread (the engine keeps playing meanwhile)."""
        for slot in self.loaded:
            if slot.ref == ref:
                self.current = slot
                self._changed = True
                self._let_go()
                self._publish_state()
                return True
        if self.loader is None:
            raise CommandError(MODEL_ERROR, "this engine was started with a fixed model; `segue serve` can switch")
        allowed_model(ref, self.folders, tuple(DEMOS))  # checked before `ok` too (dispatch.answer)
        self.loader.request(rid, ref)
        self.emit(dict(event="loading", id=rid, model=ref))
        return False

    def _loaded(self, rid: int, ref: str, loaded: Loaded | None, error: CommandError | None) -> None:
        """The loader thread's result: handed to the engine thread like a command."""
        self.inbox.put((rid, _Adopt(ref, loaded, error), time.monotonic(), None, self.audio.now()))
        self._wake.set()

    def _adopt(self, rid: int, cmd: _Adopt) -> None:
        if cmd.error is not None:
            self._publish_state()  # a `status` sent on the error event sees the load over
            raise cmd.error
        self.loaded.append(cmd.loaded)
        self.current = cmd.loaded
        gc.freeze()  # the new model's objects too (see `start`): an O(1) move, no scan
        self._let_go()
        self._changed = True
        self._publish_state()  # a `status` sent on this event sees the new model
        self.emit(dict(event="done", id=rid, cmd="set", values={"model": cmd.ref}, model=cmd.loaded.describe()))

    def _let_go(self) -> None:
        """Drop models that are neither current, nor playing a take, nor among the `keep_models` newest others."""
        playing = {id(r.slot) for r in self.runs}
        spare = [s for s in self.loaded if s is not self.current and id(s) not in playing]
        drop = spare[: max(0, len(spare) - self.cfg.keep_models)]  # the oldest go first
        if not drop:
            return
        gone = {id(s) for s in drop}
        self.loaded = [s for s in self.loaded if id(s) not in gone]
        for tid in [t for t, (_, m) in self.snapshots.items() if id(m["slot"]) in gone]:
            del self.snapshots[tid]  # their KV caches belong to the model going away
        for s in drop:
            log.info("model %s unloaded", s.ref)
            s.pool.clear()
        if self.model.device.type == "cuda":
            torch.cuda.empty_cache()

    def _publish_state(self) -> None:
        m = self.model
        models = [s.describe() | dict(current=s is self.current, takes=sum(r.slot is s for r in self.runs))
                  for s in self.loaded]
        self._status = dict(
            model=m.info.ref, kind=m.info.kind, device=str(m.device), dtype=m.lm.precision,
            model_rate=m.sample_rate, channels=m.channels, models=models,
            loading=None if self.loader is None else self.loader.status(), audio=self.audio.status(),
            pace=self.cfg.pace,
            rate=round(self.rate, 3), realtime=self.rate >= 1.0, first_chunk_s=round(self.first_latency, 3),
            horizon_ms=round(1000 * self.horizon / self.sr, 1),
            tempo=dict(bpm=self.grid.bpm, beats_per_bar=self.grid.beats_per_bar,
                       beat=round(self.grid.beat_at(self.audio.now()), 3), source=self.tempo_source),
            takes=[dict(id=r.id, state=r.state, start=r.voice.start, generating=r.generating, lane=r.voice.lane)
                   for r in self.runs]
            + [dict(id=rid, state="reading", reading=p.what) for rid, p in self.reads.parked.items()],
            defaults=self.defaults.describe(),
            takes_dir=str(self.cfg.takes_dir))
        self._changed = False
