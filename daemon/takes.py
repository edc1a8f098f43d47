"""Takes on disk, written while they play: `NNNN-kind.wav` (float, device rate), `NNNN-kind.codes.npy` (int16
[K, T]: the prompt's frames, then the new ones), `NNNN-kind.json` (what made it, and how it went; `prompt_frames`
says where the new frames begin), for a continuation `NNNN-kind.prompt.wav` (the audio it continued) and, for a
take that follows a melody, `NNNN-kind.melody.wav` (the audio its chroma was taken from).

The codes file holds the prompt too because the new audio is decoded in the prompt's context: decoding the whole
file and dropping `prompt_frames * hop` samples gives the take exactly, as the daemon streamed it. The sidecar's
`codes_file` entry (daemon/codes_file.py: rate, channels, codebooks, frames, prompt frames, and the take's length at
the model rate once it is over: its WAV's samples x model rate / device rate, rounded) is what
`segue codec decode` reads to do that; the rest of it is what `segue generate --from-take` needs to render the take
again (daemon/reproduce.py).

The engine thread never touches the disk: `TakeFiles` keeps a take's counts and sidecar on that thread and queues
the file work on the `TakeWriter` thread, in order. A slow disk (an fsync, a journal commit, writeback throttling:
213 ms seen on a VM's ext4) then delays the files, never the mix. Every chunk is flushed as it is written and each
file is valid after every flush (the WAV header is updated by libsndfile on flush; the .npy header is rewritten in
place), so a crash loses at most the chunks still queued (a few hundred ms of audio).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from segue.daemon.playback import ramp
from segue.models.errors import SegueError

log = logging.getLogger("segue.takes")

_NPY_HEADER = 128  # bytes: magic + version + length + dict, padded (fixed, so it can be rewritten in place)


class CodesFile:
    """An .npy file of int16 codes [K, T] that grows a frame at a time (stored column-major: frame after frame)."""

    def __init__(self, path: Path, n_q: int):
        self.path, self.n_q, self.frames = path, n_q, 0
        self.f = open(path, "wb")
        self._header()

    def _header(self) -> None:
        d = f"{{'descr': '<i2', 'fortran_order': True, 'shape': ({self.n_q}, {self.frames}), }}"
        pad = _NPY_HEADER - 10 - len(d) - 1
        self.f.seek(0)
        self.f.write(b"\x93NUMPY\x01\x00" + (_NPY_HEADER - 10).to_bytes(2, "little") + (d + " " * pad + "\n").encode())

    def write(self, codes: np.ndarray) -> None:
        """codes [K, n] -> appended."""
        if codes.shape[1] == 0:
            return
        self.f.seek(0, os.SEEK_END)
        self.f.write(np.asfortranarray(codes.astype("<i2")).tobytes(order="F"))
        self.frames += codes.shape[1]
        self._header()
        self.f.flush()

    def truncate(self, frames: int) -> None:
        """Keep the first `frames` frames."""
        if frames < self.frames:
            self.frames = frames
            self.f.truncate(_NPY_HEADER + 2 * self.n_q * frames)
            self._header()
            self.f.flush()

    def close(self) -> None:
        self.f.close()


class TakeWriter:
    """The thread that does the takes folder's disk work, in the order it is queued (`submit`). `listing`, the
    newest takes' sidecars, is read again when asked after a sidecar changed (by whoever asks: a `takes` request's
    transport), never on every take's start and end: parsing 50 sidecars holds the interpreter lock just when a new
    take needs the engine thread most.

    `changed` is called on this thread after a take's files are finalized (the engine wakes to report it)."""

    def __init__(self, folder: Path, changed: Callable[[], None] = lambda: None):
        self.folder, self.changed = folder, changed
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._listing: list[dict] = []
        self._stale = True
        self.thread = threading.Thread(target=self._run, name="segue-takes", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable, *args) -> None:
        self.jobs.put((fn, args))

    def sync(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is on disk; False if that took longer than `timeout` s."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    def relist(self) -> None:
        """A sidecar changed: `listing` is read again when it is next asked for."""
        self._stale = True

    @property
    def listing(self) -> list[dict]:
        """The 50 newest takes' sidecars, newest first (any thread; the list is replaced whole)."""
        if self._stale:
            self._stale = False  # before reading: a sidecar written meanwhile marks it stale again
            self._listing = list_takes(self.folder, 50)
        return self._listing

    def close(self, timeout: float = 60.0) -> None:
        """Finish what is queued, then stop."""
        if self.thread.is_alive():
            self.jobs.put(None)
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            fn, args = job
            try:
                fn(*args)
            except Exception:  # a bug in a job must not stop the other takes' files
                log.exception("takes folder")


class _Inline:
    """A writer that does the work at once, on the caller's thread (for tools and tests without an engine)."""

    def submit(self, fn: Callable, *args) -> None:
        fn(*args)

    def relist(self) -> None:
        pass

    def changed(self) -> None:
        pass


INLINE = _Inline()


class TakeFiles:
    """One take's files. Its methods are called on the engine thread and return at once: they keep the counts and
    the sidecar here and queue the disk work on `writer`'s thread (`INLINE`: done at once).

    `error` is set (on the writer's thread) when the disk refuses a write: the engine then ends the take with it.
    `finalized` is set once `close`'s work is on disk: the take's `done` is reported after that, so a client that
    reads the files on `done` reads them whole."""

    def __init__(self, folder: Path, take_id: int, kind: str, sample_rate: int, channels: int, n_q: int,
                 meta: dict, prompt_codes: np.ndarray | None = None, prompt_audio: tuple[np.ndarray, int] | None = None,
                 melody_audio: tuple[np.ndarray, int] | None = None, writer: TakeWriter | _Inline = INLINE):
        self.writer = writer
        self.stem = folder / f"{take_id:04d}-{kind}"
        self.wav_path = self.stem.with_suffix(".wav")
        self.codes_path = self.stem.with_suffix(".codes.npy")
        self.json_path = self.stem.with_suffix(".json")
        self.rate, self.channels, self.n_q = sample_rate, channels, n_q  # the WAV's rate: the device's
        self.closed = False
        self.error: str | None = None
        self.finalized = threading.Event()
        self.prompt_frames = 0 if prompt_codes is None else prompt_codes.shape[1]
        self.frames_total = self.prompt_frames  # frames the codes file holds (prompt + new), once queued work is done
        self.samples = 0
        self._next_sidecar = sample_rate
        self.meta = dict(meta, id=take_id, wav=self.wav_path.name, codes=self.codes_path.name, state="playing",
                         samples=0, frames=0, prompt_frames=self.prompt_frames)
        extra = []
        for what, audio in (("prompt", prompt_audio), ("melody", melody_audio)):
            if audio is not None:
                path = self.stem.with_suffix(f".{what}.wav")
                self.meta[f"{what}_wav"] = path.name
                extra.append((path, audio))
        self._wav: sf.SoundFile | None = None  # these three only on the writer's thread
        self._codes: CodesFile | None = None
        self._created = False  # its sidecar is on disk
        writer.submit(self._open, prompt_codes, extra, self._sidecar())

    @property
    def new_frames(self) -> int:
        return self.frames_total - self.prompt_frames

    def write(self, pcm: np.ndarray, codes: np.ndarray | None) -> None:
        """pcm [n, C] at the device rate; codes [K, m] new frames. Neither may be changed afterwards (the writer
        reads them later)."""
        self.samples += len(pcm)
        if codes is not None:
            self.frames_total += codes.shape[1]
        if len(pcm) or codes is not None:
            self.writer.submit(self._write, pcm, codes)
        if self.samples >= self._next_sidecar:  # once a second of audio: after a crash it says how far it got
            self._next_sidecar = self.samples + self.rate
            self.writer.submit(self._save_partial, self._sidecar())

    def codec_length(self, layout: dict) -> int | None:
        """The take's length at the codec rate: its WAV's samples at the model rate, once the take is over (the
        codes hold a frame more, of margin for the resampler); None while it is still being written."""
        return round(self.samples * layout["sample_rate"] / self.rate) if self.closed else None

    def _sidecar(self, **updates) -> str:
        self.meta.update(updates, samples=self.samples, frames=self.new_frames)
        layout = self.meta.get("codes_file")
        if isinstance(layout, dict):  # what the codes file holds now (see daemon/codes_file.py)
            layout.update(codebooks=self.n_q, frames=self.frames_total, prompt_frames=self.prompt_frames,
                          length=self.codec_length(layout))
        return json.dumps(self.meta, indent=1, default=str)

    def close(self, cut: tuple[int, int, int] | None = None, **updates) -> None:
        """Finalize the files (`finalized` is set when that is done). `cut` = (samples heard, fade length, new
        frames they need): a take stopped while the LM was ahead of playback keeps only what was heard, with the
        same fade-out, so the file is the take as it sounded."""
        if cut is not None and cut[0] < self.samples:
            keep, fade, frames = cut
            self.samples = keep
            self.frames_total = min(self.frames_total, self.prompt_frames + frames)
        else:
            cut = None
        layout = self.meta.get("codes_file")
        if isinstance(layout, dict) and self.new_frames > self.frames_for(self.samples, layout):
            # More codes than the WAV's audio needs (ended before their audio was written): the file keeps those
            # it needs, so that its length lies in its last frames (`CodesLayout.length_range`)
            self.frames_total = self.prompt_frames + self.frames_for(self.samples, layout)
        self.closed = True
        self.writer.submit(self._finalize, cut, self.frames_total, self._sidecar(**updates))

    def frames_for(self, samples: int, layout: dict) -> int:
        """New frames that `samples` at the device rate need: those that hold them at the model rate, plus the
        frame of margin the engine generates for its resampler (none for no samples)."""
        if samples == 0:
            return 0
        return -(-samples * layout["sample_rate"] // (self.rate * layout["hop_length"])) + 1

    # -- the writer's thread ----------------------------------------------------------------------------------------
    def _failed(self, what: str, exc: Exception) -> None:
        if self.error is None:
            self.error = f"{what} {self.stem.name}: {exc}"
            log.error("%s", self.error)

    def _open(self, prompt_codes: np.ndarray | None, extra: list, sidecar: str) -> None:
        try:
            # Nothing is ever written over: a file of this number that appeared since the daemon counted the folder
            # (put there by another program) fails this take instead. Both files are created exclusively.
            number = self.stem.name.split("-")[0]
            there = sorted(p.name for p in self.stem.parent.glob(f"{number}-*") if not p.name.endswith(".tmp"))
            if there:
                raise FileExistsError(f"{there[0]} is already in the takes folder (another program wrote it); "
                                      "nothing was written over it")
            self._save(sidecar, new=True)  # first: a take's file is never on disk without its sidecar (a crash)
            self._created = True
            self._wav = sf.SoundFile(str(self.wav_path), "x", samplerate=self.rate, channels=self.channels,
                                     subtype="FLOAT", format="WAV")
            self._codes = CodesFile(self.codes_path, self.n_q)
            if prompt_codes is not None:  # [K, P]
                self._codes.write(prompt_codes)
            for path, (pcm, sr) in extra:  # [C, n]
                sf.write(str(path), pcm.T, sr, subtype="FLOAT")
        except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
            self._failed("creating", exc)

    def _write(self, pcm: np.ndarray, codes: np.ndarray | None) -> None:
        if self.error is not None:
            return
        try:
            if len(pcm):
                self._wav.write(pcm)
                self._wav.flush()
            if codes is not None:
                self._codes.write(codes)
        except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
            self._failed("writing", exc)

    def _finalize(self, cut: tuple[int, int, int] | None, frames_total: int, sidecar: str) -> None:
        try:
            if self._wav is not None:
                self._wav.close()
            if cut is not None and self.error is None:
                keep, fade, _ = cut
                with sf.SoundFile(str(self.wav_path), "r+") as f:
                    lo = max(0, keep - fade)
                    f.seek(lo)
                    tail = f.read(keep - lo, dtype="float32", always_2d=True)  # [n, C]
                    tail *= ramp(lo, len(tail), keep - fade, fade, rising=False)[:, None]
                    f.seek(lo)
                    f.write(tail)
                    f.truncate(keep)
            if self._codes is not None:
                self._codes.truncate(frames_total)
                self._codes.close()
            if self._created:  # a take whose files could not be created has none to describe
                self._save(sidecar)
        except (OSError, RuntimeError) as exc:  # soundfile's errors are RuntimeErrors
            self._failed("finalizing", exc)
        finally:
            self.finalized.set()
            self.writer.changed()

    def _save_partial(self, sidecar: str) -> None:
        if self.error is None:
            try:
                self._save(sidecar, relist=False)  # the listing shows takes as they start and end
            except OSError as exc:
                self._failed("writing the sidecar of", exc)

    def _save(self, sidecar: str, relist: bool = True, new: bool = False) -> None:
        tmp = self.json_path.with_suffix(".json.tmp")
        tmp.write_text(sidecar)
        if new:  # whole or not at all, and never over a file that is there
            try:
                os.link(tmp, self.json_path)
            finally:
                tmp.unlink()
        else:
            os.replace(tmp, self.json_path)
        if relist:
            self.writer.relist()


# A take's stem: its number (4 digits or more) and the command that made it. Its files are STEM.wav, .codes.npy,
# .json and, for some, .prompt.wav / .melody.wav (daemon/outputs.py refuses to write over any of them).
TAKE_STEM = r"(\d{4,})-(?:generate|continue|retry)"
_SIDECAR = re.compile(rf"^{TAKE_STEM}\.json$")  # 0001-generate.json ... 10000-retry.json
_NUMBERED = re.compile(r"^(\d+)-")


def _wav_beside(sidecar: Path) -> Path:
    """The take's WAV, named as its sidecar (NNNN-kind.json -> NNNN-kind.wav)."""
    return sidecar.with_suffix(".wav")


def sidecars(folder: Path) -> list[tuple[int, Path]]:
    """The takes' sidecars in `folder` as (take id, path), in take order (ids of any width: 9999 comes before
    10000)."""
    found = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _SIDECAR.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


LOCK_NAME = ".segue.lock"


def lock_folder(folder: Path):
    """Claim `folder` for this daemon: an exclusive lock on its `.segue.lock` (released when the returned file is
    closed, or when the process dies, however it dies). Two daemons on one takes folder would number their takes
    alike and write over each other's, and the second would take the first's playing takes for a crash's.

    Raises SegueError naming the other daemon's process id."""
    import fcntl

    f = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise SegueError(f"another segue daemon{f' (process {pid})' if pid.isdigit() else ''} writes its takes into "
                         f"{folder}; give this one a folder of its own with --takes DIR") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def next_take_id(folder: Path) -> int:
    """One past every number any file in `folder` starts with: a new take never writes over an old one's files,
    even one whose sidecar was never written (a crash)."""
    taken = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))] if folder.is_dir() else []
    return max(taken, default=0) + 1


