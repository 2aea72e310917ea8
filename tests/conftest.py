"""Shared test fixtures: where the optional real data lives, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_sequence(name: str) -> Path:
    """Path of a sequence in ``../shared/data``, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} not present (only in the project's development checkout)")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


def binary_features(uv):
    """Features at pixels ``uv (N, 2)`` with blank 32-byte binary descriptors, all at octave 0."""
    import numpy as np

    from slam.features.base import Features

    n = len(uv)
    return Features(keypoints=np.asarray(uv, np.float32), descriptors=np.zeros((n, 32), np.uint8),
                    octaves=np.zeros(n, np.int32), sizes=np.full(n, 7.0, np.float32),
                    angles=np.full(n, -1.0, np.float32), responses=np.ones(n, np.float32), binary=True,
                    scale_factor=1.2)
