"""Camera models: pinhole with OpenCV radial-tangential distortion, and fisheye (Kannala-Brandt).

Conventions: pixel centres at integer coordinates, ``K = [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]`` and the
distortion coefficient order of OpenCV (``k1 k2 p1 p2 [k3]`` for ``pinhole``, ``k1 k2 k3 k4`` for
``fisheye``). Points in the camera frame are ``(N, 3)`` with +z forward. The SLAM core works on
*undistorted* keypoints expressed in the ideal pinhole image with the same ``K`` (as ORB-SLAM does), so
every lens model feeds the same geometry; :meth:`Camera.undistort_points` gives those, and
:meth:`Camera.unproject` gives unit bearing vectors, which stay valid beyond 90 degrees off-axis.

Projection and undistortion are done by OpenCV (``cv2.projectPoints``, ``cv2.undistortPoints``,
``cv2.fisheye.*``); radial-tangential undistortion is finished by a few damped Newton steps on the forward
model, because OpenCV's fixed-point iteration stops short near the corners of strongly distorted images.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from slam.errors import CalibrationError

MODELS = ("pinhole", "fisheye")


@dataclass(frozen=True)
class Camera:
    """An intrinsically calibrated camera.

    Attributes:
        width, height: image size in pixels.
        fx, fy, cx, cy: pinhole intrinsics in pixels.
        dist: distortion coefficients (OpenCV order); empty for an ideal pinhole.
        model: ``"pinhole"`` (radial-tangential) or ``"fisheye"`` (Kannala-Brandt, 4 coefficients).
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    dist: tuple[float, ...] = field(default_factory=tuple)
    model: str = "pinhole"

    def __post_init__(self) -> None:
        values = np.array([self.fx, self.fy, self.cx, self.cy, *self.dist], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise CalibrationError(f"camera intrinsics must be finite numbers, got {values.tolist()}")
        if self.fx <= 0 or self.fy <= 0:
            raise CalibrationError(f"focal lengths must be positive, got fx={self.fx} fy={self.fy}")
        if self.width <= 0 or self.height <= 0:
            raise CalibrationError(f"image size must be positive, got {self.width}x{self.height}")
        if self.model not in MODELS:
            raise CalibrationError(f"unknown camera model {self.model!r}; expected one of {MODELS}")
        if self.model == "fisheye" and len(self.dist) not in (0, 4):
            raise CalibrationError(f"fisheye model needs 4 coefficients k1..k4, got {len(self.dist)}")
        if self.model == "pinhole" and len(self.dist) not in (0, 4, 5, 8):
            raise CalibrationError(
                f"radial-tangential model needs 4, 5 or 8 coefficients (k1 k2 p1 p2 [k3 ...]), got {len(self.dist)}"
            )

    # ------------------------------------------------------------------ basic properties
    @property
    def K(self) -> np.ndarray:
        """3x3 float64 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def dist_array(self) -> np.ndarray:
        """Distortion coefficients as a float64 array (4 zeros for an ideal camera)."""
        return np.array(self.dist if self.dist else (0.0, 0.0, 0.0, 0.0), dtype=np.float64)

    @property
    def is_distorted(self) -> bool:
        """True unless this is an ideal pinhole (a fisheye lens is never an ideal pinhole)."""
        return self.model == "fisheye" or (bool(self.dist) and any(abs(d) > 0 for d in self.dist))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return (self.width, self.height)

    def scaled(self, scale: float) -> "Camera":
        """The same camera for images resized by ``scale`` (pixel centres at integers)."""
        sx = round(self.width * scale) / self.width
        sy = round(self.height * scale) / self.height
        return replace(
            self,
            width=int(round(self.width * scale)),
            height=int(round(self.height * scale)),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
        )

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Camera":
        """The camera of the sub-image ``[y0:y0+height, x0:x0+width]``."""
        return replace(self, width=width, height=height, cx=self.cx - x0, cy=self.cy - y0)

    # ------------------------------------------------------------------ projection
    def project(self, points_c: np.ndarray) -> np.ndarray:
        """Project camera-frame points ``(N, 3)`` to distorted pixels ``(N, 2)``.

        Points with z <= 0 (and, for the pinhole model, none behind the camera) give NaN.
        """
        pts = np.asarray(points_c, dtype=np.float64).reshape(-1, 3)
        out = np.full((len(pts), 2), np.nan)
        if self.model == "fisheye":
            valid = np.linalg.norm(pts, axis=1) > 0
        else:
            valid = pts[:, 2] > 1e-12
        if not np.any(valid):
            return out
        if self.model == "fisheye":
            # Kannala-Brandt on the angle from the optical axis, atan2 keeps rays beyond 90 degrees valid
            # (OpenCV's fisheye.projectPoints divides by z and folds them back)
            p = pts[valid]
            r = np.hypot(p[:, 0], p[:, 1])
            theta = np.arctan2(r, p[:, 2])
            k1, k2, k3, k4 = self.dist_array if self.dist else (0.0, 0.0, 0.0, 0.0)
            t2 = theta * theta
            theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(r > 1e-12, theta_d / np.maximum(r, 1e-300), 1.0 / np.maximum(p[:, 2], 1e-12))
            uv = np.stack([self.fx * p[:, 0] * s + self.cx, self.fy * p[:, 1] * s + self.cy], axis=1)
        else:
            import cv2

            zeros = np.zeros(3)
            uv, _ = cv2.projectPoints(pts[valid].reshape(-1, 1, 3), zeros, zeros, self.K, self.dist_array)
        out[valid] = uv.reshape(-1, 2)
        return out

    def project_ideal(self, points_c: np.ndarray) -> np.ndarray:
        """Project ``(N, 3)`` camera-frame points with the ideal pinhole ``K`` (no distortion)."""
        pts = np.asarray(points_c, dtype=np.float64).reshape(-1, 3)
        z = pts[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.fx * pts[:, 0] / z + self.cx
            v = self.fy * pts[:, 1] / z + self.cy
        uv = np.stack([u, v], axis=1)
        uv[z <= 1e-12] = np.nan
        return uv

    def normalize(self, uv: np.ndarray) -> np.ndarray:
        """Distorted pixels ``(N, 2)`` to undistorted normalised coordinates ``(N, 2)`` (x/z, y/z).

        For the fisheye model, rays at or beyond 90 degrees off-axis have no normalised coordinates; use
        :meth:`unproject` there. Where the distortion model has no inverse (coefficients that fold the image)
        the result is the best point found, or NaN.
        """
        pts = np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2)
        if len(pts) == 0:
            return np.zeros((0, 2))
        import cv2

        if not self.is_distorted:
            out = (pts.reshape(-1, 2) - [self.cx, self.cy]) / [self.fx, self.fy]
            return out
        if self.model == "fisheye":
            und = cv2.fisheye.undistortPoints(pts, self.K, self.dist_array)
            return und.reshape(-1, 2)
        criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 40, 1e-10)
        und = cv2.undistortPoints(pts, self.K, self.dist_array, None, None, None, criteria).reshape(-1, 2)
        # OpenCV's fixed-point iteration converges slowly (or not at all) near the border of a strongly
        # distorted image (k1 ~ -0.4: pixels off at the corners); Newton steps on the forward model finish it
        target = (pts.reshape(-1, 2) - [self.cx, self.cy]) / [self.fx, self.fy]
        dist = self.dist_array
        xy, res = _refine_undistortion(und, target, dist)
        for shrink in (1.0, 0.5, 0.25):  # OpenCV's start was too far off: start again nearer the centre
            retry = np.flatnonzero(~(res < 1e-9))
            if len(retry) == 0:
                break
            xy2, res2 = _refine_undistortion(target[retry] * shrink, target[retry], dist, iterations=30)
            take = res2 < res[retry]
            xy[retry[take]], res[retry[take]] = xy2[take], res2[take]
        return xy

    def undistort_points(self, uv: np.ndarray) -> np.ndarray:
        """Distorted pixels ``(N, 2)`` to undistorted pixels of the ideal pinhole camera ``K``."""
        xy = self.normalize(uv)
        return xy * [self.fx, self.fy] + [self.cx, self.cy]

    def unproject(self, uv: np.ndarray) -> np.ndarray:
        """Distorted pixels ``(N, 2)`` to unit bearing vectors ``(N, 3)`` in the camera frame."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        if self.model == "fisheye":
            theta = self._fisheye_theta(uv)
            x = (uv[:, 0] - self.cx) / self.fx
            y = (uv[:, 1] - self.cy) / self.fy
            r = np.hypot(x, y)
            with np.errstate(invalid="ignore", divide="ignore"):
                s = np.where(r > 1e-12, np.sin(theta) / np.maximum(r, 1e-300), 1.0)
            rays = np.stack([x * s, y * s, np.cos(theta)], axis=1)
        else:
            xy = self.normalize(uv)
            rays = np.concatenate([xy, np.ones((len(xy), 1))], axis=1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def _fisheye_theta(self, uv: np.ndarray) -> np.ndarray:
        """Solve theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8) for theta by Newton's method."""
        k1, k2, k3, k4 = self.dist_array
        x = (uv[:, 0] - self.cx) / self.fx
        y = (uv[:, 1] - self.cy) / self.fy
        theta_d = np.hypot(x, y)
        theta = theta_d.copy()
        for _ in range(30):
            t2 = theta * theta
            f = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
            df = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
            theta = theta - f / df
        return theta

    def in_image(self, uv: np.ndarray, border: float = 0.0) -> np.ndarray:
        """Boolean ``(N,)``: pixel lies inside the image, at least ``border`` pixels from the edge."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        return (
            np.isfinite(uv).all(axis=1)
            & (uv[:, 0] >= border - 0.5)
            & (uv[:, 1] >= border - 0.5)
            & (uv[:, 0] <= self.width - 0.5 - border)
            & (uv[:, 1] <= self.height - 0.5 - border)
        )

    # ------------------------------------------------------------------ text form
    def to_calib_line(self) -> str:
        """One line ``fx fy cx cy [dist...]`` as in the folder layout's ``calib.txt``."""
        values = [self.fx, self.fy, self.cx, self.cy, *self.dist]
        prefix = "fisheye " if self.model == "fisheye" else ""
        return prefix + " ".join(f"{v:.10g}" for v in values)


def _distort_radtan(xy: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's rational radial-tangential model on normalised ``xy (N, 2)``: distorted ``(N, 2)`` and the
    Jacobian ``(N, 2, 2)`` of the distorted point with respect to ``xy``.

    ``dist`` is ``k1 k2 p1 p2 [k3 [k4 k5 k6]]``; missing coefficients are zero.
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = np.concatenate([dist, np.zeros(8 - len(dist))])[:8]
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    a = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    b = 1 + r2 * (k4 + r2 * (k5 + r2 * k6))
    da = k1 + r2 * (2 * k2 + 3 * k3 * r2)
    db = k4 + r2 * (2 * k5 + 3 * k6 * r2)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        radial = a / b
        dradial = (da * b - a * db) / (b * b)  # d radial / d r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    jac = np.empty((len(xy), 2, 2))
    jac[:, 0, 0] = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
    jac[:, 0, 1] = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
    jac[:, 1, 0] = jac[:, 0, 1]
    jac[:, 1, 1] = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
    return np.stack([xd, yd], axis=1), jac


def _refine_undistortion(xy: np.ndarray, target: np.ndarray, dist: np.ndarray,
                         iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Newton steps ``xy <- xy - J^-1 (distort(xy) - target)`` on undistorted normalised points ``(N, 2)``.

    A step is kept only where it lowers the residual, so points where the model folds (no inverse) keep
    their best value. Returns the points and their residuals ``(N,)`` (normalised units; inf where not finite).
    """
    xy = np.array(xy, dtype=np.float64)
    residual = np.full(len(xy), np.inf)
    finite = np.isfinite(xy).all(axis=1) & np.isfinite(target).all(axis=1)
    if not np.any(finite):
        return xy, residual
    cur, tgt = xy[finite], target[finite]
    pred, jac = _distort_radtan(cur, dist)
    res = np.linalg.norm(pred - tgt, axis=1)
    for _ in range(iterations):
        active = res > 1e-12
        if not np.any(active):
            break
        det = jac[:, 0, 0] * jac[:, 1, 1] - jac[:, 0, 1] * jac[:, 1, 0]
        err = pred - tgt
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = np.stack([jac[:, 1, 1] * err[:, 0] - jac[:, 0, 1] * err[:, 1],
                             jac[:, 0, 0] * err[:, 1] - jac[:, 1, 0] * err[:, 0]], axis=1) / det[:, None]
        accepted = np.zeros(len(cur), dtype=bool)
        for _halving in range(8):  # backtracking: a full step can jump over a pole of the rational model
            todo = np.flatnonzero(active & ~accepted)
            if len(todo) == 0:
                break
            trial = cur[todo] - step[todo]
            trial_pred, trial_jac = _distort_radtan(trial, dist)
            trial_res = np.linalg.norm(trial_pred - tgt[todo], axis=1)
            ok = np.isfinite(trial_res) & (trial_res < res[todo])
            rows = todo[ok]
            cur[rows], pred[rows], jac[rows], res[rows] = trial[ok], trial_pred[ok], trial_jac[ok], trial_res[ok]
            accepted[rows] = True
            step[todo] *= 0.5
        if not np.any(accepted):
            break
    xy[finite] = cur
    residual[finite] = np.where(np.isfinite(res), res, np.inf)
    return xy, residual


def read_calib_file(path: str | Path, width: int, height: int, model: str = "pinhole") -> Camera:
    """Read the folder layout's ``calib.txt``: one line ``fx fy cx cy [k1 k2 p1 p2 [k3]]``.

    Lines starting with ``#`` are ignored. A fisheye calibration may say so with a first token
    ``fisheye`` (``fisheye fx fy cx cy k1 k2 k3 k4``). Raises :class:`CalibrationError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: calibration file not found")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise CalibrationError(f"{path}: cannot read calibration file ({exc.strerror})") from exc
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise CalibrationError(f"{path}: calibration file is empty; expected 'fx fy cx cy [k1 k2 p1 p2 [k3]]'")
    tokens = lines[0].replace(",", " ").split()
    if tokens and tokens[0].lower() in MODELS:
        model = tokens[0].lower()
        tokens = tokens[1:]
    try:
        values = [float(t) for t in tokens]
    except ValueError as exc:
        raise CalibrationError(
            f"{path}: cannot parse calibration line {lines[0]!r}; expected numbers 'fx fy cx cy [k1 k2 p1 p2 [k3]]'"
        ) from exc
    if len(values) not in (4, 8, 9, 12):
        raise CalibrationError(
            f"{path}: expected 4, 8 or 9 numbers 'fx fy cx cy [k1 k2 p1 p2 [k3]]', got {len(values)}"
        )
    if not np.all(np.isfinite(values)):
        raise CalibrationError(f"{path}: calibration contains NaN or infinite values: {lines[0]!r}")
    fx, fy, cx, cy, *dist = values
    try:
        return Camera(width, height, fx, fy, cx, cy, tuple(dist), model)
    except CalibrationError as exc:
        raise CalibrationError(f"{path}: {exc}") from exc
