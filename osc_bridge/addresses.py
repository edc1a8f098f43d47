"""The OSC address table: the one source of truth for what segue answers on OSC (the README's OSC section is
generated from it, and the patches in max_patches/ are checked against it).

Every command of the daemon's vocabulary has an address. A message is its leading positional arguments, then any
other field of the command as `key value` pairs (like scsynth's `/s_new ... [control value]...`):

    /segue/continue live last_bars 2 bars 2 start next_bar
    /segue/tempo 120 4 0
    /segue/set temperature 0.8 cfg 4

Leading arguments can be left out: a field name followed by pairs starts the pairs. OSC senders differ in number
types (Pd sends only floats, Max ints and floats): whole floats are accepted where a
whole number is meant, ints where a float is, 0/1 for true/false.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "/segue"


@dataclass(frozen=True)
class Address:
    path: str
    cmd: str | None  # the vocabulary command it becomes; None: an OSC session control (notify, sync)
    positional: tuple[str, ...]  # leading arguments, in order
    required: int  # how many of them must be given
    pairs: bool  # `key value` pairs may follow
    reply: str | None  # the reply message, for queries
    doc: str


ADDRESSES: tuple[Address, ...] = (
    Address(f"{PREFIX}/generate", "generate", ("prompt",), 0, True, None,
            "a take from text: `[prompt] [start next_bar] [bars 4 | seconds 8 | endless 1] [seed N] "
            "[temperature t] [top_k k] [top_p p] [cfg c] [lane n]`"),
    Address(f"{PREFIX}/continue", "continue", ("source",), 1, True, None,
            "continue `live`, `take` (`take N`), `file` (`path P`): `[last_bars n | last_seconds s]` plus the "
            "generate pairs"),
    Address(f"{PREFIX}/stop", "stop", ("take",), 0, True, None, "fade out one take (default: all), `[fade s]`"),
    Address(f"{PREFIX}/retry", "retry", ("take",), 0, True, None,
            "the same prompt state with a new seed (default: the latest take), `[seed N] [start s] [lane n]`"),
    Address(f"{PREFIX}/set", "set", (), 0, True, None,
            "session defaults as pairs: prompt temperature top_k top_p cfg seconds bars endless prompt_seconds "
            "prompt_bars start; sampling values reach playing takes"),
    Address(f"{PREFIX}/tempo", "tempo", ("bpm", "beats_per_bar", "beat"), 1, False, None,
            "`<bpm> [beats per bar] [beat position now; 0 = a bar line]`"),
    Address(f"{PREFIX}/status", "status", (), 0, False, f"{PREFIX}/status.reply",
            "-> `/segue/status.reply model device audio_device running load buffer_ms xruns underruns model_rate "
            "device_rate bpm beat takes`"),
    Address(f"{PREFIX}/takes", "takes", ("count",), 0, False, f"{PREFIX}/takes.reply",
            "-> `/segue/takes.reply` with the newest takes' WAV paths (default 10)"),
    Address(f"{PREFIX}/notify", None, ("on", "port"), 1, False, None,
            "`1`: send this address the take events (`/segue/take/...`); `0`: stop. With `port`, every answer "
            "to this host goes to that port (for senders that cannot listen where they send from); a new port "
            "replaces the old one, as a listener too"),
    Address(f"{PREFIX}/learn", None, ("kind",), 1, True, f"{PREFIX}/learned",
            "MIDI learn: `note cmd <command> [key value]...` or `cc set <setting> min <lo> max <hi> [curve exp]`; "
            "the next note / CC gets it, the mapping is saved -> `/segue/learned <kind> <number>`"),
    Address(f"{PREFIX}/sync", None, ("n",), 1, False, f"{PREFIX}/synced",
            "-> `/segue/synced n` once every command sent before it has been queued"),
)

BY_PATH = {a.path: a for a in ADDRESSES}

# Replies and events segue sends (documented with the table).
OUTGOING: tuple[tuple[str, str], ...] = (
    (f"{PREFIX}/done", "`<cmd> <id>`: a command was accepted (id: the take's or request's number)"),
    (f"{PREFIX}/fail", "`<cmd> <message> <code> [id]`: refused at once (no id), or failed later, after its "
                       "`/segue/done` (with its id); `code` is machine-readable"),
    (f"{PREFIX}/take/queued", "`<id> <start sample> <wav path>` (to `/segue/notify` clients)"),
    (f"{PREFIX}/take/started", "`<id> <start sample>`"),
    (f"{PREFIX}/take/progress", "`<id> <generated s> <played s>`"),
    (f"{PREFIX}/take/done", "`<wav path> <id> <state>`: the take is finished and its files are complete"),
    (f"{PREFIX}/take/error", "`<id> <code> <message>`"),
    (f"{PREFIX}/learned", "`<note|cc> <number>`: MIDI learn mapped it and saved the mapping"),
)

# Every field name of the vocabulary: a leading argument equal to one of them starts the pairs when what is left is
# pairs (so `/segue/stop fade 0.2` stops all takes and `/segue/generate bars 4` has no prompt, while in
# `/segue/continue take take 3` the first `take` is the source).
FIELD_NAMES = frozenset({"prompt", "start", "seconds", "bars", "endless", "seed", "temperature", "top_k", "top_p",
                         "cfg", "lane", "source", "take", "path", "last_seconds", "last_bars", "sample_rate",
                         "channels", "fade", "bpm", "beats_per_bar", "beat", "prompt_seconds", "prompt_bars", "model",
                         "melody", "melody_take", "melody_path", "melody_last_seconds", "melody_last_bars"})

INTEGER_KEYS = frozenset({"take", "melody_take", "seed", "top_k", "lane", "beats_per_bar", "sample_rate", "channels",
                          "count", "n", "on", "port"})
BOOL_KEYS = frozenset({"endless"})


class OscError(Exception):
    """A message that does not fit its address: answered with /segue/fail."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _coerce(key: str, v):
    if key in BOOL_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool) and v in (0, 1):
        return bool(v)
    if key in INTEGER_KEYS and isinstance(v, float) and v.is_integer():
        return int(v)
    if key == "start" and isinstance(v, float) and v.is_integer():
        return int(v)  # an absolute clock sample sent by a float-only sender
    return v


