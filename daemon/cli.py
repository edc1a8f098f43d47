"""The `segue` command line: argument parsing and the one place user errors become one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys

from segue.models.errors import SegueError


def _add_model_args(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    p.add_argument("--model", required=True,
                   help="hub id (facebook/musicgen-small), a local model folder, or 'demo' (tiny random model)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: CUDA when present)")
    if dtype:
        p.add_argument("--dtype", default="auto",
                       help="LM precision: float32, bfloat16, float16 or auto (bfloat16 on CUDA, float32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segue", description="Realtime AudioCraft host: MusicGen / AudioGen + "
                                     "EnCodec kept warm, continuing what you play.")
    parser.add_argument("--version", action="version", version="segue 0.1.0")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens, with timings")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="generate audio from a text prompt and/or continue a WAV file",
                       description="Generate new audio. OUT.wav holds only the new audio, at the model's rate.")
    _add_model_args(g)
    g.add_argument("--prompt", default=None, help="text description (default: none = unconditional)")
    g.add_argument("--continue", dest="continue_wav", metavar="WAV", default=None,
                   help="audio file to continue from its end (resampled and mixed to the model's format)")
    g.add_argument("--prompt-seconds", type=float, default=None, metavar="S",
                   help="use the last S seconds of --continue as the prompt (default: 10, or the whole file)")
    g.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds of new audio (default 10)")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1.0)")
    g.add_argument("--top-k", type=int, default=250, help="sample among the k likeliest tokens (default 250)")
    g.add_argument("--top-p", type=float, default=0.0, help="nucleus sampling mass; 0 = off (default 0)")
    g.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance coefficient (default 3.0)")
    g.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    g.add_argument("--out", required=True, metavar="OUT.wav", help="where to write the new audio (float WAV)")
    g.add_argument("--codes-out", default=None, metavar="CODES.npy",
                   help="also write the new frames as an integer array [codebooks, frames]")

    c = sub.add_parser("codec", help="EnCodec alone: audio <-> codes")
    csub = c.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    e = csub.add_parser("encode", help="WAV -> codes [codebooks, frames] (.npy)")
    _add_model_args(e, dtype=False)
    e.add_argument("input", metavar="IN.wav")
    e.add_argument("--codes-out", required=True, metavar="CODES.npy")
    d = csub.add_parser("decode", help="codes [codebooks, frames] (.npy) -> WAV")
    _add_model_args(d, dtype=False)
    d.add_argument("input", metavar="CODES.npy")
    d.add_argument("--out", required=True, metavar="OUT.wav")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="segue: %(message)s")
    from segue.daemon import commands

    try:
        if args.command == "generate":
            commands.generate(args)
        elif args.command == "codec":
            commands.codec(args)
    except SegueError as exc:
        print(f"segue: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("segue: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
