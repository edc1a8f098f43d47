"""The one command vocabulary of the daemon: typed, validated commands, shared by every transport.

A transport (ZeroMQ now; OSC and MIDI later) turns its wire format into a plain dict and calls `parse`; it gets a
frozen command object or a `CommandError` with a machine-readable code and a sentence for a human. Nothing here
touches the model: parsing is cheap and safe to run on a transport thread.

Wire form (JSON over ZeroMQ):
    {"cmd": "continue", "source": "live", "last_bars": 2, "start": "next_bar", "bars": 2}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from segue.models.errors import AudioInputError, RequestError, SegueError

# Error codes (stable: clients switch on them).
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_COMMAND = "unknown_command"
UNKNOWN_FIELD = "unknown_field"
MISSING = "missing"
BAD_TYPE = "bad_type"
OUT_OF_RANGE = "out_of_range"
TOO_LARGE = "too_large"
PATH_NOT_ALLOWED = "path_not_allowed"
BAD_AUDIO = "bad_audio"
NO_SUCH_TAKE = "no_such_take"
NO_INPUT = "no_input"
BUSY = "busy"
OUT_OF_MEMORY = "out_of_memory"
MODEL_ERROR = "model_error"
INTERNAL = "internal"


def error_code(exc: SegueError) -> str:
    """The code for a `SegueError` met while handling a request: the request's own values (a text prompt longer than
    the model takes, a duration it cannot give) are `bad_request`, its audio `bad_audio`; the rest is the model's."""
    if isinstance(exc, RequestError):
        return BAD_REQUEST
    if isinstance(exc, AudioInputError):
        return BAD_AUDIO
    return MODEL_ERROR


MAX_SECONDS = 3600.0
MAX_BARS = 1000
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
# Entries of a codebook in every published MusicGen / AudioGen (EnCodec 32 and 16 kHz): top_k beyond it keeps all.
# A model with a smaller codebook is checked against its own when it is loaded (`segue generate`).
MAX_TOP_K = 2048
FADE_MAX = 10.0
# How far ahead of the audio clock a `start` sample or an OSC time tag may be (checked against the clock as the
# request arrives: the vocabulary's own bound on `start` cannot know the clock).
MAX_AHEAD_SECONDS = 600.0
STARTS = ("now", "next_beat", "next_bar")
SOURCES = ("live", "take", "file", "pcm")


class CommandError(Exception):
    """A request the daemon refuses; `code` is one of the constants above."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# -- value types ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Start:
    """When playback starts: `at` is 'now', 'next_beat', 'next_bar', or None with `sample` an absolute clock time."""

    at: str | None = "next_bar"
    sample: int | None = None

    def describe(self) -> str:
        return self.at if self.at is not None else f"sample {self.sample}"


@dataclass(frozen=True)
class Length:
    """How long a take lasts: seconds, bars at the tempo in force when it starts, or endless (until `stop`)."""

    seconds: float | None = None
    bars: float | None = None

    @property
    def endless(self) -> bool:
        return self.seconds is None and self.bars is None


@dataclass(frozen=True)
class Sampling:
    """Sampling overrides; None = the session default."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    cfg: float | None = None


@dataclass(frozen=True)
class LiveSource:
    """The last `seconds` (or `bars`) of the live input."""

    seconds: float | None = None
    bars: float | None = None


@dataclass(frozen=True)
class TakeSource:
    """A previous take; `seconds` / `bars` keep only its end (default: all of it, up to the model's limit)."""

    take: int
    seconds: float | None = None
    bars: float | None = None


@dataclass(frozen=True)
class FileSource:
    path: str
    seconds: float | None = None
    bars: float | None = None


@dataclass(frozen=True, eq=False)
class PcmSource:
    """Audio sent by the client: float32 [channels, n] at `sample_rate`."""

    audio: np.ndarray
    sample_rate: int
    seconds: float | None = None
    bars: float | None = None