def to_request(path: str, args: list) -> tuple[Address, dict]:
    """An OSC message -> (its address, a request dict for the vocabulary; for controls, the named arguments)."""
    addr = BY_PATH.get(path)
    if addr is None:
        raise OscError("unknown_command", f"no OSC address {path}; segue answers {', '.join(BY_PATH)}")
    args = list(args)
    fields: dict = {}
    for name in addr.positional:
        if not args or (isinstance(args[0], str) and args[0] in FIELD_NAMES and len(args) % 2 == 0):
            break  # leading arguments may be left out: a field name that can start the pairs does
        fields[name] = _coerce(name, args.pop(0))
    if args:
        if not addr.pairs:
            raise OscError("bad_request", f"{path} takes at most {len(addr.positional)} arguments, got "
                                          f"{len(addr.positional) + len(args)}")
        if len(args) % 2:
            raise OscError("bad_request", f"{path}: after the leading arguments come `key value` pairs; "
                                          f"{args[-1]!r} has no value")
        for key, value in zip(args[::2], args[1::2]):
            if not isinstance(key, str):
                raise OscError("bad_type", f"{path}: a key must be a string, got {key!r}")
            if key in fields or (key == "cmd" and addr.cmd is not None):
                raise OscError("bad_request", f"{path}: '{key}' is given twice")
            fields[key] = _coerce(key, value)
    if any(p not in fields for p in addr.positional[: addr.required]):  # neither leading nor as a pair
        need = " ".join(f"<{p}>" for p in addr.positional[: addr.required])
        raise OscError("missing", f"{path} needs {need}")
    if addr.cmd is not None:
        fields["cmd"] = addr.cmd
    return addr, fields


def table_markdown() -> str:
    """The README's OSC reference, from this table."""
    lines = ["| address | arguments | |", "|---|---|---|"]
    for a in ADDRESSES:
        pos = " ".join(f"<{p}>" if i < a.required else f"[{p}]" for i, p in enumerate(a.positional))
        pos += " [key value]..." if a.pairs else ""
        lines.append(f"| `{a.path}` | {pos.strip() or '-'} | {a.doc} |")
    lines += ["", "| segue sends | arguments |", "|---|---|"]
    lines += [f"| `{path}` | {doc} |" for path, doc in OUTGOING]
    return "\n".join(lines)