def take_wav(folder: Path, tid: int) -> Path | None:
    """Take `tid`'s WAV, found through its sidecar by exact name: a regular file in `folder` itself (no symlink,
    nothing outside), never a take's prompt or melody WAV. None when there is no such take."""
    for n, side in sidecars(folder):
        if n != tid:
            continue
        wav = _wav_beside(side)
        if wav.is_symlink() or not wav.is_file() or wav.resolve().parent != folder.resolve():
            return None
        return wav
    return None


def recover(folder: Path) -> list[int]:
    """After a crash: sidecars still saying `playing` are marked `interrupted`, with the samples their WAV holds
    (its header is rewritten at every flush), so every take on disk is complete or says it is partial and how
    long it is. Returns the ids fixed."""
    fixed = []
    for tid, side in sidecars(folder):
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict) or meta.get("state") != "playing":
            continue
        wav = _wav_beside(side)
        try:
            samples = sf.info(str(wav)).frames if wav.is_file() and not wav.is_symlink() else 0
        except RuntimeError:  # soundfile's errors are RuntimeErrors
            samples = 0
        meta.update(state="interrupted", samples=samples)
        tmp = side.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=1, default=str))
        os.replace(tmp, side)
        fixed.append(tid)
    return fixed


def list_takes(folder: Path, limit: int = 100) -> list[dict]:
    """The newest takes' sidecars (newest first)."""
    out = []
    for _, p in sidecars(folder)[::-1][:limit]:
        try:
            meta = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(meta, dict):
            out.append(meta)
    return out
