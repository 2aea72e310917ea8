"""Timestamp association of an estimate with ground truth (as TUM's ``associate.py``).

All pairs ``(i, j)`` with ``|t_est[i] + offset - t_gt[j]| <= max_diff`` are candidates; they are taken
greedily from the smallest time difference up, each pose used at most once (one-to-one). With sorted,
regularly sampled stamps this gives the same pairs as evo's nearest-timestamp matching.
"""

from __future__ import annotations

import numpy as np

from slam.errors import InputError


def associate(est, gt, max_diff: float = 0.02, offset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Match estimate poses to ground-truth poses by timestamp.

    Args:
        est, gt: trajectories (anything with ``timestamps``) or ``(N,)`` / ``(M,)`` arrays of seconds.
        max_diff: largest accepted ``|t_est + offset - t_gt|`` in seconds.
        offset: seconds added to the estimate's timestamps before matching.

    Returns:
        ``(est_idx (K,), gt_idx (K,))`` int arrays, sorted by estimate index; each index appears once.
    """
    t_est = np.asarray(getattr(est, "timestamps", est), dtype=np.float64).reshape(-1) + float(offset)
    t_gt = np.asarray(getattr(gt, "timestamps", gt), dtype=np.float64).reshape(-1)
    if not np.isfinite(max_diff) or max_diff < 0:
        raise InputError(f"max_diff must be a non-negative number of seconds, got {max_diff}")
    if len(t_est) == 0 or len(t_gt) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)

    order = np.argsort(t_gt, kind="stable")
    t_sorted = t_gt[order]
    lo = np.searchsorted(t_sorted, t_est - max_diff, side="left")
    hi = np.searchsorted(t_sorted, t_est + max_diff, side="right")
    counts = hi - lo
    cand_est = np.repeat(np.arange(len(t_est)), counts)
    if len(cand_est) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Position of every candidate inside its est's window [lo, hi).
    starts = np.repeat(lo, counts)
    within = np.arange(len(cand_est)) - np.repeat(np.cumsum(counts) - counts, counts)
    cand_gt = order[starts + within]
    diff = np.abs(t_est[cand_est] - t_gt[cand_gt])
    keep = diff <= max_diff  # guard against rounding at the window edges
    cand_est, cand_gt, diff = cand_est[keep], cand_gt[keep], diff[keep]

    # Greedy one-to-one: smallest difference first; ties broken by est index then gt index.
    ranking = np.lexsort((cand_gt, cand_est, diff))
    used_est = np.zeros(len(t_est), dtype=bool)
    used_gt = np.zeros(len(t_gt), dtype=bool)
    pairs_est, pairs_gt = [], []
    for k in ranking:
        i, j = cand_est[k], cand_gt[k]
        if used_est[i] or used_gt[j]:
            continue
        used_est[i] = used_gt[j] = True
        pairs_est.append(i)
        pairs_gt.append(j)
    pairs_est = np.asarray(pairs_est, dtype=np.int64)
    pairs_gt = np.asarray(pairs_gt, dtype=np.int64)
    by_est = np.argsort(pairs_est, kind="stable")
    return pairs_est[by_est], pairs_gt[by_est]
