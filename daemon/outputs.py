"""Where `segue generate` and `segue codec` write, checked before anything is written or any model loads.

An output must be a file name with its format's extension (segue writes 32-bit float WAV and .npy codes), in a
folder that exists; and no output may be an input (the recording continued, the codes decoded, a take's files) or
another output, compared as resolved paths and, when both exist, as the same file on disk (hard links, a
case-insensitive file system).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from segue.daemon.takes import TAKE_STEM
from segue.models.errors import RequestError

# What each kind of output is, by extension: what segue writes into it.
FORMATS = {".wav": "32-bit float WAV", ".npy": "a numpy array of codes"}


def output_file(text: str, flag: str, suffix: str) -> Path:
    """The path given to `flag` (`--out`, `--codes-out`), checked: not given as a folder (a trailing separator, or
    an existing folder), ending in `suffix` (any case), in a folder that exists. Raises RequestError."""
    seps = tuple(s for s in (os.sep, os.altsep) if s)
    if text.endswith(seps):
        raise RequestError(f"{flag} {text} ends in a path separator, so it names a folder; give a file name, e.g. "
                           f"{text}{'out' if suffix == '.wav' else 'codes'}{suffix}")
    out = Path(text)
    if out.is_dir():
        raise RequestError(f"{flag} {out} is a folder; give a file name, e.g. {out / ('out' + suffix)}")
    if out.suffix.lower() != suffix:
        fixed = out.with_suffix(suffix) if out.suffix else out.with_name(out.name + suffix)
        hint = f"name it {fixed.name}" if not fixed.exists() else f"give a new file name ending in {suffix}"
        raise RequestError(f"{flag} {out} does not end in {suffix}: segue writes {FORMATS[suffix]} there; {hint}")
    if not out.parent.exists():
        raise RequestError(f"cannot write {flag} {out}: folder {out.parent} does not exist")
    take = _TAKE_FILE.match(out.name)
    if take and (out.parent / f"{take.group(1)}.json").is_file():
        raise RequestError(f"{flag} {out} is a file of the daemon's take {take.group(1)} (its sidecar is beside it): "
                           "writing it would destroy the take; give another file name")
    return out


# A daemon take's files: NNNN-kind.wav, .codes.npy, .prompt.wav, .melody.wav, .json (see daemon/takes.py).
_TAKE_FILE = re.compile(rf"^({TAKE_STEM})(?:\.prompt|\.melody|\.codes)?\.(?:wav|npy|json)$", re.IGNORECASE)


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def refuse_overwrites(inputs: dict[str, str | Path | None], outputs: list[tuple[str, str | Path | None, str]]) -> None:
    """Refuse any output that is one of the inputs or another output. `inputs`: what each is (`--continue`, "the
    take's codes") -> path; `outputs`: (what it is, path, the flag that names it). None paths are skipped. Raises
    RequestError naming both and the flag to change."""
    ins = [(what, Path(p)) for what, p in inputs.items() if p is not None]
    outs = [(what, Path(p), flag) for what, p, flag in outputs if p is not None]
    for i, (what, out, flag) in enumerate(outs):
        for other, path in ins:
            if _same(out, path):
                raise RequestError(f"{what} {out} is {other} {path}: writing it would destroy it; give {flag} "
                                   "another file name")
        for other, path, _ in outs[:i]:
            if _same(out, path):
                raise RequestError(f"{what} {out} is also {other}: each output needs its own file; give {flag} "
                                   "another file name")


def codes_outputs(codes_out: Path | None) -> list[tuple[str, Path | None, str]]:
    """`--codes-out C.npy` and the sidecar written beside it (`C.json`), as outputs for `refuse_overwrites`."""
    from segue.daemon.codes_file import sidecar_path

    if codes_out is None:
        return []
    return [("--codes-out", codes_out, "--codes-out"),
            ("the sidecar of --codes-out", sidecar_path(codes_out), "--codes-out")]
