"""Descriptor matching, vectorised: brute force with Lowe's ratio test and the mutual check, and guided search
of map points by projection.

Distances: Euclidean (L2) for float descriptors (RootSIFT / SuperPoint, unit norm, so in [0, 2]; RootSIFT is
non-negative, so in [0, sqrt(2)]), Hamming (number of differing bits, 0..256) for binary ORB descriptors
(``(N, 32)`` uint8). Both are computed as dense matrix products (Hamming on unpacked bits:
``|a| + |b| - 2 a.b``), in row blocks to bound memory. All distances are returned as float32.
"""

from __future__ import annotations

import numpy as np

# Hamming thresholds for 256-bit ORB descriptors (ORB-SLAM's TH_LOW / TH_HIGH): below LOW a match is
# reliable enough for initialisation and triangulation; HIGH is the loosest value worth trying in guided
# searches where the geometry already constrains the candidate.
ORB_MAX_DISTANCE_LOW = 50.0
ORB_MAX_DISTANCE_HIGH = 100.0
# L2 thresholds for unit-norm RootSIFT descriptors (distance^2 = 2 - 2 * Bhattacharyya coefficient of the
# two SIFT histograms). Measured on a KITTI and a sinus-endoscopy frame warped by a known homography (CLAHE,
# noise sigma 2): correct pairs have a median distance of 0.15-0.25 and ~73% of them lie below 0.35 (most
# of the rest are SIFT's duplicate keypoints with a second orientation); the nearest *wrong* descriptor
# among ~1000 lies below 0.35 for 15% of keypoints, below 0.5 for 68%. LOW suits unguided matching, HIGH
# guided search in a small window (where few wrong candidates compete).
SIFT_MAX_DISTANCE_LOW = 0.35
SIFT_MAX_DISTANCE_HIGH = 0.5

_BLOCK_ELEMENTS = 1 << 22  # distance-matrix entries computed at once (16 MiB of float32)


def default_max_distance(binary: bool, strict: bool = False) -> float:
    """The documented distance threshold: ORB Hamming 50 (strict) / 100, RootSIFT L2 0.35 (strict) / 0.5.

    The float values are calibrated for RootSIFT; other float descriptors (SuperPoint) need their own.
    """
    if binary:
        return ORB_MAX_DISTANCE_LOW if strict else ORB_MAX_DISTANCE_HIGH
    return SIFT_MAX_DISTANCE_LOW if strict else SIFT_MAX_DISTANCE_HIGH


