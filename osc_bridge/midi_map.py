"""A MIDI mapping (TOML): notes -> commands, CCs -> settings with range and curve, program changes -> prompt
presets. Loading checks every entry against the command vocabulary, so a bad mapping fails at start, not on stage.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from segue.daemon.vocabulary import SET_KEYS, CommandError, check_value, parse
from segue.models.errors import SegueError

DEFAULT_MAP = Path(__file__).with_name("default_midi.toml")
# Where MIDI learn saves, and what loads by default when it exists.
USER_MAP = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "segue" / "midi.toml"
CURVES = ("linear", "exp")


class MappingError(SegueError):
    pass


@dataclass(frozen=True)
class CcRule:
    key: str  # the `set` key it moves
    lo: float
    hi: float
    curve: str = "linear"
    channel: int | None = None  # 1..16, None = any

    def value(self, cc: int):
        x = max(0, min(127, cc)) / 127.0
        if self.curve == "exp" and self.lo > 0:
            v = self.lo * math.exp(x * math.log(self.hi / self.lo))
        else:
            v = self.lo + x * (self.hi - self.lo)
        return round(v) if self.key == "top_k" else round(v, 4)


@dataclass(frozen=True)
class MidiMap:
    notes: dict  # note -> (request dict, channel or None)
    ccs: dict  # cc number -> CcRule
    programs: dict  # program -> `set` values

    def on_note(self, note: int, channel: int) -> dict | None:
        """Note-on (channel 1..16) -> a request, or None when the note is not mapped."""
        hit = self.notes.get(note)
        if hit is None or (hit[1] is not None and hit[1] != channel):
            return None
        return dict(hit[0])

    def on_cc(self, cc: int, value: int, channel: int) -> dict | None:
        rule = self.ccs.get(cc)
        if rule is None or (rule.channel is not None and rule.channel != channel):
            return None
        return {"cmd": "set", rule.key: rule.value(value)}

    def on_program(self, program: int) -> dict | None:
        preset = self.programs.get(program)
        return None if preset is None else dict(preset, cmd="set")

    def with_note(self, note: int, request: dict, channel: int | None = None) -> "MidiMap":
        return MidiMap(dict(self.notes) | {note: (dict(request), channel)}, self.ccs, self.programs)

    def with_cc(self, cc: int, rule: CcRule) -> "MidiMap":
        return MidiMap(self.notes, dict(self.ccs) | {cc: rule}, self.programs)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def save_map(m: MidiMap, path: str | Path) -> None:
    """Write `m` as a mapping file `load_map` reads back (atomically: a crash never leaves half a file)."""
    lines = ["# segue MIDI mapping (written by MIDI learn; edit freely)", "", "[notes]"]
    for note, (req, ch) in sorted(m.notes.items()):
        fields = dict(req) | ({"channel": ch} if ch is not None else {})
        lines.append(f"{note} = {{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in fields.items()) + " }")
    for cc, r in sorted(m.ccs.items()):
        lines += ["", f"[cc.{cc}]", f"set = {_toml_value(r.key)}", f"min = {r.lo!r}", f"max = {r.hi!r}",
                  f"curve = {_toml_value(r.curve)}"] + ([f"channel = {r.channel}"] if r.channel else [])
    lines += ["", "[programs]"]
    for prog, preset in sorted(m.programs.items()):
        lines.append(f"{prog} = {{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in preset.items()) + " }")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def learn_rule(kind: str, fields: dict) -> dict | CcRule:
    """What MIDI learn will map: for `note`, a request (checked); for `cc`, a rule from set/min/max/curve."""
    where = f"learn {kind}"
    if kind == "note":
        try:
            parse(dict(fields), None)
        except CommandError as exc:
            raise MappingError(f"{where}: {exc.message}") from exc
        return dict(fields)
    if kind == "cc":
        f = dict(fields)
        target, lo, hi, curve = f.pop("set", None), f.pop("min", None), f.pop("max", None), f.pop("curve", "linear")
        if f:
            raise MappingError(f"{where}: unknown key(s) {', '.join(sorted(f))}; use set, min, max, curve")
        return _cc_rule(where, target, lo, hi, curve, None)
    raise MappingError(f"learn what? 'note' or 'cc', got {kind!r}")


def _channel(where: str, entry: dict) -> int | None:
    ch = entry.pop("channel", None)
    if ch is not None and (not isinstance(ch, int) or not 1 <= ch <= 16):
        raise MappingError(f"{where}: channel must be 1 to 16, got {ch!r}")
    return ch


def _cc_rule(where: str, target, lo, hi, curve, ch: int | None) -> CcRule:
    if target not in SET_KEYS or target in ("prompt", "start", "endless"):
        raise MappingError(f"{where}: 'set' must be a numeric setting, got {target!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi)):
        raise MappingError(f"{where}: give numeric 'min' and 'max'")
    if not all(math.isfinite(v) for v in (lo, hi)):  # the range itself is checked at both ends below
        raise MappingError(f"{where}: 'min' and 'max' must be finite numbers, got {lo} and {hi}")
    if curve not in CURVES or (curve == "exp" and (lo <= 0 or hi <= 0)):
        raise MappingError(f"{where}: curve must be linear or exp (exp needs min and max above 0)")
    rule = CcRule(target, float(lo), float(hi), curve, ch)
    for end in (0, 127):
        try:
            check_value(target, rule.value(end))
        except CommandError as exc:
            raise MappingError(f"{where}: {exc.message}") from exc
    return rule


def _number_key(where: str, key: str, top: int) -> int:
    if not key.isdigit() or not 0 <= int(key) <= top:
        raise MappingError(f"{where}: '{key}' is not a MIDI number 0 to {top}")
    return int(key)


def load_map(path: str | Path | None = None) -> MidiMap:
    """The mapping at `path` (default: the one MIDI learn saved, else the one shipped with segue), checked."""
    path = Path(path) if path else (USER_MAP if USER_MAP.exists() else DEFAULT_MAP)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise MappingError(f"cannot read the MIDI mapping {path} ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise MappingError(f"{path} is not valid TOML ({exc})") from exc
    unknown = set(data) - {"notes", "cc", "programs"}
    if unknown:
        raise MappingError(f"{path}: unknown section(s) {', '.join(sorted(unknown))}; use notes, cc, programs")
    notes, ccs, programs = {}, {}, {}
    for key, entry in data.get("notes", {}).items():
        where = f"{path}: notes.{key}"
        if not isinstance(entry, dict):
            raise MappingError(f"{where}: give a table such as {{ cmd = \"stop\" }}")
        entry = dict(entry)
        ch = _channel(where, entry)
        try:
            parse(entry, None)  # the vocabulary's own checks (a `pcm` source cannot be mapped)
        except CommandError as exc:
            raise MappingError(f"{where}: {exc.message}") from exc
        notes[_number_key(where, key, 127)] = (entry, ch)
    for key, entry in data.get("cc", {}).items():
        where = f"{path}: cc.{key}"
        entry = dict(entry)
        ch = _channel(where, entry)
        target, lo, hi = entry.pop("set", None), entry.pop("min", None), entry.pop("max", None)
        curve = entry.pop("curve", "linear")
        if entry:
            raise MappingError(f"{where}: unknown key(s) {', '.join(sorted(entry))}; use set, min, max, curve, "
                               "channel")
        ccs[_number_key(where, key, 127)] = _cc_rule(where, target, lo, hi, curve, ch)
    for key, entry in data.get("programs", {}).items():
        where = f"{path}: programs.{key}"
        try:
            parse(dict(entry, cmd="set"), None)
        except (CommandError, TypeError) as exc:
            raise MappingError(f"{where}: {getattr(exc, 'message', exc)}") from exc
        programs[_number_key(where, key, 127)] = dict(entry)
    return MidiMap(notes, ccs, programs)