Source = Union[LiveSource, TakeSource, FileSource, PcmSource]


# -- commands -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Generate:
    prompt: str | None = None  # None = the session's prompt
    start: Start | None = None
    length: Length | None = None  # None = the session's default length
    seed: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    lane: int = 0  # a new take on a lane that is playing replaces it with a crossfade
    melody: Source | None = None  # audio whose melody the take follows (MusicGen-Melody models)


@dataclass(frozen=True)
class Continue:
    source: Source
    prompt: str | None = None
    start: Start | None = None
    length: Length | None = None
    seed: int | None = None
    sampling: Sampling = field(default_factory=Sampling)
    lane: int = 0
    melody: Source | None = None


@dataclass(frozen=True)
class Stop:
    take: int | None = None  # None = every take
    fade: float = 0.05  # seconds


@dataclass(frozen=True)
class Retry:
    take: int | None = None  # None = the latest take
    seed: int | None = None
    start: Start | None = None
    lane: int | None = None  # None = the lane of the take retried


@dataclass(frozen=True)
class Set:
    """Session defaults; sampling values also reach the takes playing now, from their next step."""

    values: dict


@dataclass(frozen=True)
class Tempo:
    bpm: float
    beats_per_bar: int | None = None
    beat: float | None = None  # beat position now (0 = a bar line); None keeps the grid's phase
    # Who leads the tempo (shown in `status`): the transport a request came by, or a sync source such as "link",
    # "jack_transport", "midi_clock". Set by the daemon, never by a request.
    source: str = "zmq"


@dataclass(frozen=True)
class Status:
    pass


@dataclass(frozen=True)
class Takes:
    pass


Command = Union[Generate, Continue, Stop, Retry, Set, Tempo, Status, Takes]

# Keys `set` accepts, with their checkers (the same ones the commands use).
SET_KEYS = ("prompt", "temperature", "top_k", "top_p", "cfg", "seconds", "bars", "endless", "prompt_seconds",
            "prompt_bars", "start", "model")
MAX_MODEL_REF = 512


# -- field checks ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bound:
    """The range of one numeric setting: [lo, hi] (lo excluded when `lo_open`), whole numbers when `integer`."""

    lo: float
    hi: float
    integer: bool = False
    lo_open: bool = False

    def describe(self) -> str:
        low = f"above {_show(self.lo)}" if self.lo_open else f"at least {_show(self.lo)}"
        return f"{low} and at most {_show(self.hi)}"


# Every numeric setting segue takes, with its bounds: the one table behind the wire (ZeroMQ, OSC, the MIDI map),
# `segue generate`'s flags and `segue serve`'s flags and config file. A value must also be finite.
BOUNDS: dict[str, Bound] = {
    # sampling
    "temperature": Bound(0.0, 100.0),
    "top_k": Bound(0, MAX_TOP_K, integer=True),
    "top_p": Bound(0.0, 1.0),
    "cfg": Bound(0.0, 100.0),
    "seed": Bound(0, MAX_SEED, integer=True),
    # lengths (seconds and bars of a take, of a prompt, of the end of a source)
    "seconds": Bound(0.0, MAX_SECONDS, lo_open=True),
    "prompt_seconds": Bound(0.0, MAX_SECONDS, lo_open=True),
    "last_seconds": Bound(0.0, MAX_SECONDS, lo_open=True),
    "bars": Bound(0.0, MAX_BARS, lo_open=True),
    "prompt_bars": Bound(0.0, MAX_BARS, lo_open=True),
    "last_bars": Bound(0.0, MAX_BARS, lo_open=True),
    # takes, time, tempo
    "lane": Bound(0, 63, integer=True),
    "take": Bound(1, 2**53, integer=True),
    "start": Bound(0, 2**62, integer=True),  # an absolute sample of the audio clock
    "fade": Bound(0.0, FADE_MAX),
    "bpm": Bound(20.0, 999.0),
    "beats_per_bar": Bound(1, 32, integer=True),
    "beat": Bound(-1e9, 1e9),
    # audio: client PCM, and the daemon's device
    "sample_rate": Bound(1000, 384000, integer=True),
    "channels": Bound(1, 2, integer=True),
    # `segue serve` (flags and config file) and `segue generate --threads`
    "block_size": Bound(16, 8192, integer=True),
    "input_channels": Bound(0, 32, integer=True),
    "output_channels": Bound(1, 32, integer=True),
    "threads": Bound(1, 1024, integer=True),
    "keep_models": Bound(0, 16, integer=True),
    "chunk_frames": Bound(1, 500, integer=True),
}


