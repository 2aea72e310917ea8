"""Fuzz the front end with a seeded loop: random images, random calibrations, random correspondences.

Each test draws a fixed budget of cases from ``numpy.random.default_rng(seed)`` (``FAST`` in ``make test``,
``SLOW`` under the ``slow`` marker: ``pytest -m slow tests/test_fuzz.py``) and asserts that nothing raises
except the documented :class:`slam.errors.SlamError` for impossible inputs, and that every output is finite
and of the documented shape. A failing case prints its seed and index, so it can be replayed alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from slam.camera import Camera
from slam.config import Config, FeatureConfig
from slam.errors import CalibrationError
from slam.features.factory import create_extractor
from slam.geometry.pnp import solve_pnp
from slam.geometry.se3 import invert
from slam.geometry.two_view import initialize_two_view

FAST, SLOW = 25, 400
BUDGETS = [pytest.param(FAST, id="fast"), pytest.param(SLOW, id="soak", marks=pytest.mark.slow)]


def rotation(rng: np.random.Generator, max_deg: float = 180.0) -> np.ndarray:
    """A random rotation of at most ``max_deg`` degrees (Rodrigues)."""
    import cv2

    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0, max_deg))
    return cv2.Rodrigues(axis * angle)[0]


def assert_rigid(T: np.ndarray) -> None:
    assert T.shape == (4, 4) and np.all(np.isfinite(T))
    R = T[:3, :3]
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0
    assert np.allclose(T[3], [0, 0, 0, 1])


# ---------------------------------------------------------------------------------------------- images
def random_image(rng: np.random.Generator, min_size: int = 8) -> np.ndarray:
    """A random ``(H, W)`` uint8 image of one of several kinds, sizes ``min_size``..400 px (odd sizes too)."""
    import cv2

    h, w = int(rng.integers(min_size, 300)), int(rng.integers(min_size, 400))
    kind = rng.integers(0, 7)
    if kind == 0:
        return rng.integers(0, 256, (h, w), dtype=np.uint8)  # white noise
    if kind == 1:
        return np.full((h, w), rng.integers(0, 256), np.uint8)  # constant (black, white, grey)
    if kind == 2:  # smooth blobs
        small = rng.random((max(h // 8, 1), max(w // 8, 1))).astype(np.float32)
        return cv2.normalize(cv2.resize(small, (w, h)), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if kind == 3:  # a gradient
        return np.tile(np.linspace(0, 255, w, dtype=np.float32), (h, 1)).astype(np.uint8)
    if kind == 4:  # checkerboard of a random cell size
        c = int(rng.integers(1, 20))
        yy, xx = np.mgrid[:h, :w]
        return (((yy // c + xx // c) % 2) * 255).astype(np.uint8)
    if kind == 5:  # sparse bright dots on black
        img = np.zeros((h, w), np.uint8)
        img[rng.integers(0, h, 50), rng.integers(0, w, 50)] = 255
        return img
    img = rng.integers(0, 256, (h, w), dtype=np.uint8)  # saturated halves
    img[:, : w // 2] = 255
    return img


def random_mask(rng: np.random.Generator, shape) -> np.ndarray | None:
    k = rng.integers(0, 4)
    if k == 0:
        return None
    if k == 1:
        return np.zeros(shape, np.uint8)
    if k == 2:
        return np.where(rng.random(shape) > 0.5, 255, 0).astype(np.uint8)
    mask = np.zeros(shape, np.uint8)
    h, w = shape
    mask[h // 4: 3 * h // 4 + 1, w // 4: 3 * w // 4 + 1] = 255
    return mask


def check_features(feats, gray: np.ndarray, mask: np.ndarray | None, extractor) -> None:
    n = len(feats)
    h, w = gray.shape
    assert feats.keypoints.shape == (n, 2) and np.all(np.isfinite(feats.keypoints))
    assert feats.descriptors.shape == (n, extractor.descriptor_dim)
    if not feats.binary:
        assert np.all(np.isfinite(feats.descriptors))
    for name in ("octaves", "sizes", "angles", "responses"):
        arr = getattr(feats, name)
        assert arr.shape == (n,) and np.all(np.isfinite(arr)), name
    kp = feats.keypoints
    assert np.all((kp[:, 0] >= -0.5) & (kp[:, 0] <= w - 0.5) & (kp[:, 1] >= -0.5) & (kp[:, 1] <= h - 0.5))
    if mask is not None and n:
        ij = np.clip(np.rint(kp).astype(int), 0, [w - 1, h - 1])
        assert np.mean(mask[ij[:, 1], ij[:, 0]] > 0) > 0.95, "keypoints outside the mask"


@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("kind", ["sift", "orb"])
def test_extractors_on_random_images(kind, budget):
    cfg = FeatureConfig(type=kind, num_features=300)
    extractor = create_extractor(cfg)
    rng = np.random.default_rng(1000 + budget)
    for case in range(budget):
        gray = random_image(rng)
        mask = random_mask(rng, gray.shape)
        try:
            feats = extractor.extract(gray, mask)
            check_features(feats, gray, mask, extractor)
            # describe given points: inside, on the border and outside the image
            h, w = gray.shape
            pts = np.concatenate([rng.uniform([-20, -20], [w + 20, h + 20], (30, 2)),
                                  [[0, 0], [w - 1, h - 1], [-0.5, -0.5]]]).astype(np.float32)
            described, idx = extractor.describe(gray, pts)
            assert len(described) == len(idx) and np.all((idx >= 0) & (idx < len(pts)))
            assert np.all(np.isfinite(described.keypoints))
        except Exception as exc:
            raise AssertionError(f"{kind} case {case} ({gray.shape}, mask {mask is not None}): {exc!r}") from exc


@pytest.mark.parametrize("budget", BUDGETS)
def test_corner_detector_on_random_images(budget):
    from slam.flow_tracking import detect_corners

    rng = np.random.default_rng(2000 + budget)
    for case in range(budget):
        gray = random_image(rng, min_size=11)  # smaller: see test_corner_detector_on_tiny_image
        mask = random_mask(rng, gray.shape)
        existing = rng.uniform(0, [gray.shape[1], gray.shape[0]], (int(rng.integers(0, 20)), 2)).astype(np.float32)
        pts = detect_corners(gray, mask, existing, 200, int(rng.integers(1, 20)))
        assert pts.ndim == 2 and pts.shape[1] == 2 and np.all(np.isfinite(pts)), case


def test_corner_detector_on_tiny_image():
    from slam.flow_tracking import detect_corners

    gray = np.zeros((8, 40), np.uint8)
    gray[2:5, 10:13] = 255
    pts = detect_corners(gray, None, np.zeros((0, 2)), 50, 2)
    assert pts.ndim == 2 and pts.shape[1] == 2


# ---------------------------------------------------------------------------------------------- calibrations
def random_camera(rng: np.random.Generator) -> Camera:
    """A valid random camera: any size, focal 1..5000 px, principal point anywhere, mild to wild distortion."""
    w, h = int(rng.integers(16, 4000)), int(rng.integers(16, 3000))
    f = float(10 ** rng.uniform(0, 3.7))
    fx, fy = f, f * float(rng.uniform(0.5, 2.0))
    cx, cy = float(rng.uniform(-0.5, 1.5) * w), float(rng.uniform(-0.5, 1.5) * h)
    model = "fisheye" if rng.random() < 0.3 else "pinhole"
    scale = float(10 ** rng.uniform(-4, 0))
    if model == "fisheye":
        dist = tuple(rng.uniform(-1, 1, 4) * scale * np.array([0.3, 0.1, 0.03, 0.01]))
    else:
        n = int(rng.choice([0, 4, 5, 8]))
        dist = tuple(rng.uniform(-1, 1, n) * scale)
    return Camera(w, h, fx, fy, cx, cy, dist, model)


@pytest.mark.parametrize("budget", BUDGETS)
def test_camera_functions_on_random_calibrations(budget):
    rng = np.random.default_rng(3000 + budget)
    for case in range(budget):
        cam = random_camera(rng)
        uv = rng.uniform([-0.5, -0.5], [cam.width - 0.5, cam.height - 0.5], (50, 2))
        where = f"case {case}: {cam}"
        xy = cam.normalize(uv)
        rays = cam.unproject(uv)
        assert xy.shape == (50, 2) and rays.shape == (50, 3), where
        # finite, or NaN (both coordinates) where a wild lens model has no inverse; never inf
        assert not np.any(np.isinf(xy)) and np.array_equal(np.isnan(xy[:, 0]), np.isnan(xy[:, 1])), where
        ok = np.isfinite(xy).all(axis=1)
        assert np.all(np.isfinite(rays[ok])) and np.allclose(np.linalg.norm(rays[ok], axis=1), 1.0), where
        assert np.array_equal(np.isfinite(cam.undistort_points(uv)).all(axis=1), ok), where
        # project(unproject(uv)) = uv where the lens model is invertible (mild distortion)
        corners = np.array([[-0.5, -0.5], [cam.width - 0.5, cam.height - 0.5], [-0.5, cam.height - 0.5],
                            [cam.width - 0.5, -0.5]])
        r2 = float(np.max(np.sum(((corners - [cam.cx, cam.cy]) / [cam.fx, cam.fy]) ** 2, axis=1)))
        kmax = max((abs(d) for d in cam.dist), default=0.0)
        mild = kmax * max(r2, 1.0) ** 3 < 1e-4 if cam.model == "pinhole" else (kmax * max(r2, 1.0) ** 4 < 1e-4
                                                                                 and r2 < 2.5 ** 2)
        if mild:
            back = cam.project(rays)
            assert np.allclose(back, uv, atol=1e-3 * max(1.0, cam.fx / 100)), where
        # points behind the camera project to NaN, never to a wrong pixel
        behind = cam.project(np.array([[0.1, 0.2, -1.0]]))
        if cam.model == "pinhole":
            assert np.all(np.isnan(behind)), where
        scaled = cam.scaled(float(rng.uniform(0.1, 2.0)))
        assert scaled.fx > 0 and scaled.width >= 1, where


@pytest.mark.parametrize(
    "dist, f",
    [
        ((-0.39, 0.23, 0.0027, 0.002), 355.0),  # wide-angle lens, typical of endoscopes and action cameras
        ((-0.4287, 0.159, 0.0048, 0.0018), 271.0),
        ((-0.47, 0.2, 0.001, -0.001, -0.02), 420.0),
        ((0.2615, 0.1094, -0.0032, -0.0005, 0.0668, -0.1039, -0.0926, -0.0279), 258.0),  # rational, pole nearby
    ],
)
def test_normalize_inverts_strong_distortion(dist, f):
    """Regression: cv2.undistortPoints alone was pixels off at the corners of these (invertible) lenses."""
    cam = Camera(640, 480, f, f, 319.5, 239.5, dist)
    uv = np.stack(np.meshgrid(np.linspace(-0.5, 639.5, 17), np.linspace(-0.5, 479.5, 13)), -1).reshape(-1, 2)
    xy = cam.normalize(uv)
    back = cam.project(np.column_stack([xy, np.ones(len(xy))]))
    assert np.abs(back - uv).max() < 1e-6


@pytest.mark.parametrize("budget", BUDGETS)
def test_impossible_calibrations_raise_calibration_error(tmp_path, budget):
    """Random junk in calib.txt: CalibrationError naming the file, or a valid camera; nothing else."""
    from slam.camera import read_calib_file

    rng = np.random.default_rng(4000 + budget)
    tokens = ["nan", "inf", "-inf", "0", "-1", "1e308", "1e-308", "abc", "", "1,2", "3.5", "640", "-0", "fisheye"]
    for case in range(budget):
        line = " ".join(str(rng.choice(tokens)) if rng.random() < 0.5 else f"{rng.normal() * 10.0 ** rng.integers(-3, 4):.6g}"
                        for _ in range(int(rng.integers(0, 14))))
        path = tmp_path / "calib.txt"
        path.write_text(line + "\n")
        try:
            cam = read_calib_file(path, int(rng.integers(1, 5000)), int(rng.integers(1, 5000)))
        except CalibrationError as exc:
            assert str(path) in str(exc), (case, line, str(exc))
            continue
        values = np.array([cam.fx, cam.fy, cam.cx, cam.cy, *cam.dist])
        assert np.all(np.isfinite(values)) and cam.fx > 0 and cam.fy > 0, (case, line)


# ---------------------------------------------------------------------------------------------- two-view init
def random_correspondences(rng: np.random.Generator):
    """(x1, x2) normalised coordinates of one of several kinds, incl. degenerate and hostile ones."""
    n = int(rng.choice([0, 1, 5, 8, 30, 200, 600]))
    kind = rng.integers(0, 7)
    if kind == 0:  # unrelated random points
        return rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
    if kind == 1:  # identical points (no motion)
        x = rng.normal(size=(n, 2)) * 0.5
        return x, x.copy()
    if kind == 2:  # all the same point
        return np.ones((n, 2)) * 0.1, np.ones((n, 2)) * 0.2
    if kind == 3:  # NaN / inf rows mixed in
        x1, x2 = rng.normal(size=(n, 2)), rng.normal(size=(n, 2))
        if n:
            x1[rng.integers(0, n, max(n // 3, 1))] = np.nan
            x2[rng.integers(0, n, max(n // 5, 1))] = np.inf
        return x1, x2
    if kind == 4:  # huge coordinates
        return rng.normal(size=(n, 2)) * 1e8, rng.normal(size=(n, 2)) * 1e8
    # a real scene: random depth, random motion (pure rotation when kind 5), noise and outliers
    X = np.column_stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n), rng.uniform(1, 10, n)])
    if rng.random() < 0.3:
        X[:, 2] = 3.0  # a plane
    R = rotation(rng, 30)
    t = np.zeros(3) if kind == 5 else rng.normal(size=3) * rng.choice([1e-4, 0.05, 0.5])
    X2 = X @ R.T + t
    with np.errstate(divide="ignore", invalid="ignore"):
        x1 = X[:, :2] / X[:, 2:]
        x2 = X2[:, :2] / X2[:, 2:]
    noise = rng.choice([0.0, 1e-3, 1e-2])
    x1 = x1 + rng.normal(size=x1.shape) * noise
    x2 = x2 + rng.normal(size=x2.shape) * noise
    out = rng.random(n) < rng.uniform(0, 0.5)
    x2[out] = rng.normal(size=(int(out.sum()), 2))
    return x1, x2


@pytest.mark.parametrize("budget", BUDGETS)
def test_two_view_initialisation_on_random_matches(budget):
    rng = np.random.default_rng(5000 + budget)
    for case in range(budget):
        x1, x2 = random_correspondences(rng)
        focal = float(10 ** rng.uniform(1, 3.5))
        try:
            res = initialize_two_view(x1, x2, focal, min_triangulated=int(rng.integers(5, 60)), seed=case)
        except Exception as exc:
            raise AssertionError(f"case {case}: {len(x1)} matches: {exc!r}") from exc
        n = len(x1)
        assert res.valid.shape == (n,) and res.inliers.shape == (n,) and res.points_1.shape == (n, 3), case
        if res.ok:
            assert_rigid(res.T_21)
            assert np.all(np.isfinite(res.points_1[res.valid])), case
            assert res.num_valid > 0
            depth2 = (res.points_1[res.valid] @ res.T_21[:3, :3].T + res.T_21[:3, 3])[:, 2]
            assert np.all(res.points_1[res.valid][:, 2] > 0) and np.all(depth2 > 0), case
        else:
            assert res.reason, case


# ---------------------------------------------------------------------------------------------- PnP
@pytest.mark.parametrize("budget", BUDGETS)
def test_pnp_on_random_inputs(budget):
    rng = np.random.default_rng(6000 + budget)
    solved_exact = 0
    for case in range(budget):
        n = int(rng.choice([0, 3, 4, 6, 12, 50, 300]))
        T_cw = np.eye(4)
        T_cw[:3, :3] = rotation(rng)
        T_cw[:3, 3] = rng.normal(size=3) * rng.choice([0.0, 1.0, 100.0])
        X_c = np.column_stack([rng.uniform(-2, 2, n), rng.uniform(-2, 2, n), rng.uniform(0.5, 20, n)])
        kind = rng.integers(0, 5)
        if kind == 1:
            X_c[:, 2] *= rng.choice([-1, 1], n)  # some behind the camera
        if kind == 2 and n:
            X_c[:] = X_c[0]  # all the same point
        X_w = (X_c - T_cw[:3, 3]) @ T_cw[:3, :3]
        with np.errstate(divide="ignore", invalid="ignore"):
            x = X_c[:, :2] / X_c[:, 2:]
        if kind == 3:
            x = rng.normal(size=(n, 2))  # unrelated observations
        if kind == 4 and n:
            X_w[rng.integers(0, n, max(n // 4, 1))] = np.nan
        focal = float(10 ** rng.uniform(1, 3.5))
        guess = None
        if rng.random() < 0.5:
            guess = T_cw.copy() if rng.random() < 0.5 else np.eye(4)
            guess[:3, 3] += rng.normal(size=3) * 0.1
        try:
            res = solve_pnp(X_w, x, focal, threshold_px=float(rng.uniform(0.5, 5)), T_cw_guess=guess,
                            min_inliers=int(rng.integers(4, 20)), seed=case)
        except Exception as exc:
            raise AssertionError(f"case {case}: kind {kind}, {n} points: {exc!r}") from exc
        if res is None:
            continue
        T_est, inliers = res
        assert_rigid(T_est)
        assert inliers.shape == (n,) and inliers.dtype == bool, case
        if kind == 0 and n >= 12:  # exact data: the pose must be right
            err = np.linalg.norm(invert(T_est)[:3, 3] - invert(T_cw)[:3, 3])
            assert err < 1e-3 * max(1.0, np.linalg.norm(T_cw[:3, 3])), (case, err)
            solved_exact += 1
    assert solved_exact >= 1


# ---------------------------------------------------------------------------------------------- whole front end
@pytest.mark.parametrize("budget", [pytest.param(4, id="fast"), pytest.param(40, id="soak", marks=pytest.mark.slow)])
@pytest.mark.parametrize("frontend", ["descriptors", "flow"])
def test_system_on_random_frames_and_calibrations(frontend, budget):
    """Random frames (some a moving crop of one texture, some noise) with random calibrations: no crash."""
    import cv2

    from slam.sources.base import FrameData
    from slam.system import System, run_frames

    rng = np.random.default_rng(7000 + budget + (frontend == "flow"))
    for case in range(budget):
        w, h = int(rng.integers(40, 200)), int(rng.integers(40, 160))
        f = float(rng.uniform(0.3, 3.0) * w)
        dist = tuple(rng.uniform(-0.3, 0.3, 4) * rng.random()) if rng.random() < 0.5 else ()
        cam = Camera(w, h, f, f * rng.uniform(0.9, 1.1), rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, dist)
        big = cv2.resize(rng.random((h // 4 + 4, w // 4 + 4)).astype(np.float32), (2 * w, 2 * h))
        big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        frames = []
        for i in range(12):
            if rng.random() < 0.2:
                img = random_image(rng)
                img = cv2.resize(img, (w, h))
            else:
                dx, dy = int(i * rng.uniform(0, 4)), int(i * rng.uniform(0, 3))
                img = big[dy: dy + h, dx: dx + w]
            frames.append(FrameData(i, i / 30.0, np.ascontiguousarray(img)))
        cfg = Config()
        cfg.system.sync = True
        cfg.system.device = "cpu"
        cfg.tracking.frontend = frontend
        cfg.features.num_features = 300
        try:
            result = run_frames(System(cfg, cam, None), frames)
        except Exception as exc:
            raise AssertionError(f"case {case}: {cam}: {exc!r}") from exc
        assert result.error is None, f"case {case}: {cam}: {result.error!r}"
        assert np.all(np.isfinite(result.trajectory.T_wc)) and np.all(np.isfinite(result.points_xyz)), case
