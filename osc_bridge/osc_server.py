"""The OSC transport: a UDP server that turns messages (addresses.py) into the daemon's commands, queues them for
the engine, and answers the sender in scsynth's manner.

- Every message gets one answer at once: `/segue/done <cmd> <id>` when accepted, `/segue/fail <cmd> <message>
  <code>` when refused. A command the engine refuses later (an error event for its id) gets
  `/segue/fail <cmd> <message> <code> <id>`, always after its `/segue/done`.
- Each message is stamped with the audio clock as it arrives: `tempo` anchors its beat there and `stop` counts
  from there, however busy the engine is.
- `/segue/notify 1` registers the sender for take events; `/segue/sync n` -> `/segue/synced n`.
- A bundle whose time tag is in the future is scheduled on the audio clock (never by sleeping here): a take
  without its own `start` starts at that time, `tempo` and `stop` act at it, `set` is held until it.
- The receive thread only parses and queues. A flood is cut by a per-sender rate limit (answered with
  `/segue/fail ... rate_limited` at most once a second), so the engine and the audio never notice.
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from collections import OrderedDict

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket, ParseError

from segue.daemon.dispatch import Transport, backend
from segue.daemon.engine import Engine
from segue.osc_bridge.addresses import PREFIX, OscError, to_request
from segue.osc_bridge.osc_wire import OscWireError, check_packet

log = logging.getLogger("segue.osc")

MAX_PACKET = 65507  # the largest UDP payload; a larger OSC packet cannot arrive whole anyway
RATE_LIMIT = 500  # messages per second per sender
TOTAL_RATE = 2000  # messages per second from all senders together (40 senders under RATE_LIMIT got 13,000 through)
MAX_NOTIFY = 32  # registered event listeners
NOTIFY_IDLE_S = 60.0  # a listener whose sender has been quiet this long gives its place to a new one when all are taken
MAX_REPLY_PORTS = 1024  # senders remembered with a reply port
MAX_PENDING = 4096  # ids whose sender is remembered for later /segue/fail


def encode(address: str, *args) -> bytes:
    b = OscMessageBuilder(address)
    for a in args:
        if isinstance(a, bool):
            b.add_arg(int(a))
        elif a is None:
            b.add_arg("")
        else:
            b.add_arg(a)
    return b.build().dgram


class OscServer(Transport):
    def __init__(self, engine: Engine | None, host: str = "127.0.0.1", port: int = 9000):
        """Binds at once (raises OSError when it cannot); `engine` may come later, through `attach`, before
        `start`."""
        super().__init__("segue-osc")
        self.engine = None if engine is None else backend(engine)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.address = self.sock.getsockname()
        # Event listeners: address -> [the sender that registered it, when that sender was last heard from].
        self.listeners: dict[tuple[str, int], list] = {}
        # Senders that cannot receive on the port they send from (Max's udpsend/udpreceive pair, Pd's netsend)
        # name a reply port with `/segue/notify 1 PORT`: that sender's answers go there (its host, that port).
        # Per sender, never per host: another client on the same host keeps its own answers.
        self.reply_ports: OrderedDict[tuple[str, int], int] = OrderedDict()
        self._total = [0.0, 0]  # window start, messages from all senders in it
        self.pending: OrderedDict[int, tuple[tuple[str, int], str]] = OrderedDict()  # id -> (sender, cmd)
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()  # events from the engine thread
        self._rate: dict[tuple[str, int], list] = {}  # sender -> [window start, count, last fail sent]
        self.dropped = 0  # messages refused by the rate limit
        self._logged = 0.0  # when a packet's unexpected failure was last logged
        self.midi = None  # the MIDI input, for /segue/learn (set by serve)

    def attach(self, engine: Engine) -> None:
        self.engine = backend(engine)

    # Called from the engine thread: hand over only.
    def event(self, ev: dict) -> None:
        self.outbox.put(ev)

    def _release(self) -> None:
        self.sock.close()

    # -- the server thread ------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.sock.recvfrom(MAX_PACKET)
            except socket.timeout:
                data = None
            except OSError:
                if self._stop.is_set():
                    return
                continue
            if data is not None:
                received = self.engine.now()
                try:
                    self._packet(data, sender, received)
                except Exception:  # never let one packet take the transport down (logged once a second)
                    now = time.monotonic()
                    if now - self._logged >= 1.0:
                        self._logged = now
                        log.exception("OSC packet from %s", sender)
            self._flush_events()

    def _reply_to(self, sender: tuple[str, int]) -> tuple[str, int]:
        port = self.reply_ports.get(sender)
        return sender if port is None else (sender[0], port)

    def _send(self, to: tuple[str, int], address: str, *args) -> None:
        to = self._reply_to(to)
        try:
            self.sock.sendto(encode(address, *args), to)
        except OSError:
            pass  # the sender is gone: nothing is owed to it

    def _limited(self, sender: tuple[str, int]) -> bool:
        now = time.monotonic()
        if len(self._rate) > 4096:  # many senders (or forged ones): forget those quiet for a second
            self._rate = {k: v for k, v in self._rate.items() if now - v[0] < 1.0}
        r = self._rate.setdefault(sender, [now, 0, 0.0])
        if now - r[0] >= 1.0:
            r[0], r[1] = now, 0
        r[1] += 1
        total = self._total
        if now - total[0] >= 1.0:
            total[0], total[1] = now, 0
        total[1] += 1
        if r[1] <= RATE_LIMIT and total[1] <= TOTAL_RATE:
            for listener in self.listeners.values():  # a sender heard from keeps its listener alive
                if listener[0] == sender:
                    listener[1] = now
            return False
        self.dropped += 1
        if now - r[2] >= 1.0:
            r[2] = now
            why = (f"more than {RATE_LIMIT} messages a second" if r[1] > RATE_LIMIT else
                   f"more than {TOTAL_RATE} messages a second from all senders")
            self._send(sender, f"{PREFIX}/fail", "*", f"{why}; slow down", "rate_limited")
        return True

    def _packet(self, data: bytes, sender: tuple[str, int], received: float | None = None) -> None:
        try:
            check_packet(data)  # python-osc parses only what is exactly valid (see osc_wire.py)
            timed = OscPacket(data).messages
        except OscWireError as exc:
            if not self._limited(sender):
                self._send(sender, f"{PREFIX}/fail", exc.name, f"not valid OSC: {exc.message}", exc.code)
            return
        except ParseError as exc:
            if not self._limited(sender):
                self._send(sender, f"{PREFIX}/fail", "*", f"not an OSC packet ({exc})", "bad_request")
            return
        if not timed:  # a valid bundle with nothing in it: still one answer
            if not self._limited(sender):
                self._send(sender, f"{PREFIX}/fail", "*", "the bundle holds no message", "bad_request")
            return
        for tm in timed:
            if self._limited(sender):
                return
            self._message(tm.message.address, list(tm.message.params), tm.time, sender, received)

    def _message(self, path: str, args: list, when: float, sender: tuple[str, int],
                 received: float | None = None) -> None:
        name = path.rsplit("/", 1)[-1]
        try:
            addr, fields = to_request(path, args)
        except OscError as exc:
            self._send(sender, f"{PREFIX}/fail", name, exc.message, exc.code)
            return
        if addr.cmd is None:
            self._control(addr.path, fields, sender)
            return
        if addr.cmd == "takes":
            count = fields.pop("count", 10)
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 1000:
                code = "out_of_range" if isinstance(count, int) and not isinstance(count, bool) else "bad_type"
                self._send(sender, f"{PREFIX}/fail", "takes", f"count must be a whole number 0 to 1000, got {count!r}",
                           code)
                return
        at = self._clock_sample(when)
        reply = self.engine.answer(fields, None, at, origin="osc", received=received)
        if not reply["ok"]:
            self._send(sender, f"{PREFIX}/fail", addr.cmd, reply["message"], reply["code"])
        elif addr.cmd == "status":
            self._send(sender, addr.reply, *status_args(reply["status"]))
        elif addr.cmd == "takes":
            folder = self.engine.takes_dir
            paths = [str(folder / t["wav"]) for t in reply["takes"][:count] if "wav" in t]
            self._send(sender, addr.reply, *paths)
        else:
            rid = reply["id"]
            self.pending[rid] = (sender, addr.cmd)
            while len(self.pending) > MAX_PENDING:
                self.pending.popitem(last=False)
            self._send(sender, f"{PREFIX}/done", addr.cmd, rid)

    def _clock_sample(self, when: float) -> int | None:
        """An OSC time (seconds since the epoch) -> the audio clock sample heard then; None for 'now'."""
        ahead = when - time.time()
        if ahead <= 0.001:
            return None
        return self.engine.clock_sample(ahead)

    def _control(self, path: str, fields: dict, sender: tuple[str, int]) -> None:
        if path.endswith("/learn"):
            self._learn(fields, sender)
        elif path.endswith("/notify"):
            on, port = fields.get("on"), fields.get("port")
            if on not in (0, 1) or isinstance(on, float):
                self._send(sender, f"{PREFIX}/fail", "notify", f"notify takes 1 (on) or 0 (off), then optionally "
                                                               f"the port to answer to; got {on!r}", "bad_type")
                return
            if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
                code = "out_of_range" if isinstance(port, int) and not isinstance(port, bool) else "bad_type"
                self._send(sender, f"{PREFIX}/fail", "notify", f"the port to answer to must be 1 to 65535, got "
                                                               f"{port!r}", code)
                return
            now = time.monotonic()
            if port is not None:
                old = self._reply_to(sender)
                self.reply_ports[sender] = port
                self.reply_ports.move_to_end(sender)
                while len(self.reply_ports) > MAX_REPLY_PORTS:
                    self.reply_ports.popitem(last=False)
                if old in self.listeners and self.listeners[old][0] == sender:
                    del self.listeners[old]  # the sender's listener moves with its reply port: events never go twice
            to = self._reply_to(sender)
            if on and to not in self.listeners:
                if len(self.listeners) >= MAX_NOTIFY and not self._free_a_listener(now):
                    self._send(sender, f"{PREFIX}/fail", "notify", f"{MAX_NOTIFY} listeners already, all heard from "
                                                                   f"in the last {NOTIFY_IDLE_S:g} s", "busy")
                    return
                self.listeners[to] = [sender, now]
            elif on:
                self.listeners[to] = [sender, now]  # registering again renews it
            elif to in self.listeners and self.listeners[to][0] == sender:  # only its own: never another's
                del self.listeners[to]
            self._send(sender, f"{PREFIX}/done", "notify", int(on))
        else:  # sync: everything sent before it is queued by now (this thread handles packets in order)
            n = fields.get("n")
            if not isinstance(n, (int, float)) or isinstance(n, bool):
                self._send(sender, f"{PREFIX}/fail", "sync", "sync takes a number", "bad_type")
                return
            self._send(sender, f"{PREFIX}/synced", n)

    def _free_a_listener(self, now: float) -> bool:
        """All listener places taken: the one whose sender has been quiet longest goes, if it has been quiet for
        `NOTIFY_IDLE_S` (a patch closed without `/segue/notify 0`, a client that filled every place)."""
        to, (_, seen) = min(self.listeners.items(), key=lambda kv: kv[1][1])
        if now - seen < NOTIFY_IDLE_S:
            return False
        del self.listeners[to]
        return True

    def _learn(self, fields: dict, sender: tuple[str, int]) -> None:
        from segue.osc_bridge.midi_map import MappingError

        if self.midi is None:
            self._send(sender, f"{PREFIX}/fail", "learn", "no MIDI input is open; start segue serve with --midi",
                       "no_input")
            return
        kind = fields.pop("kind")
        done = lambda k, n: self.outbox.put(dict(event="learned", to=sender, kind=k, number=n))  # noqa: E731
        try:
            self.midi.learn(kind, fields, done)
        except MappingError as exc:
            self._send(sender, f"{PREFIX}/fail", "learn", str(exc), "bad_request")
            return
        self._send(sender, f"{PREFIX}/done", "learn", kind)

    def _flush_events(self) -> None:
        while True:
            try:
                ev = self.outbox.get_nowait()
            except queue.Empty:
                return
            self._deliver(ev)

    def _deliver(self, ev: dict) -> None:
        rid, kind = ev.get("id"), ev.get("event")
        if kind == "learned":  # from the MIDI thread, for the one who asked
            self._send(ev["to"], f"{PREFIX}/learned", ev["kind"], ev["number"])
            return
        if kind == "error" and rid in self.pending:
            sender, cmd = self.pending[rid]
            self._send(sender, f"{PREFIX}/fail", cmd, ev.get("message", ""), ev.get("code", "internal"), rid)
        msg = event_message(ev)
        if msg is not None:
            for to in list(self.listeners):
                self._send(to, *msg)
        if kind in ("done", "error"):
            self.pending.pop(rid, None)


def event_message(ev: dict) -> tuple | None:
    """An engine event -> the OSC message for notify listeners (None: not a take event)."""
    kind, rid = ev.get("event"), ev.get("id")
    if kind == "queued":
        return (f"{PREFIX}/take/queued", rid, int(ev["start"]), ev["path"])
    if kind == "started":
        return (f"{PREFIX}/take/started", rid, int(ev["start"]))
    if kind == "progress":
        return (f"{PREFIX}/take/progress", rid, float(ev["generated_s"]), float(ev["played_s"]))
    if kind == "done" and "state" in ev:
        return (f"{PREFIX}/take/done", ev["path"], rid, ev["state"])
    if kind == "error" and rid is not None:
        return (f"{PREFIX}/take/error", rid, ev.get("code", "internal"), ev.get("message", ""))
    return None


def status_args(st: dict) -> list:
    """`/segue/status.reply model device audio_device running load buffer_ms xruns underruns model_rate device_rate
    bpm beat takes` (load: the engine's share of real time, 1/headroom)."""
    a = st["audio"]
    return [st["model"], st["device"], a["audio_device"], int(a["running"]), round(1.0 / max(st["rate"], 1e-6), 4),
            float(st["horizon_ms"]), int(a["xruns"]), int(a["underruns"]), int(st["model_rate"]),
            int(a["sample_rate"]), float(st["tempo"]["bpm"]), float(st["tempo"]["beat"]), len(st["takes"])]