def _as_matrix_operand(desc: np.ndarray, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    """(operand for the product, squared norms / popcounts) of ``(N, D)`` descriptors."""
    if binary:
        bits = np.unpackbits(np.ascontiguousarray(desc, np.uint8), axis=1).astype(np.float32)
        return bits, bits.sum(axis=1)
    x = np.ascontiguousarray(desc, np.float32)
    return x, np.einsum("ij,ij->i", x, x)


def distance_matrix(desc1: np.ndarray, desc2: np.ndarray, binary: bool) -> np.ndarray:
    """``(N, M)`` float32 distances between all rows of ``desc1 (N, D)`` and ``desc2 (M, D)``."""
    a, na = _as_matrix_operand(desc1, binary)
    b, nb = _as_matrix_operand(desc2, binary)
    d = a @ b.T
    d *= -2.0
    d += nb[None, :]
    d += na[:, None]
    np.maximum(d, 0.0, out=d)
    return d if binary else np.sqrt(d, out=d)


def descriptor_distance(a: np.ndarray, b: np.ndarray, binary: bool) -> np.ndarray:
    """``(K,)`` float32 distances between corresponding rows of ``a (K, D)`` and ``b (K, D)``."""
    if binary:
        x = np.bitwise_xor(np.asarray(a, np.uint8), np.asarray(b, np.uint8))
        return np.bitwise_count(x).sum(axis=1, dtype=np.int32).astype(np.float32)
    diff = np.asarray(a, np.float32) - np.asarray(b, np.float32)
    return np.sqrt(np.einsum("ij,ij->i", diff, diff)).astype(np.float32)


def nearest_two(desc1: np.ndarray, desc2: np.ndarray, binary: bool) -> tuple[np.ndarray, ...]:
    """For every row of ``desc1 (N, D)``: nearest and second-nearest row of ``desc2 (M, D)``; for every row of
    ``desc2`` the distance to its nearest row of ``desc1``.

    Returns ``(idx1 (N,) int64, dist1 (N,), dist2 (N,) (inf when M < 2), col_min (M,))``, float32 distances.
    """
    n, m = len(desc1), len(desc2)
    a, na = _as_matrix_operand(desc1, binary)
    b, nb = _as_matrix_operand(desc2, binary)
    idx1 = np.zeros(n, np.int64)
    dist1 = np.full(n, np.inf, np.float32)
    dist2 = np.full(n, np.inf, np.float32)
    col_min = np.full(m, np.inf, np.float32)
    step = max(1, _BLOCK_ELEMENTS // max(m, 1))
    for start in range(0, n, step):  # blocks of rows, not a loop over descriptors
        stop = min(n, start + step)
        d = a[start:stop] @ b.T  # squared distances (L2) or Hamming distances, built in place
        d *= -2.0
        d += nb[None, :]
        d += na[start:stop, None]
        rows = np.arange(stop - start)
        best = d.argmin(axis=1)
        idx1[start:stop] = best
        dist1[start:stop] = d[rows, best]
        np.minimum(col_min, d.min(axis=0), out=col_min)
        if m >= 2:
            d[rows, best] = np.inf
            dist2[start:stop] = d.min(axis=1)
    if not binary:  # squared to plain L2 distances (monotonic: comparisons above are unaffected)
        for v in (dist1, dist2, col_min):
            np.sqrt(np.maximum(v, 0.0, out=v), out=v)
    return idx1, dist1, dist2, col_min


def match_descriptors(
    desc1: np.ndarray,
    desc2: np.ndarray,
    binary: bool,
    ratio: float | None = 0.8,
    mutual: bool = True,
    max_distance: float | None = None,
) -> np.ndarray:
    """Brute-force matches between ``desc1 (N, D)`` and ``desc2 (M, D)``.

    A pair (i, j) is kept when j is i's nearest neighbour and
    - Lowe's ratio test: ``dist(i, j) < ratio * dist(i, second nearest)`` (skipped when ratio is None or >= 1;
      passes when desc2 has a single row),
    - the mutual check (``mutual``): i is also j's nearest neighbour in desc1 (on exact ties, common with
      Hamming distances, the lowest i keeps j),
    - ``dist(i, j) <= max_distance`` when given.

    Returns ``(K, 2)`` int64 index pairs (row in desc1, row in desc2), ordered by the row in desc1.
    """
    if len(desc1) == 0 or len(desc2) == 0:
        return np.zeros((0, 2), np.int64)
    idx1, dist1, dist2, col_min = nearest_two(desc1, desc2, binary)
    keep = np.ones(len(desc1), bool)
    if ratio is not None and ratio < 1.0:
        keep &= dist1 < ratio * dist2
    if max_distance is not None:
        keep &= dist1 <= max_distance
    if mutual:
        keep &= dist1 <= col_min[idx1]
        rows = np.flatnonzero(keep)
        _, first = np.unique(idx1[rows], return_index=True)
        rows = np.sort(rows[first])
    else:
        rows = np.flatnonzero(keep)
    return np.stack([rows, idx1[rows]], axis=1).astype(np.int64)


def _pairs_within(proj_uv: np.ndarray, kp_uv: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (projection, keypoint) index pairs closer than the projection's radius, via two k-d trees."""
    from scipy.spatial import cKDTree

    tree_p = cKDTree(proj_uv)
    tree_k = cKDTree(kp_uv)
    pairs = tree_p.sparse_distance_matrix(tree_k, float(radius.max()), output_type="ndarray")
    pi = pairs["i"].astype(np.int64)
    kj = pairs["j"].astype(np.int64)
    close = pairs["v"] <= radius[pi]
    return pi[close], kj[close]


def search_by_projection(
    proj_uv: np.ndarray,
    proj_desc: np.ndarray,
    radius: np.ndarray | float,
    kp_uv: np.ndarray,
    kp_desc: np.ndarray,
    binary: bool,
    max_distance: float | None = None,
    ratio: float | None = 0.9,
    kp_octaves: np.ndarray | None = None,
    proj_octaves: np.ndarray | None = None,
    max_octave_diff: int | None = None,
    taken: np.ndarray | None = None,
) -> np.ndarray:
    """Guided matching: for each projected map point, the best keypoint within a radius of its projection.

    Args:
        proj_uv: ``(P, 2)`` predicted pixel positions of the map points.
        proj_desc: ``(P, D)`` their descriptors.
        radius: search radius in pixels, a float or ``(P,)`` (e.g. scaled by the predicted octave).
        kp_uv: ``(N, 2)`` keypoint positions; kp_desc: ``(N, D)`` their descriptors.
        binary: Hamming (True) or L2 distances.
        max_distance: largest accepted descriptor distance (None: :func:`default_max_distance`).
        ratio: the best candidate must be closer than ``ratio`` x the second best in the window
            (None or >= 1: no ratio test).
        kp_octaves, proj_octaves, max_octave_diff: when all are given, only keypoints whose octave differs
            from the point's predicted octave by at most ``max_octave_diff`` are candidates.
        taken: ``(N,)`` bool, keypoints already matched (never candidates).

    Returns:
        ``(P,)`` int64 keypoint index per map point, -1 where none. A keypoint is given to at most one map
        point, the one with the smallest descriptor distance.
    """
    p = len(proj_uv)
    result = np.full(p, -1, np.int64)
    if p == 0 or len(kp_uv) == 0:
        return result
    if max_distance is None:
        max_distance = default_max_distance(binary)
    radius = np.broadcast_to(np.asarray(radius, np.float64), (p,))
    proj_uv = np.asarray(proj_uv, np.float64).reshape(p, 2)
    kp_uv = np.asarray(kp_uv, np.float64).reshape(-1, 2)
    finite = np.isfinite(proj_uv).all(axis=1) & np.isfinite(radius) & (radius > 0)
    if not finite.any():
        return result
    sub = np.flatnonzero(finite)
    pi, kj = _pairs_within(proj_uv[sub], kp_uv, radius[sub])
    pi = sub[pi]
    ok = np.ones(len(pi), bool)
    if taken is not None:
        ok &= ~np.asarray(taken, bool)[kj]
    if max_octave_diff is not None and kp_octaves is not None and proj_octaves is not None:
        diff = np.abs(np.asarray(kp_octaves, np.int64)[kj] - np.asarray(proj_octaves, np.int64)[pi])
        ok &= diff <= max_octave_diff
    pi, kj = pi[ok], kj[ok]
    if len(pi) == 0:
        return result
    dist = descriptor_distance(np.asarray(proj_desc)[pi], np.asarray(kp_desc)[kj], binary)
    order = np.lexsort((dist, pi))  # by point, then by increasing distance
    pi, kj, dist = pi[order], kj[order], dist[order]
    first = np.r_[True, pi[1:] != pi[:-1]]
    starts = np.flatnonzero(first)
    counts = np.diff(np.r_[starts, len(pi)])
    best_p, best_k, best_d = pi[starts], kj[starts], dist[starts]
    second_d = np.full(len(starts), np.inf, np.float32)
    has_second = counts >= 2
    second_d[has_second] = dist[starts[has_second] + 1]
    accept = best_d <= max_distance
    if ratio is not None and ratio < 1.0:
        accept &= best_d < ratio * second_d
    best_p, best_k, best_d = best_p[accept], best_k[accept], best_d[accept]
    if len(best_p) == 0:
        return result
    # one keypoint per map point: the closest descriptor wins
    order = np.lexsort((best_d, best_k))
    best_p, best_k = best_p[order], best_k[order]
    winner = np.r_[True, best_k[1:] != best_k[:-1]]
    result[best_p[winner]] = best_k[winner]
    return result
