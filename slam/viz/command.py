"""``slam view DIR [--snapshot PNG] [--gt FILE]``: show a saved run in the 3D viewer, or render it to PNG."""

from __future__ import annotations

import argparse
import threading


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="DIR", help="a run folder written by 'slam run --out DIR'")
    parser.add_argument("--snapshot", metavar="PNG", default=None,
                        help="render the view to this PNG and exit (headless: starts Xvfb when there is no display)")
    parser.add_argument("--gt", metavar="FILE", default=None,
                        help="ground truth (TUM) to show Sim3-aligned (default: DIR/groundtruth.txt when present)")
    parser.add_argument("--size", default="1280x720", help="window size WxH (default 1280x720)")


def _size(text: str) -> tuple[int, int]:
    from slam.errors import InputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"--size {text!r}: expected WIDTHxHEIGHT, e.g. 1280x720") from exc
    if w < 64 or h < 64:
        raise InputError(f"--size {text!r}: at least 64x64")
    return w, h


def run(args: argparse.Namespace) -> int:
    from slam.viz.replay import load_run
    from slam.viz.snapshot import SnapshotChannel

    size = _size(args.size)
    snapshot = load_run(args.run_dir, groundtruth=args.gt)
    if args.snapshot:
        from slam.viz.viewer import render_snapshot

        path = render_snapshot(snapshot, args.snapshot, size=size, title=f"slam view {args.run_dir}")
        print(f"wrote {path}")
        return 0
    from slam.viz.viewer import run_viewer

    channel = SnapshotChannel()
    channel.put(snapshot)
    done = threading.Event()
    done.set()  # nothing more will come: draw it and stay open until the window is closed
    run_viewer(channel, done, title=f"slam view {args.run_dir}", exit_when_stopped=False, size=size)
    return 0
