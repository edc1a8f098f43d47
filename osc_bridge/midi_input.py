"""MIDI in (mido over python-rtmidi, through JACK or ALSA): mapped notes, CCs and program changes become the
daemon's commands; MIDI clock (24 ppqn) sets the tempo and keeps the beat in phase; Start / Stop / Continue drive
the transport, so hardware or a DAW can lead.

Runs on rtmidi's own thread, which only parses and queues commands (dispatch.answer). A storm of CCs is
coalesced: each setting is sent at most every 20 ms, the latest value winning, and a flusher thread sends the
last one. Sysex, running-status noise and unmapped messages are ignored.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from segue.daemon.dispatch import backend
from segue.daemon.engine import Engine
from segue.daemon.service import Service
from segue.models.errors import SegueError
from segue.osc_bridge.midi_map import USER_MAP, MidiMap, learn_rule, save_map

log = logging.getLogger("segue.midi")

APIS = {"jack": "UNIX_JACK", "alsa": "LINUX_ALSA"}
CC_INTERVAL = 0.02  # seconds between two `set`s of one setting
PPQN = 24


class MidiError(SegueError):
    pass


def alsa_sequencer() -> bool:
    return Path("/dev/snd/seq").exists()


def _backend(api: str):
    os.environ.setdefault("JACK_NO_START_SERVER", "1")  # never start a JACK server as a side effect
    import mido

    if api == "auto":
        api = "alsa" if alsa_sequencer() else "jack"
    if api not in APIS:
        raise MidiError(f"MIDI API must be jack, alsa or auto, got {api!r}")
    return mido.Backend(f"mido.backends.rtmidi/{APIS[api]}", load=True), api


@contextmanager
def _quiet_stderr():
    """libjack reports a missing server on the C stderr, line after line; a listing says it once, itself."""
    sys.stderr.flush()
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def list_midi_inputs() -> str:
    """The MIDI inputs each API offers (what `--midi NAME --midi-api API` can open), or why an API offers none."""
    lines = ["MIDI inputs (--midi NAME --midi-api API):"]
    for api in APIS:
        if api == "alsa" and not alsa_sequencer():
            lines.append("  alsa: none (no ALSA sequencer: /dev/snd/seq is missing)")
            continue
        try:
            with _quiet_stderr():
                names = _backend(api)[0].get_input_names()
        except Exception as exc:  # rtmidi's errors: no JACK server, a sequencer that cannot be opened
            lines.append(f"  {api}: none ({exc})")
            continue
        lines.append(f"  {api}: " + ("none (no input ports)" if not names else ""))
        lines += [f"    {n}" for n in names]
    return "\n".join(lines)


class MidiInput(Service):
    """`ports`: "segue" (a virtual input port of that name), "all", or a name substring of existing ports."""

    def __init__(self, engine: Engine, mapping: MidiMap, ports: str = "segue", api: str = "auto",
                 save_to: Path | None = None):
        super().__init__("segue-midi")
        self.engine, self.map = backend(engine), mapping
        self.save_to = save_to or USER_MAP  # where MIDI learn writes the mapping
        self._learning: tuple | None = None  # (kind, rule, done callback)
        self.backend, self.api = _backend(api)
        self.inputs = []
        self.received = 0
        self._ticks: list[float] = []  # arrival times of the latest clock ticks (one beat's worth)
        self._tick_count: int | None = None  # ticks since Start; None: no transport position known
        self._sent_bpm = 0.0
        self._sent_at = 0.0
        self._cc_last: dict[str, float] = {}
        self._cc_pending: dict[str, dict] = {}
        try:
            if ports == "segue":
                self.inputs.append(self.backend.open_input("segue", virtual=True, client_name="segue",
                                                           callback=self._on))
            else:
                names = self.backend.get_input_names()
                chosen = names if ports == "all" else [n for n in names if ports.lower() in n.lower()]
                if not chosen:
                    raise MidiError(f"no MIDI input matches {ports!r}; inputs: {', '.join(names) or 'none'}")
                self.inputs = [self.backend.open_input(n, callback=self._on) for n in chosen]
        except MidiError:
            raise
        except Exception as exc:  # rtmidi's errors: no JACK server, no ALSA sequencer...
            raise MidiError(f"cannot open MIDI input through {self.api} ({exc}); start JACK or use --midi none"
                            ) from exc

    def learn(self, kind: str, fields: dict, done: Callable[[str, int], None]) -> None:
        """The next note-on (`kind` "note") or CC ("cc") gets this action; the mapping is then saved and
        `done(kind, number)` called (on the MIDI thread). Raises MappingError for an action that cannot be mapped."""
        self._learning = (kind, learn_rule(kind, fields), done)

    def _learned(self, msg) -> bool:
        kind, rule, done = self._learning
        if kind == "note" and msg.type == "note_on" and msg.velocity > 0:
            number, self.map = msg.note, self.map.with_note(msg.note, rule)
        elif kind == "cc" and msg.type == "control_change":
            number, self.map = msg.control, self.map.with_cc(msg.control, rule)
        else:
            return False
        self._learning = None
        save_map(self.map, self.save_to)
        log.warning("MIDI learn: %s %d mapped, saved to %s", kind, number, self.save_to)
        done(kind, number)
        return True

    def event(self, ev: dict) -> None:
        """MIDI input answers nothing: events go out through the other transports."""

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.inputs]

    @property
    def label(self) -> str:
        """For the ready line: the ports and the API."""
        return f"{','.join(self.names)} ({self.api})"

    # -- rtmidi's thread ------------------------------------------------------------------------------------------
    def _on(self, msg) -> None:
        try:
            stamp = self.engine.now()  # time-sensitive commands count from the message's arrival
            self.received += 1
            if self._learning is not None and self._learned(msg):
                return
            t = msg.type
            if t == "clock":
                self._clock(time.monotonic(), stamp)
            elif t == "start":
                self._tick_count, self._ticks = 0, []
            elif t == "continue":
                self._tick_count = self._tick_count or 0
            elif t == "stop":
                self._tick_count = None
                self._submit({"cmd": "stop"}, received=stamp)
            elif t == "note_on" and msg.velocity > 0:
                self._submit(self.map.on_note(msg.note, msg.channel + 1), received=stamp)
            elif t == "control_change":
                self._cc(self.map.on_cc(msg.control, msg.value, msg.channel + 1))
            elif t == "program_change":
                self._submit(self.map.on_program(msg.program))
        except Exception:  # a bad message must never stop MIDI input
            log.exception("MIDI message %s", msg)

    def _submit(self, request: dict | None, origin: str = "midi", received: float | None = None) -> None:
        if request is None:
            return
        reply = self.engine.answer(request, origin=origin, received=received)
        if not reply["ok"]:
            log.warning("MIDI %s refused: %s", request.get("cmd"), reply["message"])

    def _cc(self, request: dict | None) -> None:
        if request is None:
            return
        key = next(k for k in request if k != "cmd")
        now = time.monotonic()
        if now - self._cc_last.get(key, 0.0) >= CC_INTERVAL:
            self._cc_last[key] = now
            self._cc_pending.pop(key, None)
            self._submit(request)
        else:
            self._cc_pending[key] = request  # the flusher sends the latest one

    def _clock(self, now: float, stamp: float | None = None) -> None:
        ticks = self._ticks
        ticks.append(now)
        if len(ticks) > PPQN + 1:
            del ticks[0]
        if self._tick_count is not None:
            self._tick_count += 1
        if len(ticks) < PPQN // 2:
            return
        bpm = 60.0 / (PPQN * (ticks[-1] - ticks[0]) / (len(ticks) - 1))
        phase_due = self._tick_count is not None and self._tick_count % PPQN == 1  # a beat's first tick
        changed = abs(bpm - self._sent_bpm) > 0.5 and now - self._sent_at > 0.25
        if changed or (phase_due and now - self._sent_at > 1.9):  # and re-anchor the phase every two seconds
            req = {"cmd": "tempo", "bpm": round(bpm, 2)}
            if self._tick_count is not None:
                req["beat"] = (self._tick_count - 1) / PPQN  # the first tick after Start is beat 0
            self._sent_bpm, self._sent_at = bpm, now
            self._submit(req, origin="midi_clock", received=stamp)

    # -- the flusher thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(CC_INTERVAL):
            for key in list(self._cc_pending):
                req = self._cc_pending.pop(key, None)
                if req is not None:
                    self._cc_last[key] = time.monotonic()
                    self._submit(req)

    def _release(self) -> None:
        for p in self.inputs:
            try:
                p.close()
            except Exception:
                pass
