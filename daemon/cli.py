"""The `segue` command line: argument parsing and the one place user errors become one-line messages."""

from __future__ import annotations

import argparse
import logging
import re
import sys

from segue.models.errors import SegueError


class SegueParser(argparse.ArgumentParser):
    """argparse, with its errors as one line (`segue generate: error: ... (see segue generate --help)`, exit 2) and
    a negative number after a numeric option read as its value (`--temperature -inf`), as `--temperature=-inf` is.
    Subcommands get the same class (argparse's `add_subparsers` uses the parser's own)."""

    numeric_flags: set[str] = set()  # options of every segue parser whose value is a number

    def add_argument(self, *names, **kwargs):
        if kwargs.get("type") in (int, float):
            SegueParser.numeric_flags.update(n for n in names if n.startswith("--"))
        return super().add_argument(*names, **kwargs)

    def error(self, message: str):
        bad = re.match(r"argument (--[\w-]+).*: expected one argument$", message)
        if bad:  # argparse reads a value that starts with '-' as an option
            message += f"; a value that starts with '-' goes after '=': {bad.group(1)}=VALUE"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def numbers_as_values(argv: list[str]) -> list[str]:
    """`--flag -1e3` -> `--flag=-1e3` for the numeric options: argparse would read `-inf`, `-1e3` and `-.5` as
    options (its own test for negative numbers knows only digits)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg, value = argv[i], argv[i + 1] if i + 1 < len(argv) else ""
        if arg in SegueParser.numeric_flags and value.startswith("-") and _is_number(value):
            out.append(f"{arg}={value}")
            i += 2
        else:
            out.append(arg)
            i += 1
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _add_model_args(p: argparse.ArgumentParser, dtype: bool = True, required: bool = True,
                    default: str | None = "auto") -> None:
    p.add_argument("--model", required=required,
                   help="hub id (facebook/musicgen-small), a local model folder, or 'demo' (tiny random model)")
    p.add_argument("--device", default=default, help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    if dtype:
        p.add_argument("--dtype", default=default,
                       help="LM precision: float32, bfloat16, float16, int8 (CPU: the step's projections in int8) or "
                            "auto (bfloat16 on CUDA; on a CPU int8 where it measures faster at load, else float32)")


# `segue generate`'s defaults that are not sampling settings (those are SamplingParams' own: audiocraft's).
DEFAULT_DURATION = 10.0  # seconds of new audio
DEFAULT_PROMPT_SECONDS = 10.0  # seconds of --continue used as the prompt


def _bounds(key: str) -> str:
    from segue.daemon.vocabulary import BOUNDS

    return BOUNDS[key].describe()


def build_parser() -> argparse.ArgumentParser:
    from segue.models.lm.config import SamplingParams

    S = SamplingParams()
    parser = SegueParser(prog="segue", description="Realtime AudioCraft host: MusicGen / AudioGen + "
                                     "EnCodec kept warm, continuing what you play.")
    parser.add_argument("--version", action="version", version="segue 0.1.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens, with timings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate audio from a text prompt and/or continue a WAV file",
                       description="Generate new audio. OUT.wav holds only the new audio, at the model's rate. "
                                   "Numbers out of range are refused with the daemon's bounds.")
    # Device and dtype default to None: "auto", or with --from-take the take's own.
    _add_model_args(g, required=False, default=None)
    g.add_argument("--prompt", default=None, help="text description (default: none = unconditional)")
    g.add_argument("--continue", dest="continue_wav", metavar="WAV", default=None,
                   help="audio file to continue from its end (resampled and mixed to the model's format)")
    g.add_argument("--prompt-seconds", type=float, default=None, metavar="S",
                   help=f"use the last S seconds of --continue as the prompt (default: {DEFAULT_PROMPT_SECONDS:g}, "
                        "or the whole file); "
                        "whole codec frames ending on the file's last sample")
    g.add_argument("--melody", metavar="FILE", default=None,
                   help="audio whose melody (chroma) the new audio follows; MusicGen-Melody models only "
                        "(facebook/musicgen-melody, demo-melody)")
    g.add_argument("--duration", type=float, default=None, metavar="S",
                   help=f"seconds of new audio, {_bounds('seconds')} (default {DEFAULT_DURATION:g}; with "
                        "--from-take: the take's)")
    g.add_argument("--temperature", type=float, default=None,
                   help=f"softmax temperature, {_bounds('temperature')}; 0 = greedy (default {S.temperature:g})")
    g.add_argument("--top-k", type=int, default=None,
                   help=f"sample among the k likeliest tokens, {_bounds('top_k')} (a codebook's entries); 0 = all "
                        f"(default {S.top_k})")
    g.add_argument("--top-p", type=float, default=None,
                   help=f"nucleus sampling mass, {_bounds('top_p')}; 0 = off (default {S.top_p:g})")
    g.add_argument("--cfg", type=float, default=None,
                   help=f"classifier-free guidance coefficient, {_bounds('cfg')} (default {S.cfg_coef:g})")
    g.add_argument("--seed", type=int, default=None,
                   help=f"random seed, {_bounds('seed')} (default: a fresh one, printed)")
    g.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: half the CPUs, as the daemon; with --from-take: the take's). The "
                        "tokens past a re-prompt depend on it")
    g.add_argument("--from-take", default=None, metavar="NNNN-cmd.json",
                   help="render a daemon take again from its sidecar: same model, dtype, device, threads, seed, "
                        "sampling and changes, text, prompt frames and melody; --model, --duration, --device, "
                        "--dtype, --threads override")
    g.add_argument("--out", required=True, metavar="OUT.wav", help="where to write the new audio (float WAV)")
    g.add_argument("--codes-out", default=None, metavar="CODES.npy",
                   help="also write the codes [codebooks, frames] (a continuation's prompt frames first) and "
                        "beside them CODES.json, which `segue codec decode` reads")

    c = sub.add_parser("codec", help="EnCodec alone: audio <-> codes")
    csub = c.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    e = csub.add_parser("encode", help="audio -> codes [codebooks, frames] (.npy) and their .json (length, layout)")
    _add_model_args(e, dtype=False)
    e.add_argument("input", metavar="IN.wav")
    e.add_argument("--codes-out", required=True, metavar="CODES.npy",
                   help="the codes; CODES.json beside them keeps the length and channels")
    d = csub.add_parser("decode", help="codes [codebooks, frames] (.npy) -> WAV (their .json, when there, says "
                                       "the length, channels and prompt frames)")
    _add_model_args(d, dtype=False)
    d.add_argument("input", metavar="CODES.npy")
    d.add_argument("--out", required=True, metavar="OUT.wav")

    s = sub.add_parser("serve", help="run the daemon: model warm, live input recorded, commands over ZeroMQ",
                       description="Load once, warm up, then serve commands until SIGTERM / Ctrl-C. Settings come "
                                   "from --config (TOML) and are overridden by flags.")
    s.add_argument("--config", default=None, metavar="FILE", help="TOML settings (keys named like the flags)")
    s.add_argument("--model", default=None, help="hub id, local folder or 'demo' (default facebook/musicgen-small)")
    s.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto")
    s.add_argument("--dtype", default=None, help="float32, bfloat16, float16, int8 (CPU) or auto")
    s.add_argument("--audio-device", default=None, metavar="NAME|none|auto",
                   help="sound card (name substring or index; `segue devices`); none: takes and PUB only; auto: "
                        "the default card if there is one, else none")
    s.add_argument("--sample-rate", type=int, default=None, metavar="R", help="device rate (default: the device's)")
    s.add_argument("--block-size", type=int, default=None, metavar="N", help="audio block in samples (default 256)")
    s.add_argument("--input-channels", type=int, default=None, metavar="C", help="live input channels (default 2)")
    s.add_argument("--zmq", default=None, help="request socket (default tcp://127.0.0.1:5555)")
    s.add_argument("--pub", default=None, help="event/audio socket (default tcp://127.0.0.1:5556)")
    s.add_argument("--osc", default=None, metavar="HOST:PORT|none", help="OSC over UDP (default 127.0.0.1:9000)")
    s.add_argument("--midi", default=None, metavar="segue|all|NAME|none|auto",
                   help="MIDI input: a virtual port 'segue', all ports, ports matching NAME (default auto: 'segue' "
                        "when a MIDI API is usable)")
    s.add_argument("--midi-api", default=None, choices=["auto", "jack", "alsa"], help="MIDI through JACK or ALSA")
    s.add_argument("--midi-map", default=None, metavar="FILE", help="MIDI mapping TOML (default: the shipped one)")
    s.add_argument("--sync", default=None, choices=["none", "link", "jack"],
                   help="follow a tempo leader: link (join the Ableton Link session) or jack (JACK transport); "
                        "default none (tempo from commands and MIDI clock)")
    s.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: half the CPUs, the rest left to the DAW and the audio; see README, "
                        "Busy machines)")
    s.add_argument("--takes", default=None, metavar="DIR", help="where takes are written (default ./takes)")
    s.add_argument("--allow", action="append", default=None, metavar="DIR",
                   help="a folder `continue source=file` may read (repeatable; the takes folder always)")
    s.add_argument("--pace", choices=["realtime", "asap"], default=None,
                   help="realtime: play in time (default); asap: no playback, render takes as fast as possible")
    s.add_argument("--keep-models", type=int, default=None, metavar="N",
                   help="models kept loaded after `set model=` replaced them, for an instant switch back (default "
                        "0: a replaced model is freed once its last take ends)")

    n = sub.add_parser("send", help="send one command to a running daemon and print the reply",
                       description="Example: segue send continue source=live last_bars=2 bars=2 start=next_bar")
    n.add_argument("cmd", metavar="CMD", help="generate, continue, stop, retry, set, tempo, status, takes")
    n.add_argument("fields", nargs="*", metavar="KEY=VALUE", help="values are JSON when they parse, else text")
    n.add_argument("--zmq", default="tcp://127.0.0.1:5555")
    n.add_argument("--pub", default="tcp://127.0.0.1:5556")
    n.add_argument("--wait", action="store_true", help="print the request's events until it is done")
    n.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply (default 10)")

    sub.add_parser("devices", help="list audio devices and MIDI inputs")

    b = sub.add_parser("bridge", help="OSC and MIDI here, the daemon on another machine: forward commands over "
                                      "ZeroMQ and play its audio stream on this sound card, in time",
                       description="Example: segue bridge --daemon tcp://gpu-box:5555")
    b.add_argument("--daemon", default="tcp://127.0.0.1:5555", metavar="tcp://HOST:PORT",
                   help="the daemon's request socket (its --zmq)")
    b.add_argument("--pub", default=None, metavar="tcp://HOST:PORT",
                   help="the daemon's event/audio socket (default: the daemon's port + 1)")
    b.add_argument("--osc", default="127.0.0.1:9000", metavar="HOST:PORT", help="OSC over UDP (default 127.0.0.1:9000)")
    b.add_argument("--midi", default="auto", metavar="segue|all|NAME|none|auto", help="MIDI input, as for serve")
    b.add_argument("--midi-api", default="auto", choices=["auto", "jack", "alsa"])
    b.add_argument("--midi-map", default=None, metavar="FILE")
    b.add_argument("--audio-device", default="auto", metavar="NAME|none|auto", help="the local sound card")
    b.add_argument("--sample-rate", type=int, default=None, metavar="R", help="default: the daemon's rate")
    b.add_argument("--block-size", type=int, default=256, metavar="N")
    b.add_argument("--delay", type=float, default=0.15, metavar="SECONDS",
                   help="how far local playback runs behind the daemon's clock: more than the network's worst "
                        "delay (default 0.15)")

    m = sub.add_parser("demo", help="run the daemon with the demo model: a generate and a continue of the shipped "
                                    "loop, then stop")
    m.add_argument("--out", default="out", metavar="DIR", help="where the takes go (default ./out)")
    m.add_argument("--audio-device", default="auto", metavar="NAME|none|auto",
                   help="sound card (default auto: the default card if there is one, else none)")
    return parser


def _field(text: str) -> tuple[str, object]:
    import json

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise SegueError(f"fields are KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


MAX_TIMEOUT_S = 86400  # segue send --timeout: a day at most (a typo in ms must not hang for good)


def send(args) -> None:
    import json

    import math

    import zmq

    from segue.daemon.client import Client, DaemonError

    if not (math.isfinite(args.timeout) and 0 < args.timeout <= MAX_TIMEOUT_S):
        raise SegueError(f"--timeout must be more than 0 and at most {MAX_TIMEOUT_S} seconds, got {args.timeout:g}")
    try:
        client = Client(args.zmq, args.pub if args.wait else None, timeout=args.timeout)
    except zmq.ZMQError as exc:
        raise SegueError(f"cannot reach the daemon at {args.zmq} / {args.pub} ({exc}); give --zmq and --pub as "
                         "tcp://HOST:PORT") from exc
    try:
        fields = [_field(f) for f in args.fields]
        twice = sorted({k for k, _ in fields if sum(k == j for j, _ in fields) > 1})
        if twice:
            raise SegueError(f"{', '.join(twice)} given twice; give each field once")
        reply = client.request(args.cmd, **dict(fields))
        print(json.dumps(reply, indent=1))
        if args.wait and "id" in reply:
            for ev in client.events(timeout=3600):
                if ev.get("id") == reply["id"]:
                    print(json.dumps(ev))
                    if ev["event"] == "error":
                        raise SegueError(f"the daemon could not do it: {ev['code']}: {ev['message']}")
                    if ev["event"] == "done":
                        break
    except DaemonError as exc:
        raise SegueError(f"the daemon refused it: {exc}") from exc
    except TimeoutError as exc:
        raise SegueError(str(exc)) from exc
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()  # first: it registers the numeric flags `numbers_as_values` looks for
    args = parser.parse_args(numbers_as_values(sys.argv[1:] if argv is None else [str(a) for a in argv]))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="segue: %(message)s")
    try:
        if args.command in ("generate", "codec"):  # torch is imported for these only: `segue send` starts in a blink
            from segue.daemon import commands

            (commands.generate if args.command == "generate" else commands.codec)(args)
        elif args.command == "serve":
            from segue.daemon.serve import load_settings, serve

            flags = dict(vars(args))
            flags["allow"] = tuple(args.allow) if args.allow else None
            serve(load_settings(args.config, flags))
        elif args.command == "bridge":
            from segue.osc_bridge.bridge import BridgeSettings, bridge

            bridge(BridgeSettings(args.daemon, args.pub, args.osc, args.midi, args.midi_api, args.midi_map,
                                  args.audio_device, args.sample_rate, args.block_size, args.delay))
        elif args.command == "send":
            send(args)
        elif args.command == "demo":
            from pathlib import Path

            from segue.daemon.demo import run_demo

            run_demo(Path(args.out), args.audio_device)
        elif args.command == "devices":
            from segue.daemon.audio_io import list_devices
            from segue.osc_bridge.midi_input import list_midi_inputs

            print(list_devices())
            print(list_midi_inputs())
    except SegueError as exc:
        print(f"segue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segue: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
