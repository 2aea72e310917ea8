"""Flow front end on noisy, low-contrast video: the tracks' pixel noise is estimated from the pose residuals
and scales the forward-backward threshold and every observation's sigma."""

from __future__ import annotations

import numpy as np
import pytest

from slam.camera import Camera
from slam.config import load_config
from slam.runner import run_source
from slam.sources import open_source
from slam.synth import generate
from slam.system import System

from conftest import binary_features


def _tracker(*overrides):
    cam = Camera(640, 480, 500.0, 500.0, 320.0, 240.0, (0.0, 0.0, 0.0, 0.0, 0.0), "pinhole")
    return System(load_config(None, ["system.sync=true", "features.type=orb", *overrides]), cam).tracker


def _observe(tracker, sigma_px: float, frames: int = 30, seed: int = 0) -> float:
    """Feed ``frames`` poses whose 300 tracks carry Gaussian pixel noise of ``sigma_px`` (10% gross
    outliers); returns the tracker's noise scale afterwards."""
    rng = np.random.default_rng(seed)
    for _ in range(frames):
        X = np.c_[rng.uniform(-2.0, 2.0, (300, 2)), rng.uniform(4.0, 9.0, 300)]
        uv = tracker.camera.project_ideal(X) + rng.normal(0.0, sigma_px, (300, 2))
        uv[:30] += rng.uniform(-40.0, 40.0, (30, 2))
        tracker._update_noise_scale(np.eye(4), X, uv)
    return tracker._noise_scale


def test_noise_scale_follows_the_track_noise_above_one_pixel():
    assert _observe(_tracker(), 2.0) == pytest.approx(2.0, rel=0.15)
    assert _observe(_tracker(), 0.5) == 1.0  # clean video keeps the 1 px model exactly
    assert _observe(_tracker(), 8.0) == 3.0  # clamped to flow_noise_max_scale
    assert _observe(_tracker("tracking.flow_noise_max_scale=1"), 2.0) == 1.0  # off


def test_noise_scale_weights_every_observation_of_a_frame():
    from slam.map.frame import Frame

    tracker = _tracker()
    _observe(tracker, 2.0)
    frame = Frame(index=0, timestamp=0.0, gray=np.zeros((480, 640), np.uint8),
                  features=binary_features(np.zeros((0, 2))), kp_undist=np.zeros((0, 2)), inv_sigma2=np.zeros(0), colors=np.zeros((0, 3), np.uint8),
                  image=np.zeros((480, 640, 3), np.uint8))
    uv = np.array([[100.0, 100.0], [300.0, 200.0]])
    tracker._set_keypoints(frame, tracker._flow_features(uv), np.arange(2))
    np.testing.assert_allclose(frame.inv_sigma2, 1.0 / tracker._noise_scale ** 2)


def test_low_contrast_tube_is_tracked_accurately(tmp_path):
    """640x480: the low-contrast preset's noise only defeats the 1 px model at full size (60 frames, sync;
    with ``flow_noise_max_scale=1`` the same run gives 4.1% of the path)."""
    seq = generate("tube_lowcontrast", tmp_path / "seq", frames=60, seed=5, size=(640, 480))
    cfg = load_config("endoscopy", ["system.sync=true", "features.type=orb", "system.report=false"])
    outcome = run_source(open_source(str(seq), cfg.source), cfg, tmp_path / "out")
    assert outcome.result.stats["tracked_fraction"] == 1.0
    assert outcome.result.stats["maps"] == 1
    assert outcome.evaluation["ate_percent_of_path"] <= 2.5, outcome.evaluation
