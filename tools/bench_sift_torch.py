"""Torch SIFT against OpenCV SIFT: quality on homography pairs and speed per stage.

Quality: every source image is warped by a random homography (rotation up to +-30 deg, scale 0.8-1.25,
mild perspective, shift) plus sensor noise; both extractors run with the same FeatureConfig (CLAHE, masks)
on both images. Reported per source and overall:

- repeatability@3px: keypoints in the region both images see whose projection has a keypoint of the other
  image within 3 px, over all keypoints in that region (both directions, as in SuperPoint's evaluation);
- MMA@3px: share of descriptor matches (mutual nearest neighbour + ratio test, the project's CPU matcher for
  both extractors) whose reprojection error is below 3 px; and the number of correct matches.

Speed: the torch extractor's stages (torch.cuda.synchronize between stages on CUDA), the whole single-frame
call, and ``extract_batch`` on a batch of frames (per frame), against OpenCV SIFT (per frame, CPU).

Sources: ``tube`` / ``room`` (frames rendered by slam.synth, cached in --cache; needs open3d once),
``sinus`` (../shared/data/sinus_dev frames at half size, with its mask.png), ``textured`` (procedural
multi-scale noise, no data needed). Examples:

    python tools/bench_sift_torch.py --device cpu --threads 1
    python tools/bench_sift_torch.py --device cuda --sources textured --timing-only --num-features 2000
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import cv2
import numpy as np

from slam.config import FeatureConfig
from slam.features.matching import match_descriptors
from slam.features.sift import SiftExtractor

ROOT = Path(__file__).resolve().parents[1]
SINUS = ROOT.parent / "shared" / "data" / "sinus_dev"
SYNTH_PRESETS = {"tube": ("tube", 7), "room": ("room", 11)}  # held-out seeds (tests use others)

log = logging.getLogger("bench_sift_torch")


# ------------------------------------------------------------------------------------------------ images
def textured_image(width: int, height: int, seed: int) -> np.ndarray:
    """``(H, W)`` uint8 multi-scale smooth noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width), np.float32)
    for step in (2, 4, 8, 16, 32):
        noise = rng.standard_normal((height // step + 2, width // step + 2)).astype(np.float32)
        img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * np.sqrt(step)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return ((img - img.min()) / (img.max() - img.min()) * 255.0).astype(np.uint8)


def synth_frames(name: str, cache: Path, count: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """``count`` frames (gray, mask) of a synthetic preset, rendered once into ``cache``."""
    preset, seed = SYNTH_PRESETS[name]
    folder = cache / f"{preset}_seed{seed}"
    stride = 10
    if not (folder / "rgb").is_dir() or len(list((folder / "rgb").glob("*.png"))) < count * stride:
        from slam.synth.generate import generate

        generate(preset, folder, frames=count * stride, seed=seed, overwrite=True)
    mask = cv2.imread(str(folder / "mask.png"), cv2.IMREAD_GRAYSCALE) if (folder / "mask.png").is_file() else None
    paths = sorted((folder / "rgb").glob("*.png"))[::stride][:count]
    return [(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), mask) for p in paths]


def sinus_frames(count: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Held-out sinus_dev frames (every 7th from frame 3) at half size, with the field-of-view mask."""
    paths = sorted((SINUS / "rgb").iterdir())[3::7][:count]
    mask = cv2.imread(str(SINUS / "mask.png"), cv2.IMREAD_GRAYSCALE)
    out = []
    for p in paths:
        g = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        g = cv2.resize(g, (g.shape[1] // 2, g.shape[0] // 2), interpolation=cv2.INTER_AREA)
        m = cv2.resize(mask, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_NEAREST)
        out.append((g, m))
    return out


def load_source(
    name: str, cache: Path, count: int, size: tuple[int, int]
) -> list[tuple[np.ndarray, np.ndarray | None]]:
    if name == "textured":
        return [(textured_image(size[0], size[1], 100 + i), None) for i in range(count)]
    if name == "sinus":
        if not SINUS.is_dir():
            log.warning("skipping sinus: %s not present", SINUS)
            return []
        return sinus_frames(count)
    try:
        return synth_frames(name, cache, count)
    except Exception as exc:  # open3d missing on a bare GPU machine, etc.
        log.warning("skipping %s: %s", name, exc)
        return []


def random_homography(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A 3x3 homography about the image centre: rotation +-30 deg, scale 0.8-1.25, mild perspective, shift."""
    c = np.array([[1, 0, w / 2], [0, 1, h / 2], [0, 0, 1]], np.float64)
    ang = np.radians(rng.uniform(-30, 30))
    s = np.exp(rng.uniform(np.log(0.8), np.log(1.25)))
    A = np.array([[s * np.cos(ang), -s * np.sin(ang), 0], [s * np.sin(ang), s * np.cos(ang), 0], [0, 0, 1]])
    P = np.eye(3)
    P[2, :2] = rng.uniform(-0.15, 0.15, 2) / np.array([w, h])
    T = np.eye(3)
    T[:2, 2] = rng.uniform(-0.05, 0.05, 2) * np.array([w, h])
    return T @ c @ P @ A @ np.linalg.inv(c)


def make_pair(gray: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator):
    """(gray1, mask1, gray2, mask2, H 3x3 mapping image 1 to image 2)."""
    h, w = gray.shape
    m1 = np.full((h, w), 255, np.uint8) if mask is None else (mask > 0).astype(np.uint8) * 255
    H = random_homography(w, h, rng)
    g2 = cv2.warpPerspective(gray, H, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    m2 = cv2.warpPerspective(m1, H, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    noise = rng.normal(0.0, 2.0, g2.shape)
    g2 = np.clip(g2.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return gray, m1, g2, m2, H


# ------------------------------------------------------------------------------------------------ metrics
def project(xy: np.ndarray, H: np.ndarray) -> np.ndarray:
    if len(xy) == 0:
        return np.zeros((0, 2))
    return cv2.perspectiveTransform(xy.reshape(-1, 1, 2).astype(np.float64), H).reshape(-1, 2)


def inside(xy: np.ndarray, mask: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    ix, iy = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    ok = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    out = np.zeros(len(xy), bool)
    out[ok] = mask[iy[ok], ix[ok]] > 0
    return out


def pair_metrics(f1, f2, m1, m2, H, cfg: FeatureConfig, px: float = 3.0) -> dict[str, float]:
    """Repeatability and matching accuracy at ``px`` pixels of two Features under homography H (1 -> 2)."""
    Hi = np.linalg.inv(H)
    p12 = project(f1.keypoints, H)
    p21 = project(f2.keypoints, Hi)
    c1 = inside(p12, m2)
    c2 = inside(p21, m1)
    rep_hits = 0
    if len(f1) and len(f2):
        d = np.linalg.norm(p12[c1][:, None] - f2.keypoints[None], axis=2)
        rep_hits += int((d.min(axis=1) <= px).sum()) if d.size else 0
        d = np.linalg.norm(p21[c2][:, None] - f1.keypoints[None], axis=2)
        rep_hits += int((d.min(axis=1) <= px).sum()) if d.size else 0
    n_common = int(c1.sum() + c2.sum())
    matches = match_descriptors(f1.descriptors, f2.descriptors, False, cfg.ratio, cfg.mutual)
    correct = distinct = 0
    if len(matches):
        err = np.linalg.norm(p12[matches[:, 0]] - f2.keypoints[matches[:, 1]], axis=1)
        good = matches[err <= px, 0]
        correct = len(good)
        # OpenCV SIFT repeats a keypoint for every secondary orientation: count distinct locations too
        distinct = len(np.unique(np.round(f1.keypoints[good] * 10.0), axis=0)) if len(good) else 0
    return {"kp": 0.5 * (len(f1) + len(f2)), "rep_hits": rep_hits, "common": n_common, "matches": len(matches),
            "correct": correct, "distinct": distinct}


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    tot = {k: sum(r[k] for r in rows) for k in rows[0]}
    return {
        "kp": tot["kp"] / len(rows),
        "rep": tot["rep_hits"] / max(tot["common"], 1),
        "mma": tot["correct"] / max(tot["matches"], 1),
        "matches": tot["matches"] / len(rows),
        "correct": tot["correct"] / len(rows),
        "distinct": tot["distinct"] / len(rows),
    }


# ------------------------------------------------------------------------------------------------ timing
def time_torch(ex, gray: np.ndarray, repeats: int, batch: int, label: str) -> dict[str, float]:
    """Milliseconds: per stage (mean, eager), single-frame extract_batch, batched per frame, extract() incl.
    CLAHE and the transfers."""
    import torch

    dev = ex.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    img = torch.from_numpy(gray).to(dev)[None, None].to(torch.float32) / 255.0
    imgs = img.expand(batch, -1, -1, -1).contiguous()
    out: dict[str, float] = {}
    with torch.inference_mode():
        for _ in range(3):  # warm-up (cuDNN autotuning, allocator)
            ex.extract_batch(img)
            ex.extract_batch(imgs)
        sync()
        stages: dict[str, float] = {}
        for _ in range(repeats):
            ex.extract_batch(img, timings=stages)
        if label == "eager":
            out.update({f"stage {k}": v / repeats for k, v in stages.items()})
        sync()
        t = time.perf_counter()
        for _ in range(repeats):
            ex.extract_batch(img)
        sync()
        out[f"{label}: extract_batch B=1 (per frame)"] = (time.perf_counter() - t) * 1000.0 / repeats
        t = time.perf_counter()
        for _ in range(repeats):
            ex.extract_batch(imgs)
        sync()
        out[f"{label}: extract_batch B={batch} (per frame)"] = (time.perf_counter() - t) * 1000.0 / (repeats * batch)
    t = time.perf_counter()
    for _ in range(repeats):
        ex.extract(gray)
    out[f"{label}: extract() numpy in/out + CLAHE"] = (time.perf_counter() - t) * 1000.0 / repeats
    return out


def time_opencv(ex, gray: np.ndarray, repeats: int) -> float:
    ex.extract(gray)
    t = time.perf_counter()
    for _ in range(repeats):
        ex.extract(gray)
    return (time.perf_counter() - t) * 1000.0 / repeats


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--sources", nargs="+", default=["tube", "room", "sinus"],
                    choices=["tube", "room", "sinus", "textured"])
    ap.add_argument("--images", type=int, default=4, help="images per source (one homography pair each)")
    ap.add_argument("--num-features", type=int, default=2000)
    ap.add_argument("--no-clahe", action="store_true")
    ap.add_argument("--refine-steps", type=int, default=None)
    ap.add_argument("--dominant-only", action="store_true", help="no secondary-orientation keypoints")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_sift_torch_cache"))
    ap.add_argument("--repeats", type=int, default=20, help="timing repeats")
    ap.add_argument("--batch", type=int, default=8, help="batch size of the batched timing")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--quality-only", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    import torch

    from slam.features.sift_torch import TorchSIFTExtractor

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = FeatureConfig(type="sift", num_features=args.num_features, clahe=not args.no_clahe)
    kwargs = {} if args.refine_steps is None else {"refine_steps": args.refine_steps}
    if args.dominant_only:
        kwargs["secondary_orientations"] = False
    tex = TorchSIFTExtractor(cfg, device=args.device, **kwargs)
    cvx = SiftExtractor(cfg)
    rng = np.random.default_rng(args.seed)
    first_image = None

    if not args.timing_only:
        print(f"\nQuality on homography pairs, {args.num_features} features, 3 px "
              f"(rep = repeatability, MMA = mean matching accuracy, correct = correct matches per pair, "
              f"distinct = at distinct keypoint locations)")
        print(f"{'source':10s} {'extractor':8s} {'kp':>6s} {'rep':>6s} {'MMA':>6s} {'matches':>8s} {'correct':>8s} "
              f"{'distinct':>8s}")
        all_rows: dict[str, list] = {"opencv": [], "torch": []}
        for src in args.sources:
            frames = load_source(src, args.cache, args.images, (640, 480))
            if not frames:
                continue
            if first_image is None:
                first_image = frames[0][0]
            rows: dict[str, list] = {"opencv": [], "torch": []}
            for gray, mask in frames:
                g1, m1, g2, m2, H = make_pair(gray, mask, rng)
                for name, ex in (("opencv", cvx), ("torch", tex)):
                    f1, f2 = ex.extract(g1, m1), ex.extract(g2, m2)
                    rows[name].append(pair_metrics(f1, f2, m1, m2, H, cfg))
            for name in rows:
                s = summarise(rows[name])
                all_rows[name] += rows[name]
                print(f"{src:10s} {name:8s} {s['kp']:6.0f} {s['rep']:6.3f} {s['mma']:6.3f} {s['matches']:8.1f} "
                      f"{s['correct']:8.1f} {s['distinct']:8.1f}")
        if all_rows["opencv"]:
            for name in all_rows:
                s = summarise(all_rows[name])
                print(f"{'ALL':10s} {name:8s} {s['kp']:6.0f} {s['rep']:6.3f} {s['mma']:6.3f} {s['matches']:8.1f} "
                      f"{s['correct']:8.1f} {s['distinct']:8.1f}")
            so, st = summarise(all_rows["opencv"]), summarise(all_rows["torch"])
            print(f"torch / opencv: repeatability {st['rep'] / max(so['rep'], 1e-9):.3f}, "
                  f"MMA {st['mma'] / max(so['mma'], 1e-9):.3f}, correct matches "
                  f"{st['correct'] / max(so['correct'], 1e-9):.3f}, at distinct locations "
                  f"{st['distinct'] / max(so['distinct'], 1e-9):.3f}")

    if not args.quality_only:
        gray = textured_image(640, 480, 7) if first_image is None or first_image.shape != (480, 640) else first_image
        if gray.shape != (480, 640):
            gray = cv2.resize(gray, (640, 480), interpolation=cv2.INTER_AREA)
        dev = torch.device(args.device)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
        print(f"\nTiming, 640x480, {args.num_features} features, device {args.device} ({name}), "
              f"mean of {args.repeats} runs")
        res = time_torch(tex, gray, args.repeats, args.batch, "eager")
        if dev.type == "cuda":
            graphed = TorchSIFTExtractor(cfg, device=args.device, cuda_graph=True, **kwargs)
            res.update(time_torch(graphed, gray, args.repeats, args.batch, "cuda graph"))
            cpu = TorchSIFTExtractor(cfg, device="cpu", **kwargs)
            ref = cpu.extract(gray)
            for label, ex in (("eager", tex), ("cuda graph", graphed)):
                got = ex.extract(gray)
                d = np.linalg.norm(got.keypoints[:, None] - ref.keypoints[None], axis=2).min(axis=1)
                print(f"  {label} on {args.device} vs CPU: {len(got)} / {len(ref)} keypoints, "
                      f"{(d < 0.05).mean():.3f} within 0.05 px of a CPU keypoint")
        for k, v in res.items():
            print(f"  {k:45s} {v:9.3f} ms")
        cv_ms = time_opencv(cvx, gray, max(3, args.repeats // 4))
        print(f"  {'OpenCV SIFT extract() on CPU (per frame)':45s} {cv_ms:9.3f} ms")


if __name__ == "__main__":
    main()
