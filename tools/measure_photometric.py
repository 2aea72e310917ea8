"""Does contrast normalisation / illumination flattening / specular masking help feature matching?

For every consecutive frame pair (or pairs ``--gap`` frames apart) of a folder-layout sequence, SIFT
keypoints are matched (ratio test + mutual check) and an essential matrix is fitted by RANSAC (1 px); the
inlier count is the score. Variants: raw luminance, CLAHE, illumination flattening + CLAHE, flattening
alone, each with and without the specular-highlight mask, all inside the field-of-view mask (``mask.png``
or the automatic one). Prints one table row per variant (median / mean inliers over pairs, mean keypoints)
and, with ``groundtruth.txt``, the median rotation and translation-direction errors of the pairs' relative
poses (inlier counts alone reward matches on highlights that move with the light).

    python tools/measure_photometric.py ../shared/data/sinus_dev --scale 0.5
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from slam.camera import read_calib_file
from slam.evaluation.trajectory import read_tum
from slam.features.masks import combine_masks, erode_mask, estimate_fov_mask, load_mask, specular_mask
from slam.features.photometric import flatten_illumination, normalize_luminance, to_gray
from slam.geometry.se3 import invert, rotation_angle

PREPROCESS = {
    "raw": lambda g, m: g,
    "clahe": lambda g, m: normalize_luminance(g),
    "flatten+clahe": lambda g, m: normalize_luminance(flatten_illumination(g, mask=m)),
    "flatten": lambda g, m: flatten_illumination(g, mask=m),
}


def load_sequence(root: Path, scale: float, max_frames: int | None) -> list[np.ndarray]:
    folder = root / "rgb" if (root / "rgb").is_dir() else root / "images"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if max_frames:
        paths = paths[:max_frames]
    frames = []
    for p in paths:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frames.append(img)
    return frames


def match_inliers(K: np.ndarray, a, b, T_c2c1: np.ndarray | None) -> tuple[int, int, float, float]:
    """Matches after ratio + mutual check, essential-matrix RANSAC inliers at 1 px, and with ground truth
    ``T_c2c1`` (4x4, camera 1 to camera 2) the rotation and translation-direction errors in degrees."""
    nan = float("nan")
    (kpa, da), (kpb, db) = a, b
    if da is None or db is None or len(kpa) < 8 or len(kpb) < 8:
        return 0, 0, nan, nan
    bf = cv2.BFMatcher(cv2.NORM_L2)
    fwd = bf.knnMatch(da, db, k=2)
    bwd = bf.match(db, da)
    back = {m.queryIdx: m.trainIdx for m in bwd}
    good = [
        p[0] for p in fwd
        if len(p) == 2 and p[0].distance < 0.8 * p[1].distance and back.get(p[0].trainIdx) == p[0].queryIdx
    ]
    if len(good) < 8:
        return len(good), 0, nan, nan
    pa = np.float64([kpa[m.queryIdx].pt for m in good])
    pb = np.float64([kpb[m.trainIdx].pt for m in good])
    cv2.setRNGSeed(0)
    E, inl = cv2.findEssentialMat(pa, pb, K, method=cv2.RANSAC, prob=0.999, threshold=1.0)
    if E is None or inl is None:
        return len(good), 0, nan, nan
    n_inl = int(inl.sum())
    if T_c2c1 is None or E.shape != (3, 3):
        return len(good), n_inl, nan, nan
    _, R, t, _ = cv2.recoverPose(E, pa, pb, K, mask=inl.copy())
    r_err = np.degrees(rotation_angle(R.T @ T_c2c1[:3, :3]))
    t_gt = T_c2c1[:3, 3] / max(np.linalg.norm(T_c2c1[:3, 3]), 1e-12)
    t_err = np.degrees(np.arccos(np.clip(float(t.ravel() @ t_gt), -1.0, 1.0)))
    return len(good), n_inl, float(r_err), float(t_err)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sequence", type=Path)
    ap.add_argument("--scale", type=float, default=0.5)
    ap.add_argument("--gap", type=int, default=1, help="frames between the two images of a pair")
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--mask", choices=["file", "auto"], default="file")
    ap.add_argument("--contrast", type=float, nargs="+", default=[0.04, 0.01], help="SIFT contrast thresholds")
    ap.add_argument("--nfeatures", type=int, default=1500)
    ap.add_argument("--json", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()

    frames = load_sequence(args.sequence, args.scale, args.max_frames)
    h, w = frames[0].shape[:2]
    full = cv2.imread(str(sorted((args.sequence / "rgb").iterdir())[0])) if (args.sequence / "rgb").is_dir() else None
    H, W = full.shape[:2] if full is not None else (int(round(h / args.scale)), int(round(w / args.scale)))
    K = read_calib_file(args.sequence / "calib.txt", W, H).scaled(args.scale).K
    margin = max(1, int(round(4 * args.scale)))
    if args.mask == "file" and (args.sequence / "mask.png").is_file():
        fov = erode_mask(load_mask(args.sequence / "mask.png", (h, w)), margin)
    else:
        fov = estimate_fov_mask(frames[:10], margin_px=margin).mask
    specular = [specular_mask(f, 235, 60, max(1, int(round(5 * args.scale)))) for f in frames]
    spec_share = float(np.mean([np.count_nonzero(s & fov) / np.count_nonzero(fov) for s in specular]))
    print(f"{len(frames)} frames {w}x{h}, gap {args.gap}, "
          f"specular pixels {100 * spec_share:.2f} % of the field of view")
    gt = None
    if (args.sequence / "groundtruth.txt").is_file():
        traj = read_tum(args.sequence / "groundtruth.txt")
        if len(traj.T_wc) >= len(frames):
            gt = traj.T_wc[: len(frames)]
    grays = [to_gray(f) for f in frames]
    rows = []
    for contrast in args.contrast:
        sift = cv2.SIFT_create(nfeatures=args.nfeatures, contrastThreshold=contrast)
        for name, fn in PREPROCESS.items():
            t0 = time.perf_counter()
            images = [fn(g, fov) for g in grays]
            t_pre = (time.perf_counter() - t0) / len(grays) * 1000
            for use_spec in (False, True):
                feats = []
                for img, spec in zip(images, specular):
                    usable = np.where(spec > 0, 0, 255).astype(np.uint8) if use_spec else None
                    feats.append(sift.detectAndCompute(img, combine_masks(fov, usable)))
                stats = [
                    match_inliers(K, feats[i], feats[i + args.gap],
                                  None if gt is None else invert(gt[i + args.gap]) @ gt[i])
                    for i in range(len(feats) - args.gap)
                ]
                inliers = np.array([s[1] for s in stats])
                row = {
                    "contrast": contrast, "preprocess": name, "specular_mask": use_spec,
                    "keypoints": float(np.mean([len(f[0]) for f in feats])),
                    "matches": float(np.mean([s[0] for s in stats])),
                    "inliers_median": float(np.median(inliers)), "inliers_mean": float(np.mean(inliers)),
                    "inliers_min": int(inliers.min()), "preprocess_ms": t_pre,
                    "rot_err_deg_median": float(np.nanmedian([s[2] for s in stats])),
                    "trans_dir_err_deg_median": float(np.nanmedian([s[3] for s in stats])),
                }
                rows.append(row)
                print(
                    f"contrast {contrast:<5} {name:<14} specular {'masked' if use_spec else 'kept  '}  "
                    f"kp {row['keypoints']:7.1f}  matches {row['matches']:7.1f}  "
                    f"inliers median {row['inliers_median']:6.1f} "
                    f"mean {row['inliers_mean']:6.1f} min {row['inliers_min']:4d}  prep {t_pre:5.1f} ms  "
                    f"err R {row['rot_err_deg_median']:.2f} deg t {row['trans_dir_err_deg_median']:.1f} deg",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