def _show(x: float) -> str:
    """A bound or a value as a person reads it: whole numbers in full (seeds are 19 digits), others with %g."""
    return str(x) if isinstance(x, int) else f"{x:g}"


def check_number(key: str, v: Any, label: str | None = None) -> int | float:
    """`v` checked against `BOUNDS[key]`: a finite number (bool is not one) in range, a whole one where the key
    wants it (a float such as 2.0 becomes int 2). Returns it as int or float.

    label: how the message names the setting (default `'key'`; the CLI passes its flag, e.g. `--seed`).
    Raises CommandError BAD_TYPE (not a number, not whole) or OUT_OF_RANGE (not finite, out of bounds).
    """
    b = BOUNDS[key]
    name = label or f"'{key}'"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise CommandError(BAD_TYPE, f"{name} must be a number, got {type(v).__name__}")
    if isinstance(v, float) and not math.isfinite(v):
        raise CommandError(OUT_OF_RANGE, f"{name} must be finite, got {v}")
    if b.integer:
        if isinstance(v, float):
            if not v.is_integer():
                raise CommandError(BAD_TYPE, f"{name} must be a whole number, got {v}")
            v = int(v)
    elif isinstance(v, int) and abs(v) > 2**53:  # past float's whole numbers (10**310 does not convert at all)
        raise CommandError(OUT_OF_RANGE, f"{name} must be {b.describe()}, got a {len(str(abs(v)))}-digit number")
    else:
        v = float(v)
    if v < b.lo or v > b.hi or (b.lo_open and v == b.lo):
        shown = _show(v) if len(str(v)) <= 40 else f"a {len(str(abs(v)))}-digit number"
        raise CommandError(OUT_OF_RANGE, f"{name} must be {b.describe()}, got {shown}")
    return v


def _number(name: str, v: Any, key: str | None = None):
    """The wire's check of field `name`, against the bounds of `key` (default: `name`)."""
    return check_number(key or name, v, f"'{name}'")


def _text(name: str, v: Any, limit: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(v, str):
        raise CommandError(BAD_TYPE, f"'{name}' must be a string, got {type(v).__name__}")
    if len(v) > limit:
        raise CommandError(TOO_LARGE, f"'{name}' is {len(v)} characters; the limit is {limit}")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON), or an undecodable byte of a command line
        raise CommandError(BAD_TYPE, f"'{name}' is not valid Unicode text; send it as UTF-8") from None
    return v


MAX_PATH_CHARS = 4096  # Linux's PATH_MAX


def _path(name: str, v: Any) -> str:
    """A file path as text: no control characters (a NUL cannot be in a path on any system the daemon runs on)."""
    v = _text(name, v, MAX_PATH_CHARS)
    if not v or any(ord(c) < 32 for c in v):
        raise CommandError(BAD_TYPE, f"'{name}' must be a file path (not empty, no control characters such as NUL)")
    return v


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise CommandError(BAD_TYPE, f"'{name}' must be true or false, got {type(v).__name__}")
    return v


