"""``slam train-features``: train the SuperPoint network self-supervised (SiLK objective, homography pairs).

The shipped weights ``slam/features/weights/superpoint_slam.pt`` were produced by the README's command; the
same command (same seed, same number of threads) reproduces them. Library code: :mod:`slam.features.train`.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from slam.features.train import SOURCES, TrainConfig

    d = TrainConfig()
    p.add_argument("--out", default=None, help="weights file written at the end (fp16, Magic Leap key layout)")
    p.add_argument("--work", default="runs/train_features",
                   help="folder for checkpoint.pt, log.jsonl and rendered training images (default %(default)s)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch", type=int, default=d.batch, help="image pairs per step")
    p.add_argument("--crop", type=int, default=d.crop, help="square crop size in pixels (multiple of 8)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--sources", default=",".join(SOURCES), help="comma list of synth, texture, skimage")
    p.add_argument("--synth-seeds", type=int, default=d.synth_seeds, help="synthetic sequences per variant")
    p.add_argument("--textures", type=int, default=d.textures, help="procedural textures")
    p.add_argument("--widths", default=",".join(str(w) for w in d.widths),
                   help="channels c1,c2,c3,c4,c5 (published SuperPoint: %(default)s)")
    p.add_argument("--tau", type=float, default=d.loss.tau, help="SiLK softmax temperature")
    p.add_argument("--cov-weight", type=float, default=d.loss.cov_weight)
    p.add_argument("--peak-weight", type=float, default=d.loss.peak_weight)
    p.add_argument("--corner-weight", type=float, default=d.loss.corner_weight,
                   help="weight of the within-cell corner prior (0: none)")
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="held-out evaluation every N steps (0: never)")
    p.add_argument("--eval-pairs", type=int, default=d.eval_pairs)
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--init", default=None, help="start from these weights (fine-tuning)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint in --work")


def config_from_args(args: argparse.Namespace):
    from slam.errors import ConfigError
    from slam.features.superpoint import resolve_device
    from slam.features.train import LossConfig, TrainConfig

    try:
        widths = tuple(int(v) for v in str(args.widths).split(","))
    except ValueError:
        raise ConfigError(f"--widths expects five comma-separated integers, got {args.widths!r}") from None
    if len(widths) != 5 or min(widths) <= 0:
        raise ConfigError(f"--widths expects five positive integers, got {args.widths!r}")
    if args.steps <= 0 or args.batch <= 0:
        raise ConfigError("--steps and --batch must be > 0")
    sources = tuple(s.strip() for s in str(args.sources).split(",") if s.strip())
    loss = LossConfig(tau=args.tau, cov_weight=args.cov_weight, peak_weight=args.peak_weight,
                      corner_weight=args.corner_weight)
    return TrainConfig(steps=args.steps, batch=args.batch, crop=args.crop, lr=args.lr, seed=args.seed,
                       widths=widths, sources=sources, synth_seeds=args.synth_seeds, textures=args.textures,
                       eval_every=args.eval_every, eval_pairs=args.eval_pairs, threads=args.threads,
                       device=resolve_device(args.device), loss=loss)


def run(args: argparse.Namespace) -> int:
    from slam.features.train import train

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)

    def progress(entry: dict) -> None:
        if "eval" in entry:
            e = entry["eval"]
            log.info("step %d held-out: MMA@1/3/5 %.3f/%.3f/%.3f repeatability %.3f correct %.1f",
                     entry["step"], e["mma@1"], e["mma@3"], e["mma@5"], e["repeatability"], e["correct"])
        elif entry["step"] % 10 == 0:
            log.info("step %d loss %.4f (desc %.4f kp %.4f success %.3f) lr %.2e %.0f s", entry["step"],
                     entry["loss"], entry["desc"], entry["kp"], entry["success"], entry["lr"], entry["elapsed_s"])

    result = train(cfg, args.work, out=args.out, resume=not args.no_resume, init_weights=args.init,
                   progress=progress)
    evals = [h for h in result["history"] if "eval" in h]
    summary = {"steps": result["steps"], "out": str(Path(args.out)) if args.out else None,
               "final_eval": evals[-1]["eval"] if evals else None}
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/train_features.py``."""
    from slam.errors import SlamError

    parser = argparse.ArgumentParser(prog="train_features", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except SlamError as exc:
        print(f"error: {exc}")
        return 2
