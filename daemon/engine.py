"""The engine thread: it owns the model and every take, and is the only thread that runs model work.

Transports call `submit` (any thread): it numbers the command, queues it and returns at once. The engine loop
drains the queue, gives each generating take one LM step (decoding a chunk when one is due, resampling it to the
device rate, writing it to the take's files and queueing it on its voice), mixes the voices into the bus a short
horizon ahead of the playhead, and reports events. `status()` and `takes()` read snapshots the loop publishes, so
a transport never waits for a model step.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import numpy as np
import soundfile as sf
import torch

from segue.daemon.audio_io import Audio
from segue.daemon.clock import Grid
from segue.daemon.model_slot import Loaded, ModelLoader, warm_up
from segue.daemon.playback import Mixer, Voice
from segue.daemon.session import Defaults, EngineConfig
from segue.daemon.sources import encode_prompt, follow_melody, prompt_audio
from segue.daemon.take_stream import Run
from segue.daemon.takes import TakeFiles, list_takes
from segue.daemon.vocabulary import (BUSY, INTERNAL, MODEL_ERROR, NO_SUCH_TAKE, Command, CommandError, Continue,
                                     Generate, Length, Retry, Set, Start, Stop, Tempo)
from segue.models.errors import SegueError
from segue.models.generation import Take, TakeSnapshot, pump_takes
from segue.models.musicgen import MusicGen

log = logging.getLogger("segue.engine")


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
        self.folders = (cfg.takes_dir.resolve(),) + tuple(p.resolve() for p in cfg.allowed_dirs)
        self.sr = audio.sample_rate
        self.grid = Grid(self.sr)
        self.tempo_source = "default"  # who set the tempo last (status)
        self.defaults = Defaults()
        guard = 2 * audio.block
        self.mixer = Mixer(audio.bus, guard, audio.bus.capacity // 2)  # a transport sets `mixer.publish`
        self.min_horizon = max(4 * audio.block, round(cfg.min_horizon * self.sr))
        self.load_horizon = max(self.min_horizon, round(cfg.load_horizon * self.sr))
        self.horizon = self.min_horizon
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.ids = itertools.count(self._first_id())
        self.runs: list[Run] = []
        self.later: list = []  # (clock sample, id, command, time) held until their time: a heap
        self.snapshots: dict[int, tuple[TakeSnapshot, dict]] = {}  # recent takes' prompt state, for `retry`
        self.iter_time = 0.0
        self.setup_s = 0.2  # seconds a take's set-up kept the engine from mixing, lately (measured)
        self._status: dict = {}
        self._takes: list[dict] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._changed = True  # the takes folder changed: re-list it
        self._next_status = 0.0
        self.thread = threading.Thread(target=self._loop, name="segue-engine", daemon=True)

    def _first_id(self) -> int:
        taken = [int(p.name[:4]) for p in self.cfg.takes_dir.glob("[0-9][0-9][0-9][0-9]-*.json")]
        return max(taken, default=0) + 1

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
    def submit(self, cmd: Command, at: int | None = None) -> int:
        """Queue a command; returns its id at once (the id of the take it makes, for take commands).

        `at`: the clock sample the command is meant for (an OSC bundle's time tag). `tempo` and `stop` take effect
        exactly there; a take without its own `start` starts there; `set` is held until then.
        """
        rid = next(self.ids)
        self.inbox.put((rid, cmd, time.monotonic(), at))
        self._wake.set()
        return rid

    def status(self) -> dict:
        return self._status

    def takes(self) -> list[dict]:
        return self._takes

    def start(self) -> None:
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
            self._finish(run, "stopped")
        self.runs.clear()
        self.audio.close()

    def warm_up(self, seconds: float = 1.0) -> None:
        """Warm the first model up (before `start`): kernels, allocator, its streams and its measured speed."""
        self.current = self.loaded[0] = warm_up(self.model, self.cfg.chunk_frames, self.cfg.stream_pool, seconds)

    # -- engine thread ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self._drain()
                worked = self._generate()
                if self.cfg.pace != "asap":
                    self.mixer.mix(self.horizon)
                self._retire()
                if self._changed or t0 >= self._next_status:
                    self._publish_state()  # status snapshots for the transports, at most every 20 ms unless a take
                    self._next_status = t0 + 0.02  # started or ended (building one costs more than a demo step)
            except Exception as exc:  # a bug must not take the daemon down: report it and go on
                log.exception("engine loop")
                self.emit(dict(event="error", id=None, code=INTERNAL, message=f"internal error: {exc}"))
                worked = False
            dt = time.monotonic() - t0
            self.iter_time = max(dt, 0.9 * self.iter_time)
            # The bus must hold what plays while the next iteration runs: a few iterations' worth, at least the floor
            # (a deeper one while a model loads beside the engine).
            floor = self.min_horizon if self.loader is None or self.loader.loading is None else self.load_horizon
            self.horizon = int(min(self.mixer.max_horizon, max(floor, 3 * self.iter_time * self.sr)))
            if not worked:
                self._wake.wait(timeout=max(0.002, 0.25 * self.horizon / self.sr))
                self._wake.clear()

    def _drain(self) -> None:
        now = self.audio.now()
        while self.later and self.later[0][0] <= now:  # held commands whose time has come
            _, rid, cmd, t = heapq.heappop(self.later)
            self._handle_reporting(rid, cmd, t, None)
        while True:
            try:
                rid, cmd, t, at = self.inbox.get_nowait()
            except queue.Empty:
                return
            if at is not None and isinstance(cmd, Set) and at > now:
                heapq.heappush(self.later, (at, rid, cmd, t))
                continue
            self._handle_reporting(rid, cmd, t, at)

    def _handle_reporting(self, rid: int, cmd: Command, t: float, at: int | None) -> None:
        try:
            self._handle(rid, cmd, t, at)
        except CommandError as exc:
            self.emit(dict(event="error", id=rid, code=exc.code, message=exc.message))
        except SegueError as exc:
            self.emit(dict(event="error", id=rid, code=MODEL_ERROR, message=str(exc)))

    def _handle(self, rid: int, cmd: Command, t: float, at: int | None = None) -> None:
        if at is not None and isinstance(cmd, (Generate, Continue, Retry)) and cmd.start is None:
            cmd = replace(cmd, start=Start(None, at))
        if isinstance(cmd, _Adopt):
            self._adopt(rid, cmd)
        elif isinstance(cmd, (Generate, Continue, Retry)):
            if sum(r.generating for r in self.runs) >= self.cfg.max_takes:
                raise CommandError(BUSY, f"{self.cfg.max_takes} takes are generating already; stop one first")
            # Setting a take up (encoding its prompt, prefilling the LM) keeps this thread from mixing for a while:
            # the bus gets that much more of what is playing first, so nothing drops out meanwhile.
            if self.cfg.pace != "asap":
                self.mixer.mix(self.horizon + round(1.5 * self.setup_s * self.sr))
            t_setup = time.monotonic()
            if isinstance(cmd, Retry):
                self._retry(rid, cmd, t)
            else:
                self._new_take(rid, cmd, t)
            self.setup_s = max(time.monotonic() - t_setup, 0.8 * self.setup_s)
        elif isinstance(cmd, Stop):
            self._stop_takes(rid, cmd, at)
        elif isinstance(cmd, Set):
            self._set(rid, cmd)
        elif isinstance(cmd, Tempo):
            self.grid = self.grid.retempo(self.audio.now() if at is None else at, cmd.bpm, cmd.beats_per_bar,
                                          cmd.beat)
            self.tempo_source = cmd.source
            self.emit(dict(event="done", id=rid, cmd="tempo", bpm=self.grid.bpm,
                           beats_per_bar=self.grid.beats_per_bar, anchor=self.grid.anchor, source=cmd.source))

    # -- takes ------------------------------------------------------------------------------------------------------
    def _take_audio(self, tid: int) -> tuple[np.ndarray, int] | None:
        for path in self.cfg.takes_dir.glob(f"{tid:04d}-*.wav"):
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
            return data.T.copy(), sr
        return None

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

    def _new_take(self, rid: int, cmd: Generate | Continue, t: float) -> None:
        d = self.defaults
        text = cmd.prompt if cmd.prompt is not None else d.prompt
        length = d.length(cmd.length)
        samples = self._length_samples(length)
        meta = dict(cmd=type(cmd).__name__.lower(), prompt=text, length=asdict(length))
        prompt = heard = melody = tune = None
        slot = self.current
        if cmd.melody is not None:  # first: a model that takes no melody is refused before any encoding
            pcm, sr, desc = self._audio_of(cmd.melody)
            t_mel = time.monotonic()
            melody = follow_melody(slot.model, pcm, sr)
            meta["melody"] = dict(desc, seconds=round(melody.seconds, 3), separation=melody.separation,
                                  chroma_s=round(time.monotonic() - t_mel, 4))
            tune = (pcm, sr)
        if isinstance(cmd, Continue):
            pcm, sr, desc = self._audio_of(cmd.source)
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

    def _audio_of(self, source) -> tuple[np.ndarray, int, dict]:
        """(samples [C, n], their rate, a description) of a prompt or melody source."""
        d = self.defaults
        return prompt_audio(source, audio=self.audio, grid=self.grid, take_audio=self._take_audio,
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
        if tid is None or tid not in self.snapshots:
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
        self._launch(rid, "retry", slot, take, cmd.start, lane, samples, again, t, snap, meta["prompt_codes"])

    def _launch(self, rid: int, kind: str, slot: Loaded, take: Take, start: Start | None, lane: int,
                samples: int | None, meta: dict, t: float, snap: TakeSnapshot | None = None,
                prompt_codes: np.ndarray | None = None, prompt_audio: tuple[np.ndarray, int] | None = None,
                melody_audio: tuple[np.ndarray, int] | None = None) -> None:
        """Place a created take on the clock; `snap` is its prompt state when it already has one (a retry)."""
        snap = snap or take.snapshot()
        self.snapshots[rid] = (snap, dict(slot=slot, samples=samples, lane=lane, meta=meta,
                                          prompt_codes=prompt_codes))
        while len(self.snapshots) > 8:
            del self.snapshots[min(self.snapshots)]
        start = start or self.defaults.start
        lead = self._lead(samples, slot)
        earliest = self.mixer.earliest_start + round(lead * self.sr)
        at, late = self.grid.resolve(start, earliest)
        unpaced, _ = self.grid.resolve(start, self.mixer.earliest_start + round(self.first_latency * self.sr))
        held = (at - unpaced) / self.sr
        fade = round(self.cfg.crossfade * self.sr)
        old = self.mixer.lane_voice(lane)
        voice = Voice(rid, lane, at, fade_in=fade if old is not None else 0)
        if old is not None:
            old.stop(at, fade)
        m = slot.model
        meta = dict(meta, model=m.info.ref, seed=take.seed, sampling=asdict(take.stream.sampling), lane=lane,
                    start=at, start_request=start.describe(), sample_rate=self.sr,
                    tempo=dict(bpm=self.grid.bpm, beats_per_bar=self.grid.beats_per_bar, anchor=self.grid.anchor),
                    requested_at=t, held_back_s=round(held, 3))
        files = TakeFiles(self.cfg.takes_dir, rid, kind, self.sr, self.audio.out_channels, m.lm.cfg.n_q, meta,
                          prompt_codes, prompt_audio, melody_audio)
        run = Run(rid, kind, take, voice, files, samples, self.sr, slot, self.audio.out_channels,
                  round(self.cfg.end_fade * self.sr))
        self.runs.append(run)
        self._changed = True
        if self.cfg.pace != "asap":
            self.mixer.add(voice)
        self.emit(dict(event="queued", id=rid, cmd=kind, start=at, seed=take.seed, path=str(files.wav_path),
                       held_back_s=round(held, 3), late=late, lead_s=round(lead, 3),
                       realtime=self.rate >= 1.0))

    def _lead(self, samples: int | None, slot: Loaded) -> float:
        """Seconds between now and the first sample so that the take never runs dry (pacing)."""
        busy = 1 + sum(r.generating for r in self.runs)
        rate = slot.rate / busy  # takes share the engine
        lead = 1.25 * slot.first_latency + 0.02
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
            if run.total is None and self.cfg.pace != "asap" and queued > self.cfg.max_lead * self.sr:
                continue  # an endless take far enough ahead waits for the playhead
            due.append(run)
        self.headroom = ahead / self.sr  # read by the model loader's thread (a float: replaced whole)
        if not due:
            return False
        t = time.monotonic()
        for slot in self.loaded:  # one LM call per model (after a switch, old takes finish on their own model)
            group = [r for r in due if r.slot is slot]
            if not group:
                continue
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
        run.files.write(x, codes)
        run.voice.push(x)
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
            run.voice.pos = run.voice.queued_end
            run.voice.chunks.clear()

    def _retire(self) -> None:
        """Events for takes that started playing or ended; files of ended takes are finalized."""
        pos = self.audio.bus.read_pos
        for run in list(self.runs):
            v = run.voice
            if run.state == "queued" and (pos >= v.start or self.cfg.pace == "asap"):
                run.state = "started"
                self.emit(dict(event="started", id=run.id, start=v.start))
            done = (not run.generating and v.complete) if self.cfg.pace == "asap" else (v.finished and pos >= v.end)
            if done:
                self._finish(run, "stopped" if v.stop_at is not None and v.stop_at < v.queued_end else "done")
                self.runs.remove(run)
                if len(run.slot.pool) < self.cfg.stream_pool:
                    run.slot.pool.append(run.take.stream)
                self._let_go()

    def _finish(self, run: Run, state: str) -> None:
        v = run.voice
        cut = None
        if v.stop_at is not None:  # what was generated past the stop was never heard: the file ends as it sounded
            keep = max(0, v.stop_at + v.fade_out - v.start)
            cut = (keep, min(v.fade_out, keep), self._frames_for(keep, run.take.model) or 0)
        run.files.close(cut, state=state, dropped=v.dropped, changes=run.changes,
                        first_audio_s=None if run.first_audio is None else round(run.first_audio - run.created, 4))
        self._changed = True
        self.emit(dict(event="done", id=run.id, state=state, path=str(run.files.wav_path),
                       samples=run.files.samples, frames=run.files.new_frames, dropped=v.dropped))

    def _stop_takes(self, rid: int, cmd: Stop, when: int | None = None) -> None:
        runs = [r for r in self.runs if cmd.take is None or r.id == cmd.take]
        if cmd.take is not None and not runs:
            raise CommandError(NO_SUCH_TAKE, f"take {cmd.take} is not playing")
        at = max(self.mixer.next_free, when or 0)
        for r in runs:
            r.voice.stop(at, round(cmd.fade * self.sr))
        self.emit(dict(event="done", id=rid, cmd="stop", takes=[r.id for r in runs], at=at))

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
                    r.changes.append(dict(knobs, frame=max(0, r.take.stream.frames_ready - r.take.n_prompt)))
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
        self.loader.request(rid, ref)
        self.emit(dict(event="loading", id=rid, model=ref))
        return False

    def _loaded(self, rid: int, ref: str, loaded: Loaded | None, error: CommandError | None) -> None:
        """The loader thread's result: handed to the engine thread like a command."""
        self.inbox.put((rid, _Adopt(ref, loaded, error), time.monotonic(), None))
        self._wake.set()

    def _adopt(self, rid: int, cmd: _Adopt) -> None:
        if cmd.error is not None:
            self._publish_state()  # a `status` sent on the error event sees the load over
            raise cmd.error
        self.loaded.append(cmd.loaded)
        self.current = cmd.loaded
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
            model=m.info.ref, kind=m.info.kind, device=str(m.device), dtype=str(m.lm.dtype).replace("torch.", ""),
            model_rate=m.sample_rate, channels=m.channels, models=models,
            loading=None if self.loader is None else self.loader.status(), audio=self.audio.status(),
            pace=self.cfg.pace,
            rate=round(self.rate, 3), realtime=self.rate >= 1.0, first_chunk_s=round(self.first_latency, 3),
            horizon_ms=round(1000 * self.horizon / self.sr, 1),
            tempo=dict(bpm=self.grid.bpm, beats_per_bar=self.grid.beats_per_bar,
                       beat=round(self.grid.beat_at(self.audio.now()), 3), source=self.tempo_source),
            takes=[dict(id=r.id, state=r.state, start=r.voice.start, generating=r.generating, lane=r.voice.lane)
                   for r in self.runs],
            defaults=self.defaults.describe(),
            takes_dir=str(self.cfg.takes_dir))
        if self._changed:
            self._takes = list_takes(self.cfg.takes_dir, 50)
            self._changed = False
