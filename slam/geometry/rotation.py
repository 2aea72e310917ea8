"""Pure-rotation estimation between two views from bearing vectors (camera turning in place)."""

from __future__ import annotations

import numpy as np


def kabsch_rotation(b1: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Rotation ``R`` minimising ``sum |b2_i - R b1_i|^2`` for ``(N, 3)`` (or batched ``(B, N, 3)``) vectors."""
    H = np.einsum("...ni,...nj->...ij", b1, b2)  # sum b1 b2^T
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    D = np.zeros(H.shape)
    D[..., 0, 0] = 1.0
    D[..., 1, 1] = 1.0
    D[..., 2, 2] = d
    return np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)


def estimate_rotation_ransac(
    b1: np.ndarray, b2: np.ndarray, threshold_rad: float, iterations: int = 128, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Robust ``R_21`` with ``b2 ≈ R_21 b1`` for unit bearings ``(N, 3)``; returns (R, inliers (N,) bool).

    Two-point minimal samples, all hypotheses scored at once; the best is refined on its inliers.
    With fewer than 2 correspondences the identity and no inliers are returned.
    """
    n = len(b1)
    if n < 2:
        return np.eye(3), np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(iterations, 2))
    idx = idx[idx[:, 0] != idx[:, 1]]
    if len(idx) == 0:
        return np.eye(3), np.zeros(n, bool)
    R = kabsch_rotation(b1[idx], b2[idx])  # (B, 3, 3)
    pred = np.einsum("bij,nj->bni", R, b1)
    cos_err = np.einsum("bni,ni->bn", pred, b2)
    inl = cos_err > np.cos(threshold_rad)
    best = int(np.argmax(inl.sum(axis=1)))
    mask = inl[best]
    if mask.sum() >= 2:
        R_best = kabsch_rotation(b1[mask], b2[mask])
        mask = (b1 @ R_best.T * b2).sum(axis=1) > np.cos(threshold_rad)
        if mask.sum() >= 2:
            R_best = kabsch_rotation(b1[mask], b2[mask])
    else:
        R_best = R[best]
    return R_best, mask
