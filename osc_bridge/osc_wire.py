"""A datagram checked against the OSC 1.0 encoding before python-osc parses it.

python-osc (1.9.3) trusts what it reads: a bundle element of size -4 makes its bundle parser step backwards
forever, logging a warning each turn; an unknown type tag is skipped with a warning and the message runs with what
is left of it (`/segue/stop ,x <take>` stopped every take); arguments missing at the end of a message are not
always noticed; an invalid UTF-8 string raises from deep inside. `check_packet` walks the whole datagram first and
refuses it, with the reason, unless every byte is where OSC 1.0 puts it: padded strings of valid UTF-8, exactly the
arguments the type tags announce and nothing after them, bundle elements of positive sizes that are multiples of 4
and fit, nesting at most `MAX_DEPTH` deep. A datagram it passes is parsed by python-osc as the sender meant it.

Sources: the OSC 1.0 specification (opensoundcontrol.stanford.edu/spec-1_0.html): atomic data types, OSC-string
padding, bundles, and `pythonosc/osc_message.py` for the tags python-osc reads.
"""

from __future__ import annotations

import struct

BUNDLE = b"#bundle\0"
MAX_DEPTH = 8  # bundles inside bundles: a real sender nests one or two
TAGS = "ifhdsbTFN"  # the argument types segue reads (OSC 1.0's i f s b, and the common h d T F N)
_SIZE = {"i": 4, "f": 4, "h": 8, "d": 8}


class OscWireError(Exception):
    """A datagram that is not exactly valid OSC. `name`: the command it was for when its address could be read
    (else "*"); `code`: bad_request (the encoding) or bad_type (a type tag segue does not read)."""

    def __init__(self, message: str, name: str = "*", code: str = "bad_request"):
        super().__init__(message)
        self.message, self.name, self.code = message, name, code


def _string(data: bytes, at: int, end: int, what: str) -> tuple[str, int]:
    """An OSC-string at `at` -> (text, index after its padding)."""
    nul = data.find(b"\0", at, end)
    if nul < 0:
        raise OscWireError(f"{what} has no terminating NUL")
    after = nul + 4 - (nul % 4)  # one to four NULs, to a multiple of 4
    if after > end or data[nul:after] != b"\0" * (after - nul):
        raise OscWireError(f"{what} is not padded to 4 bytes with NULs")
    try:
        return data[at:nul].decode("utf-8"), after
    except UnicodeDecodeError:
        raise OscWireError(f"{what} is not valid UTF-8") from None


def _message(data: bytes, at: int, end: int) -> None:
    address, i = _string(data, at, end, "the address")
    if not address.startswith("/"):
        raise OscWireError(f"the address must start with '/', got {address[:40]!r}")
    name = address.rsplit("/", 1)[-1][:40] or "*"
    if i == end:
        return  # no type tag string: no arguments (OSC 1.0 allows it)
    try:
        tags, i = _string(data, i, end, "the type tag string")
    except OscWireError as exc:
        raise OscWireError(exc.message, name) from None
    if not tags.startswith(","):
        raise OscWireError("the type tag string must start with ','", name)
    for t in tags[1:]:
        if t not in TAGS:
            raise OscWireError(f"type tag {t!r} is not one segue reads ({' '.join(TAGS)}); nothing was run",
                               name, "bad_type")
        if t in _SIZE:
            i += _SIZE[t]
        elif t == "s":
            try:
                _, i = _string(data, i, end, "a string argument")
            except OscWireError as exc:
                raise OscWireError(exc.message, name) from None
            continue
        elif t == "b":
            if i + 4 > end:
                raise OscWireError("a blob's size is missing", name)
            (n,) = struct.unpack(">i", data[i : i + 4])
            if n < 0:
                raise OscWireError(f"a blob's size is negative ({n})", name)
            i += 4 + n + (-n % 4)
        if i > end:
            raise OscWireError(f"the arguments end before the type tags {tags!r} say", name)
    if i != end:
        raise OscWireError(f"{end - i} bytes follow the arguments the type tags {tags!r} announce", name)


def _element(data: bytes, at: int, end: int, depth: int) -> None:
    if data.startswith(BUNDLE, at):
        if depth >= MAX_DEPTH:
            raise OscWireError(f"bundles are nested more than {MAX_DEPTH} deep")
        i = at + 16  # the marker and the time tag
        if i > end:
            raise OscWireError("a bundle ends inside its time tag")
        while i < end:
            if i + 4 > end:
                raise OscWireError("a bundle element's size is cut off")
            (n,) = struct.unpack(">i", data[i : i + 4])
            if n <= 0 or n % 4 or i + 4 + n > end:
                raise OscWireError(f"a bundle element's size ({n}) must be a positive multiple of 4 that fits in "
                                   f"the {end - i - 4} bytes left")
            _element(data, i + 4, i + 4 + n, depth + 1)
            i += 4 + n
    else:
        _message(data, at, end)


def check_packet(data: bytes) -> None:
    """Raise `OscWireError` unless `data` is one valid OSC 1.0 message or bundle whose arguments segue reads."""
    if not data or len(data) % 4:
        raise OscWireError(f"an OSC packet is a non-empty multiple of 4 bytes, got {len(data)}")
    _element(data, 0, len(data), 0)