def check_value(key: str, v: Any) -> Any:
    """One named setting, checked and normalised (used by `set` and by the per-request fields)."""
    if key == "prompt":
        return None if v is None else _text(key, v)
    if key in ("temperature", "top_k", "top_p", "cfg", "seconds", "prompt_seconds", "bars", "prompt_bars", "seed",
               "lane", "take"):
        return _number(key, v)
    if key == "endless":
        return _bool(key, v)
    if key == "model":  # a hub id (facebook/musicgen-small), a folder on the daemon's machine, or "demo"
        ref = _text(key, v, MAX_MODEL_REF).strip()
        if not ref or any(ord(c) < 32 for c in ref):
            raise CommandError(BAD_TYPE, "'model' must be a hub id such as facebook/musicgen-small, a folder, or "
                                         "'demo'")
        return ref
    if key == "start":
        return _start(v)
    raise CommandError(UNKNOWN_FIELD, f"unknown setting '{key}'; settable: {', '.join(SET_KEYS)}")


def _start(v: Any) -> Start:
    if isinstance(v, str):
        if v not in STARTS:
            raise CommandError(OUT_OF_RANGE, f"'start' must be one of {', '.join(STARTS)} or a clock sample, got {v!r}")
        return Start(v)
    return Start(None, _number("start", v))


class _Fields:
    """The request's fields, consumed one by one so that leftovers can be reported as unknown."""

    def __init__(self, cmd: str, d: dict):
        self.cmd, self.d = cmd, dict(d)

    def take(self, key: str, required: bool = False, check=None, default=None):
        if key not in self.d:
            if required:
                raise CommandError(MISSING, f"'{self.cmd}' needs '{key}'")
            return default
        v = self.d.pop(key)
        if v is None and required:  # a null is no value: refused here, not met later in the engine
            raise CommandError(MISSING, f"'{self.cmd}' needs '{key}' (null given)")
        return (check or check_value)(key, v) if v is not None or key == "prompt" else default

    def done(self) -> None:
        if self.d:
            raise CommandError(UNKNOWN_FIELD, f"'{self.cmd}' does not take {', '.join(sorted(map(str, self.d)))}")


def _length(f: _Fields) -> Length | None:
    secs, bars, endless = f.take("seconds"), f.take("bars"), f.take("endless")
    given = sum(x is not None for x in (secs, bars)) + bool(endless)
    if given > 1:
        raise CommandError(BAD_REQUEST, "give one of 'seconds', 'bars' or 'endless', not several")
    if endless:
        return Length()
    if secs is None and bars is None:
        return None
    return Length(seconds=secs, bars=bars)


def _sampling(f: _Fields) -> Sampling:
    return Sampling(f.take("temperature"), f.take("top_k"), f.take("top_p"), f.take("cfg"))


def _source(f: _Fields, pcm: np.ndarray | None, kind_key: str = "source", prefix: str = "",
            shared: Source | None = None) -> Source:
    """The audio a field names: `source` for a continuation's prompt; `melody` (its other fields prefixed with
    `melody_`) for the audio a take's melody is taken from. A melody from 'pcm' uses the request's PCM part, the
    same audio as a pcm prompt when there is one (`shared`)."""
    kind = f.take(kind_key, required=True, check=lambda k, v: _text(k, v, 16))
    if kind not in SOURCES:
        raise CommandError(OUT_OF_RANGE, f"'{kind_key}' must be one of {', '.join(SOURCES)}, got {kind!r}")
    secs = f.take(prefix + "last_seconds", check=lambda k, v: _number(k, v, "last_seconds"))
    bars = f.take(prefix + "last_bars", check=lambda k, v: _number(k, v, "last_bars"))
    if secs is not None and bars is not None:
        raise CommandError(BAD_REQUEST, f"give '{prefix}last_seconds' or '{prefix}last_bars', not both")
    if kind == "live":
        return LiveSource(secs, bars)
    if kind == "take":
        return TakeSource(f.take(prefix + "take", required=True, check=lambda k, v: check_value("take", v)), secs,
                          bars)
    if kind == "file":
        return FileSource(f.take(prefix + "path", required=True, check=_path), secs, bars)
    if isinstance(shared, PcmSource):
        return PcmSource(shared.audio, shared.sample_rate, secs, bars)
    rate = f.take("sample_rate", required=True, check=lambda k, v: _number(k, v))
    channels = f.take("channels", default=1, check=lambda k, v: _number(k, v))
    if pcm is None:
        raise CommandError(MISSING, f"{kind_key} 'pcm' needs the audio as a second message part (float32 samples)")
    return PcmSource(pcm_from_bytes(pcm, channels), rate, secs, bars)


