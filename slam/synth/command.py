"""The ``slam synth PRESET OUT [--frames N] [--seed S] [--size WxH] [-o KEY=VALUE ...] [--list]`` subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from slam.errors import ConfigError
from slam.synth.presets import PRESETS, SynthOptions

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the subcommand's arguments to ``parser``."""
    parser.add_argument("preset", nargs="?", help=f"scene preset: {', '.join(PRESETS)}")
    parser.add_argument("out", nargs="?", help="output folder (plain folder layout)")
    parser.add_argument("--frames", type=int, default=None, help="number of frames (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (scene, texture, path, noise)")
    parser.add_argument("--size", default=None, metavar="WxH", help="image size (default 640x480)")
    parser.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                        help="override a generator option (repeatable), e.g. -o speed=0.12 -o depth=true; "
                             "see --list")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder that is not a previous synth output")
    parser.add_argument("--list", action="store_true", help="list presets and options, then exit")


def parse_options(items: list[str]) -> dict[str, str]:
    """``["key=value", ...]`` to a dict; raises :class:`ConfigError` on an item without ``=``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"synth option {item!r} must look like KEY=VALUE (e.g. speed=0.1)")
        out[key.strip()] = value.strip()
    return out


def _listing() -> str:
    lines = ["presets:"]
    width = max(len(name) for name in PRESETS)
    for name, (description, _) in PRESETS.items():
        lines.append(f"  {name:<{width}}  {description}")
    lines.append("options (-o KEY=VALUE; defaults before presets apply):")
    defaults = SynthOptions().to_dict()
    lines.append("  " + ", ".join(f"{k}={v}" for k, v in defaults.items()))
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; returns the exit status. Errors a user can cause raise SlamError subclasses."""
    from slam.synth.generate import generate

    if args.list:
        sys.stdout.write(_listing())
        return 0
    if not args.preset or not args.out:
        raise ConfigError("slam synth needs PRESET and OUT (e.g. `slam synth tube out/tube`); "
                          "`slam synth --list` shows the presets")
    options = parse_options(args.option)
    started = time.perf_counter()
    out = generate(args.preset, args.out, frames=args.frames, seed=args.seed, size=args.size,
                   overwrite=args.overwrite, **options)
    logger.info("wrote %s in %.1f s", out, time.perf_counter() - started)
    return 0
