"""Pure-rotation estimation from bearings."""

import numpy as np

from slam.geometry.rotation import estimate_rotation_ransac, kabsch_rotation
from slam.geometry.se3 import rotation_angle, so3_exp


def test_rotation_ransac_recovers_rotation_with_outliers():
    rng = np.random.default_rng(0)
    b1 = rng.normal(size=(400, 3))
    b1[:, 2] = np.abs(b1[:, 2]) + 1.0
    b1 /= np.linalg.norm(b1, axis=1, keepdims=True)
    R_true = so3_exp([0.05, -0.12, 0.03])
    b2 = b1 @ R_true.T + rng.normal(scale=1e-3, size=b1.shape)
    b2[:100] = rng.normal(size=(100, 3))  # 25% outliers
    b2 /= np.linalg.norm(b2, axis=1, keepdims=True)
    R, inl = estimate_rotation_ransac(b1, b2, threshold_rad=0.005, seed=1)
    assert np.degrees(rotation_angle(R.T @ R_true)) < 0.05
    assert inl[100:].mean() > 0.95 and inl[:100].mean() < 0.05


def test_kabsch_is_a_proper_rotation():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(10, 3))
    R = kabsch_rotation(a, -a)  # a reflection would fit better; must still return det +1
    assert np.isclose(np.linalg.det(R), 1.0)