def _melody(f: _Fields, pcm: np.ndarray | None, source: Source | None = None) -> Source | None:
    if "melody" not in f.d or f.d["melody"] is None:
        f.d.pop("melody", None)
        return None
    return _source(f, pcm, "melody", "melody_", source)


def pcm_from_bytes(raw: bytes | np.ndarray, channels: int) -> np.ndarray:
    """Interleaved float32 bytes -> [channels, n], refusing what is not finite audio."""
    if isinstance(raw, np.ndarray):
        data = raw.astype(np.float32, copy=False).reshape(-1)
    else:
        if len(raw) % (4 * channels):
            raise CommandError(BAD_AUDIO, f"PCM is {len(raw)} bytes, not a whole number of {channels}-channel "
                                          "float32 frames")
        data = np.frombuffer(raw, dtype=np.float32)
    if data.size == 0:
        raise CommandError(BAD_AUDIO, "the PCM is empty; send at least one frame")
    if not np.isfinite(data).all():
        raise CommandError(BAD_AUDIO, "the PCM holds NaN or infinite samples; send finite float32 audio")
    return data.reshape(-1, channels).T.copy()  # [C, n]


def parse(d: Any, pcm: bytes | None = None) -> Command:
    """A request dict (and, for source 'pcm', its raw float32 payload) -> a typed command."""
    if not isinstance(d, dict):
        raise CommandError(BAD_REQUEST, "a request is a JSON object such as {\"cmd\": \"status\"}")
    cmd = d.get("cmd")
    if cmd is None:
        raise CommandError(MISSING, "the request needs a 'cmd' string, e.g. {\"cmd\": \"status\"}")
    if not isinstance(cmd, str):
        raise CommandError(BAD_TYPE, f"'cmd' must be a string such as \"status\", got {type(cmd).__name__}")
    f = _Fields(cmd, {k: v for k, v in d.items() if k != "cmd"})
    if cmd == "generate":
        out: Command = Generate(f.take("prompt", default=None), f.take("start"), _length(f), f.take("seed"),
                                _sampling(f), f.take("lane", default=0), _melody(f, pcm))
    elif cmd == "continue":
        source = _source(f, pcm)
        out = Continue(source, f.take("prompt", default=None), f.take("start"), _length(f), f.take("seed"),
                       _sampling(f), f.take("lane", default=0), _melody(f, pcm, source))
    elif cmd == "stop":
        out = Stop(f.take("take"), f.take("fade", default=0.05, check=lambda k, v: _number(k, v)))
    elif cmd == "retry":
        out = Retry(f.take("take"), f.take("seed"), f.take("start"), f.take("lane"))
    elif cmd == "set":
        values = {k: check_value(k, f.d.pop(k)) for k in list(f.d) if k in SET_KEYS}
        if not values and not f.d:
            raise CommandError(MISSING, f"'set' needs at least one of {', '.join(SET_KEYS)}")
        out = Set(values)
    elif cmd == "tempo":
        out = Tempo(f.take("bpm", required=True, check=lambda k, v: _number(k, v)),
                    f.take("beats_per_bar", check=lambda k, v: _number(k, v)),
                    f.take("beat", check=lambda k, v: _number(k, v)))
    elif cmd == "status":
        out = Status()
    elif cmd == "takes":
        out = Takes()
    else:
        raise CommandError(UNKNOWN_COMMAND, f"unknown command {cmd!r}; commands: generate, continue, stop, retry, "
                                            "set, tempo, status, takes")
    f.done()
    return out
