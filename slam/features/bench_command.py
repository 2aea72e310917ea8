"""``slam bench-features``: keypoint extractors compared on held-out homography pairs.

Pairs: frames of synthetic endoscopy tubes (plain, specular, low-contrast) and rooms rendered with seeds no
training run uses (``--seed``, default 2000; training uses 0.. and its own held-out set 1000..), view A a crop
of the frame, view B the frame through a random homography (rotation up to 25 deg, scale 0.75-1.33,
perspective and shift 10 %), pixels from outside the frame masked. For each extractor (SIFT and ORB from
:func:`slam.features.factory.create_extractor`; SuperPoint with the shipped or ``--weights`` weights;
``superpoint_snap``: the same detections moved to the strongest Shi-Tomasi corner within ``--snap`` px) the
same ``--num-features``, mutual nearest-neighbour matching with the config's ratio test, and per pair:
mean matching accuracy at 1/3/5 px, repeatability (3 px), correct matches (3 px); means over the pairs.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

SCENES = {"endoscopy": ("tube", "tube_specular", "tube_lowcontrast"), "room": ("room",)}
METHODS = ("sift", "orb", "superpoint", "superpoint_snap")  # superpoint_snap: detections snapped to corners
COLUMNS = ("mma@1", "mma@3", "mma@5", "repeatability", "correct", "matches", "keypoints", "ms_per_image")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", default=",".join(METHODS),
                   help="comma list of sift, orb, superpoint, superpoint_snap (default: all)")
    p.add_argument("--snap", type=int, default=3,
                   help="superpoint_snap: radius (px) of the snap to the strongest Shi-Tomasi corner")
    p.add_argument("--scenes", default=",".join(SCENES), help="comma list of endoscopy, room")
    p.add_argument("--weights", default=None, help="SuperPoint weights (default: shipped; Magic Leap .pth works)")
    p.add_argument("--config", default="endoscopy", help="config whose 'features' section is used (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--pairs", type=int, default=24, help="pairs per scene (default %(default)s)")
    p.add_argument("--size", default="320x240", help="view size WxH (default %(default)s)")
    p.add_argument("--num-features", type=int, default=1000)
    p.add_argument("--seed", type=int, default=2000, help="seed of the held-out scenes and warps")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (SuperPoint and --torch-matching)")
    p.add_argument("--torch-matching", action="store_true",
                   help="match with slam.features.torch_matching on --device (GPU matching for every extractor)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--work", default="runs/bench_features", help="cache of the rendered frames")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--timing", action="store_true",
                   help="only time SuperPoint (single and batched extraction at --timing-size) and matching")
    p.add_argument("--timing-size", default="640x480")
    p.add_argument("--timing-batch", type=int, default=8)


def time_superpoint(cfg, device: str, size: tuple[int, int], batch: int, repeats: int = 3) -> dict[str, float]:
    """Milliseconds per image of SuperPoint extraction (single, batched) on ``device`` and of matching
    ``num_features`` x ``num_features`` descriptors (torch on ``device``, numpy on the CPU)."""
    from slam.features.matching import match_descriptors
    from slam.features.superpoint import SuperPointExtractor, import_torch
    from slam.features.torch_matching import match_descriptors_torch
    from slam.features.train import texture_images

    torch = import_torch()
    w, h = size
    src = texture_images(7, 1, size=max(w, h))[0].gray
    imgs = [np.ascontiguousarray(np.roll(src, 3 * k, axis=1)[:h, :w]) for k in range(batch)]
    ex = SuperPointExtractor(cfg, device=device)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def best(fn) -> float:
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return 1000.0 * min(times)

    out = {"extract_ms": best(lambda: ex.extract(imgs[0])),
           "extract_batched_ms_per_image": best(lambda: ex.extract_batch(imgs)) / batch}
    f = ex.extract_batch(imgs[:2], as_tensors=True)
    d1, d2 = f[0]["descriptors"], f[1]["descriptors"]
    out["keypoints"] = float(len(d1))
    out["match_torch_ms"] = best(lambda: match_descriptors_torch(d1, d2, cfg.ratio, cfg.mutual))
    n1, n2 = d1.cpu().numpy(), d2.cpu().numpy()
    out["match_numpy_cpu_ms"] = best(lambda: match_descriptors(n1, n2, False, cfg.ratio, cfg.mutual))
    return out


def scene_pairs(scene: str, count: int, seed: int, size: tuple[int, int], cache: Path) -> list:
    """``count`` held-out pairs of ``scene`` (endoscopy | room), views of ``size`` (W, H)."""
    from slam.features.train import WarpRange, heldout_pairs, synth_images

    variants = SCENES[scene]
    per_variant = max(1, -(-count // len(variants)))
    frames = max(2, -(-per_variant // 2))
    pool = []
    for k, variant in enumerate(variants):
        pool += synth_images(variant, seed + k, frames, cache)
    return heldout_pairs(pool, count, seed, size, WarpRange())[:count]


def format_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """A Markdown table of ``results[scene][method][column]``."""
    lines = ["| scene | features | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 2)]
    for scene, by_method in results.items():
        for method, r in by_method.items():
            cells = [f"{r[c]:.3f}" if c.startswith(("mma", "rep")) else f"{r[c]:.1f}" for c in COLUMNS]
            lines.append(f"| {scene} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from slam.config import load_config
    from slam.errors import ConfigError
    from slam.features.factory import create_extractor
    from slam.features.train import evaluate_extractor
    from slam.synth import parse_size

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    methods = [m.strip() for m in str(args.features).split(",") if m.strip()]
    scenes = [s.strip() for s in str(args.scenes).split(",") if s.strip()]
    bad = [m for m in methods if m not in METHODS] + [s for s in scenes if s not in SCENES]
    if bad:
        raise ConfigError(f"bench-features: unknown feature type or scene {', '.join(bad)}; features: "
                          f"{', '.join(METHODS)}; scenes: {', '.join(SCENES)}")
    if args.pairs <= 0 or args.num_features <= 0:
        raise ConfigError("bench-features: --pairs and --num-features must be > 0")
    size = parse_size(args.size)
    overrides = list(args.set) + [f"features.num_features={args.num_features}"]
    if args.weights:
        overrides.append(f"features.weights={json.dumps(str(args.weights))}")
    cfg = load_config(args.config, overrides)
    device = "cpu"
    if any(m.startswith("superpoint") for m in methods) or args.torch_matching or args.timing:
        from slam.features.superpoint import import_torch, resolve_device

        torch = import_torch()
        device = resolve_device(args.device)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
    if args.timing:
        fcfg = load_config(args.config, overrides + ["features.type=superpoint"]).features
        res = time_superpoint(fcfg, device, parse_size(args.timing_size), args.timing_batch)
        print(json.dumps({"device": device, "size": args.timing_size, "batch": args.timing_batch, **res}, indent=2))
        return 0
    matcher = None
    if args.torch_matching:
        from slam.features.torch_matching import match_features_torch

        def matcher(fa, fb):
            return match_features_torch(fa, fb, cfg.features.ratio, cfg.features.mutual, device=device)

    results: dict[str, dict[str, dict[str, float]]] = {}
    for scene in scenes:
        t0 = time.perf_counter()
        pairs = scene_pairs(scene, args.pairs, args.seed, size, Path(args.work))
        log.info("%s: %d pairs ready (%.1f s)", scene, len(pairs), time.perf_counter() - t0)
        results[scene] = {}
        for method in methods:
            kind = "superpoint" if method.startswith("superpoint") else method
            fcfg = load_config(args.config, overrides + [f"features.type={kind}"]).features
            extractor = create_extractor(fcfg, device=device)
            if method == "superpoint_snap":
                extractor.snap_radius = int(args.snap)
            extractor.extract(pairs[0].img_a)  # warm-up (model load, CUDA kernels) outside the timing
            results[scene][method] = evaluate_extractor(extractor, pairs, fcfg.ratio, fcfg.mutual, matcher=matcher)
            log.info("%s %s: MMA@3 %.3f", scene, method, results[scene][method]["mma@3"])
    print(format_table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args) | {"device": device}, "results": results},
                                              indent=2, default=str), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tools/bench_features.py``."""
    from slam.errors import SlamError

    parser = argparse.ArgumentParser(prog="bench_features", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except SlamError as exc:
        print(f"error: {exc}")
        return 2
