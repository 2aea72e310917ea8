"""SE(3) helpers on 4x4 float64 matrices and quaternion conversion (TUM order ``qx qy qz qw``)."""

from __future__ import annotations

import numpy as np


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 transform from a 3x3 rotation and a 3-vector translation."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid transform ``(4, 4)`` or a stack ``(N, 4, 4)``."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Ti = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    Ti[..., :3, :3] = Rt
    Ti[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    Ti[..., 3, 3] = 1.0
    return Ti


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply ``T (4, 4)`` to ``points (N, 3)``."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return points @ T[:3, :3].T + T[:3, 3]


def skew(v: np.ndarray) -> np.ndarray:
    """3x3 cross-product matrix of a 3-vector."""
    x, y, z = np.asarray(v, dtype=np.float64).reshape(3)
    return np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])


def so3_exp(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of the axis-angle vector ``w (3,)`` (Rodrigues)."""
    w = np.asarray(w, dtype=np.float64).reshape(3)
    theta = np.linalg.norm(w)
    if theta < 1e-12:
        return np.eye(3) + skew(w)
    k = skew(w / theta)
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def so3_log(R: np.ndarray) -> np.ndarray:
    """Axis-angle vector ``(3,)`` of a rotation matrix."""
    import cv2

    rvec, _ = cv2.Rodrigues(np.asarray(R, dtype=np.float64))
    return rvec.reshape(3)


def interpolate_pose(T0_cw: np.ndarray, T1_cw: np.ndarray, a: float) -> np.ndarray:
    """World-to-camera pose a fraction ``a`` of the way from ``T0_cw`` to ``T1_cw`` (both ``(4, 4)``): the
    rotation along the geodesic, the camera centre along the straight line between the two centres."""
    R0, R1 = T0_cw[:3, :3], T1_cw[:3, :3]
    R = so3_exp(a * so3_log(R1 @ R0.T)) @ R0
    c0, c1 = -R0.T @ T0_cw[:3, 3], -R1.T @ T1_cw[:3, 3]
    return make_T(R, -R @ ((1.0 - a) * c0 + a * c1))


def rotation_angle(R: np.ndarray) -> float:
    """Rotation angle in radians of a 3x3 rotation matrix."""
    c = (np.trace(R[:3, :3]) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def quat_to_rot(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrices ``(N, 3, 3)`` (or ``(3, 3)``) from unit quaternions ``qx qy qz qw``."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    single = q.ndim == 1
    q = q.reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x, y, z, w = q.T
    R = np.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        axis=1,
    ).reshape(-1, 3, 3)
    return R[0] if single else R


def rot_to_quat(R: np.ndarray) -> np.ndarray:
    """Unit quaternions ``qx qy qz qw`` (``(N, 4)`` or ``(4,)``) with qw >= 0 from rotation matrices."""
    R = np.asarray(R, dtype=np.float64)
    single = R.ndim == 2
    R = R.reshape(-1, 3, 3)
    out = np.empty((len(R), 4))
    for i, m in enumerate(R):
        tr = m[0, 0] + m[1, 1] + m[2, 2]
        if tr > 0:
            s = np.sqrt(tr + 1.0) * 2
            q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
        elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
            s = np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2]) * 2
            q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
        elif m[1, 1] > m[2, 2]:
            s = np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2]) * 2
            q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
        else:
            s = np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1]) * 2
            q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
        q = np.asarray(q)
        q /= np.linalg.norm(q)
        out[i] = -q if q[3] < 0 else q
    return out[0] if single else out


def orthonormalize(R: np.ndarray) -> np.ndarray:
    """Closest rotation matrix (SVD) to a nearly orthonormal 3x3 matrix."""
    U, _, Vt = np.linalg.svd(R)
    D = np.eye(3)
    D[2, 2] = np.sign(np.linalg.det(U @ Vt))
    return U @ D @ Vt
