"""Brute-force descriptor matching in torch: mutual nearest neighbour and Lowe's ratio test on the device of
the descriptors (GPU when they live there, no host round trip), same semantics as
:func:`slam.features.matching.match_descriptors`.

Float descriptors (SuperPoint, RootSIFT) are compared by L2 distance, binary ones (ORB, ``(N, 32)`` uint8
packed bits) by Hamming distance (bits unpacked, one matrix product). Rows are processed in blocks so the
distance matrix never exceeds ``block_elements`` entries.
"""

from __future__ import annotations

import numpy as np

_BLOCK_ELEMENTS = 1 << 24


def _torch():
    from slam.features.superpoint import import_torch

    return import_torch()


def _as_tensor(x, device):
    torch = _torch()
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x if device is None else x.to(device)


def _operand(desc):
    """(float operand, squared norms or popcounts); uint8 descriptors are unpacked to {0, 1} bits."""
    torch = _torch()
    if desc.dtype == torch.uint8:
        shifts = torch.arange(7, -1, -1, device=desc.device, dtype=torch.uint8)
        bits = ((desc[..., None] >> shifts) & 1).reshape(desc.shape[0], -1).float()
        return bits, bits.sum(dim=1)
    x = desc.float()
    return x, (x * x).sum(dim=1)


def match_descriptors_torch(d1, d2, ratio: float | None = 0.8, mutual: bool = True,
                            max_distance: float | None = None, device=None,
                            block_elements: int = _BLOCK_ELEMENTS):
    """Matches between descriptors ``d1 (N, D)`` and ``d2 (M, D)`` (torch tensors, or numpy arrays moved to
    ``device``; with ``device=None`` tensors stay where they are).

    A pair (i, j) is kept when j is i's nearest neighbour, ``dist(i, j) < ratio * dist(i, second nearest)``
    (skipped when ratio is None or >= 1, passes when M == 1), i is j's nearest neighbour (``mutual``) and
    ``dist <= max_distance`` when given. Distances are L2 (float) or Hamming (uint8 packed bits).

    Returns an ``(K, 2)`` int64 tensor of (row in d1, row in d2) on the descriptors' device, ordered by row.
    """
    torch = _torch()
    d1 = _as_tensor(d1, device)
    d2 = _as_tensor(d2, device if device is not None else d1.device)
    dev = d1.device
    n, m = d1.shape[0], d2.shape[0]
    if n == 0 or m == 0:
        return torch.zeros((0, 2), dtype=torch.int64, device=dev)
    a, na = _operand(d1)
    b, nb = _operand(d2)
    idx1 = torch.empty(n, dtype=torch.int64, device=dev)
    dist1 = torch.empty(n, device=dev)
    dist2 = torch.full((n,), float("inf"), device=dev)
    col_min = torch.full((m,), float("inf"), device=dev)
    col_arg = torch.zeros(m, dtype=torch.int64, device=dev)
    step = max(1, block_elements // max(m, 1))
    for start in range(0, n, step):
        stop = min(n, start + step)
        d = torch.addmm(nb[None, :] + na[start:stop, None], a[start:stop], b.T, alpha=-2.0).clamp_(min=0.0)
        if m >= 2:
            two, arg = torch.topk(d, 2, dim=1, largest=False)
            dist1[start:stop], dist2[start:stop] = two[:, 0], two[:, 1]
            idx1[start:stop] = arg[:, 0]
        else:
            dist1[start:stop], idx1[start:stop] = d[:, 0], 0
        block_min, block_arg = d.min(dim=0)
        better = block_min < col_min  # strict: on ties the lowest row keeps the column
        col_min = torch.where(better, block_min, col_min)
        col_arg = torch.where(better, block_arg + start, col_arg)
    if d1.dtype != torch.uint8:  # squared L2 -> L2 (Hamming distances are exact counts already)
        dist1, dist2 = dist1.sqrt(), dist2.sqrt()
    keep = torch.ones(n, dtype=torch.bool, device=dev)
    if ratio is not None and ratio < 1.0:
        keep &= dist1 < ratio * dist2
    if max_distance is not None:
        keep &= dist1 <= max_distance
    rows = torch.arange(n, device=dev)
    if mutual:
        keep &= col_arg[idx1] == rows
    rows = rows[keep]
    return torch.stack([rows, idx1[rows]], dim=1)


def match_features_torch(f1, f2, ratio: float | None = 0.8, mutual: bool = True, device: str = "cpu") -> np.ndarray:
    """:func:`match_descriptors_torch` for two :class:`slam.features.base.Features` (any extractor, e.g. SIFT
    on CUDA); returns ``(K, 2)`` int64 numpy index pairs."""
    pairs = match_descriptors_torch(f1.descriptors, f2.descriptors, ratio, mutual, device=device)
    return pairs.cpu().numpy().astype(np.int64)
