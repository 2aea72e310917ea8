"""The ``slam eval EST GT`` subcommand: read two trajectories, evaluate, print a table or JSON, plot.

Exit codes: 0 success; 1 an input problem (missing or malformed file, too few associated poses), with a
one-line message on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from slam.errors import InputError, SlamError
from slam.evaluation.metrics import ALIGN_MODES, EvalResult, evaluate
from slam.evaluation.readers import FORMATS, detect_format, find_kitti_times, read_trajectory

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``slam eval`` arguments to ``parser``."""
    parser.add_argument("est", metavar="EST", help="estimated trajectory (TUM, KITTI or EuRoC csv)")
    parser.add_argument("gt", metavar="GT", help="ground-truth trajectory (TUM, KITTI or EuRoC csv)")
    parser.add_argument(
        "--align", choices=ALIGN_MODES, default="sim3",
        help="alignment before ATE: sim3 (monocular, default), se3 (metric scale) or none",
    )
    parser.add_argument("--max-diff", type=float, default=0.02, metavar="S",
                        help="largest timestamp difference for association, seconds (default 0.02)")
    parser.add_argument("--offset", type=float, default=0.0, metavar="S",
                        help="seconds added to the estimate's timestamps before association")
    parser.add_argument("--rpe-delta", type=float, default=None, metavar="M",
                        help="path distance in metres for the per-distance RPE (default 10%% of the path)")
    parser.add_argument("--est-format", choices=("auto",) + FORMATS, default="auto")
    parser.add_argument("--gt-format", choices=("auto",) + FORMATS, default="auto")
    parser.add_argument("--est-times", metavar="FILE", default=None,
                        help="timestamps (one per line, seconds) for a KITTI-format EST")
    parser.add_argument("--gt-times", metavar="FILE", default=None,
                        help="timestamps (one per line, seconds) for a KITTI-format GT")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--plot", metavar="PNG", default=None, help="write a plot of the evaluation")


def _load_pair(args: argparse.Namespace):
    """Read EST and GT; KITTI files get timestamps from --*-times, or from a times file found beside
    them when the other trajectory has real timestamps (two KITTI files pair by index)."""
    est_path, gt_path = Path(args.est), Path(args.gt)
    fmts = []
    for path, fmt in ((est_path, args.est_format), (gt_path, args.gt_format)):
        if not path.is_file():
            raise InputError(f"{path}: trajectory file not found")
        fmts.append(detect_format(path) if fmt == "auto" else fmt)
    times = [args.est_times, args.gt_times]
    both_kitti = fmts[0] == fmts[1] == "kitti" and times[0] is None and times[1] is None
    for k, path in enumerate((est_path, gt_path)):
        if fmts[k] == "kitti" and times[k] is None and not both_kitti:
            found = find_kitti_times(path)
            if found is None:
                which = "--est-times" if k == 0 else "--gt-times"
                raise InputError(
                    f"{path}: KITTI poses carry no timestamps and the other trajectory has some; "
                    f"give the sequence's times.txt with {which}"
                )
            log.info("timestamps of %s from %s", path, found)
            times[k] = found
    est = read_trajectory(est_path, fmts[0], timestamps=times[0])
    gt = read_trajectory(gt_path, fmts[1], timestamps=times[1])
    return est, gt


def format_table(result: EvalResult) -> str:
    """A short human-readable summary of an evaluation."""
    d = result.to_dict()

    def f(x, unit="", digits=4):
        return "n/a" if x is None else f"{x:.{digits}g}{unit}"

    rows = [
        ("alignment", f"{result.align}  (scale {f(d['scale'])})"),
        ("matched poses", f"{d['num_matched']} of {d['num_est']} estimated, {d['num_gt']} ground truth"),
        ("tracked fraction", f(None if d["tracked_fraction"] is None else 100 * d["tracked_fraction"], " %")),
        ("GT path length", f(d["path_length"], " m")),
        ("ATE RMSE", f"{f(d['ate_rmse'], ' m')}  ({f(d['ate_percent_of_path'], ' % of path')})"),
        ("ATE mean / median / max",
         f"{f(d['ate_mean'])} / {f(d['ate_median'])} / {f(d['ate_max'])} m"),
        (f"RPE per {d['rpe_delta_frames']} frame(s) RMSE",
         f"{f(d['rpe_trans_rmse'], ' m')}, {f(d['rpe_rot_deg_rmse'], ' deg')}"),
        (f"RPE per {f(d['rpe_dist_delta_m'], ' m')} RMSE",
         f"{f(d['rpe_dist_trans_rmse'], ' m')}, {f(d['rpe_dist_rot_deg_rmse'], ' deg')}  "
         f"(drift {f(d['rpe_dist_trans_percent'], ' %')}, {d['rpe_dist_num_pairs']} pairs)"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def run(args: argparse.Namespace) -> int:
    """Run ``slam eval`` with parsed ``args``; returns the process exit code."""
    try:
        est, gt = _load_pair(args)
        result = evaluate(
            est, gt, align=args.align, max_diff=args.max_diff, offset=args.offset, rpe_delta_m=args.rpe_delta
        )
        if args.plot:
            from slam.evaluation.plot import save_eval_plot

            save_eval_plot(result, args.plot, title=f"{Path(args.est).name} vs {Path(args.gt).name}")
    except SlamError as exc:
        print(f"slam eval: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_table(result))
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``python -m slam.evaluation.command EST GT ...``)."""
    parser = argparse.ArgumentParser(prog="slam eval", description="Evaluate a trajectory against ground truth.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
