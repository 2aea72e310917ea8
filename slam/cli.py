"""The ``slam`` command: run, live, eval, synth, demo, view (and bench, train-features where installed).

Errors a user can cause print one line (``error: <file>: <problem>``) and exit with status 2; Ctrl-C
stops a run cleanly, writes its outputs and exits with status 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from slam.errors import SlamError

log = logging.getLogger("slam")

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _setup_logging(level: str, quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else getattr(logging, level.upper(), logging.INFO),
        format="%(levelname)s %(name)s: %(message)s",
    )


# ---------------------------------------------------------------------------------------------- run
def add_run_arguments(p: argparse.ArgumentParser, live: bool = False) -> None:
    if not live:
        p.add_argument("path", help="video file, image folder, or dataset root (TUM, EuRoC, KITTI, EndoSLAM, C3VD, Hamlyn)")
    p.add_argument("--out", required=not live, default=None, help="output folder")
    p.add_argument("--config", default=None, help="config name in configs/ (default, endoscopy, tum, ...) or a YAML file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. tracking.frontend=flow")
    p.add_argument("--features", choices=["sift", "orb", "superpoint"], default=None)
    p.add_argument("--frontend", choices=["descriptors", "flow", "hybrid"], default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--sync", action="store_true", help="tracking and mapping in one thread, deterministic")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--calib", default=None, help="calibration file (video files, or to override a dataset's)")
    p.add_argument("--mask", default=None, help="mask image, non-zero = usable pixels")
    p.add_argument("--start", type=int, default=None, help="first frame")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--stride", type=int, default=None)
    p.add_argument("--resize", type=float, default=None, help="scale images (and intrinsics) by this factor")
    p.add_argument("--viewer", action="store_true", help="show the live 3D viewer (Qt)")
    p.add_argument("--snapshot", default=None, help="render the final 3D view to this PNG (headless under Xvfb)")
    p.add_argument("--save-map", action="store_true", help="also write DIR/map.npz (keyframes, points, descriptors)")
    p.add_argument("--quiet", action="store_true", help="no progress bar, warnings only")
    p.add_argument("--profile", action="store_true", help="print where the milliseconds of a frame go")


def build_config(args: argparse.Namespace):
    from slam.config import load_config

    overrides = list(args.set)
    mapping = {
        "features": "features.type", "frontend": "tracking.frontend", "device": "system.device",
        "seed": "system.seed", "start": "source.start", "max_frames": "source.max_frames",
        "stride": "source.stride", "resize": "source.resize", "mask": "source.mask",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, str) else value}")
    if getattr(args, "sync", False):
        overrides.append("system.sync=true")
    if getattr(args, "save_map", False):
        overrides.append("system.save_map=true")
    return load_config(args.config, overrides)


def cmd_run(args: argparse.Namespace, live: bool = False) -> int:
    from slam.runner import run_source
    from slam.sources import open_source

    cfg = build_config(args)
    if live:
        cfg.tracking.mapper_backpressure = False  # a live camera drops frames instead of waiting
    _setup_logging(cfg.system.log_level, args.quiet)
    source = open_source(None if live else args.path, cfg.source, calib=args.calib,
                         camera=getattr(args, "camera", None))
    out = args.out or "runs/live"
    if args.viewer:
        from slam.viz.live import run_with_viewer

        outcome = run_with_viewer(source, cfg, out, snapshot=args.snapshot, progress=not args.quiet)
    else:
        outcome = run_source(source, cfg, out, progress=not args.quiet)
        if args.snapshot:
            from slam.viz.replay import load_run
            from slam.viz.viewer import render_snapshot
            from slam.viz.xvfb import ensure_display

            with ensure_display():
                render_snapshot(load_run(outcome.out_dir), args.snapshot)
    return _report(outcome, args)


def _report(outcome, args) -> int:
    s = outcome.result.stats
    lines = [
        f"frames {s['frames']}  tracked {s['tracked']} ({100 * s['tracked_fraction']:.1f}%)  keyframes {s['keyframes']}"
        f"  map points {s['map_points']}  maps {s['maps']}  {s['fps']:.1f} fps",
    ]
    if outcome.evaluation:
        e = outcome.evaluation
        lines.append(
            f"ATE RMSE {e['ate_rmse']:.4f} ({e.get('ate_percent_of_path', float('nan')):.2f}% of path)"
            f"  GT poses tracked {100 * e.get('tracked_fraction', 0):.1f}%"
        )
    if getattr(args, "profile", False):
        from slam.bench.profile import format_profile

        lines.append(format_profile(s))
    lines.append(f"outputs in {outcome.out_dir}")
    print("\n".join(lines))
    if outcome.result.interrupted:
        return EXIT_INTERRUPTED
    return 0


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from slam.config import load_config
    from slam.runner import run_source
    from slam.sources import open_source
    from slam.synth import generate

    _setup_logging("INFO", args.quiet)
    out = Path(args.out)
    data = out / "sequence"
    if not (data / "groundtruth.txt").exists():
        print(f"synthesising a {args.frames}-frame endoscopy sequence (tube_endo) in {data} ...")
        generate("tube_endo", data, frames=args.frames, seed=args.seed, size=(640, 480))
    cfg = load_config(args.config, list(args.set))
    source = open_source(str(data), cfg.source)
    print(f"running SLAM ({cfg.features.type}, {cfg.tracking.frontend} front end) ...")
    outcome = run_source(source, cfg, out / "run", progress=not args.quiet)
    return _report(outcome, args)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slam", description="Monocular visual SLAM for endoscopy and ordinary video")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run SLAM on a video, image folder or dataset")
    add_run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("live", help="run SLAM on a live camera")
    p.add_argument("--camera", required=True, help="camera index or stream URL (or a video file, for testing)")
    add_run_arguments(p, live=True)
    p.set_defaults(func=lambda a: cmd_run(a, live=True))

    p = sub.add_parser("demo", help="synthesise an endoscopy sequence, run SLAM on it, print the accuracy")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="endoscopy")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    for name, module, help_text in (
        ("eval", "slam.evaluation.command", "ATE/RPE of a trajectory against ground truth"),
        ("synth", "slam.synth.command", "render a synthetic sequence with exact ground truth"),
        ("view", "slam.viz.command", "replay a saved run in the 3D viewer"),
        ("bench", "slam.bench.command", "accuracy, speed and memory on a suite of sequences"),
        ("bench-features", "slam.features.bench_command", "feature matching accuracy on homography pairs"),
        ("train-features", "slam.features.train_command", "train the SuperPoint-style network, self-supervised"),
    ):
        try:
            module_obj = __import__(module, fromlist=["add_arguments", "run"])
        except ImportError:
            continue  # that part is not installed in this build
        p = sub.add_parser(name, help=help_text)
        module_obj.add_arguments(p)
        p.set_defaults(func=module_obj.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SlamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
