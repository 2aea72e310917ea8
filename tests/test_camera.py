"""Camera models: round trips with asymmetric intrinsics, so a swapped fx/fy or cx/cy cannot pass."""

import numpy as np
import pytest

from slam.camera import Camera, read_calib_file
from slam.errors import CalibrationError

PINHOLE = Camera(640, 480, 520.0, 480.0, 331.5, 229.0, (0.12, -0.25, 0.001, -0.0015, 0.05))
FISHEYE = Camera(640, 480, 260.0, 250.0, 322.0, 236.0, (0.05, -0.01, 0.004, -0.001), "fisheye")


def random_points(n, rng, max_angle_deg):
    theta = np.deg2rad(rng.uniform(0, max_angle_deg, n))
    phi = rng.uniform(0, 2 * np.pi, n)
    rays = np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], axis=1)
    return rays * rng.uniform(0.5, 5.0, (n, 1))


@pytest.mark.parametrize("camera,max_angle", [(PINHOLE, 30.0), (FISHEYE, 75.0)])
def test_project_unproject_round_trip(camera, max_angle):
    rng = np.random.default_rng(1)
    X = random_points(500, rng, max_angle)
    uv = camera.project(X)
    assert np.all(np.isfinite(uv))
    rays = camera.unproject(uv)
    expected = X / np.linalg.norm(X, axis=1, keepdims=True)
    assert np.max(np.linalg.norm(rays - expected, axis=1)) < 1e-6


def test_fisheye_beyond_ninety_degrees_field_of_view():
    """A 200-degree fisheye: rays 95 degrees off-axis still project and unproject exactly."""
    cam = Camera(800, 800, 200.0, 205.0, 401.0, 398.0, (0.01, -0.002, 0.0005, 0.0), "fisheye")
    rng = np.random.default_rng(2)
    X = random_points(200, rng, 95.0)
    rays = cam.unproject(cam.project(X))
    assert np.max(np.linalg.norm(rays - X / np.linalg.norm(X, axis=1, keepdims=True), axis=1)) < 1e-6


def test_undistort_points_matches_ideal_projection():
    rng = np.random.default_rng(3)
    X = random_points(300, rng, 30.0)
    und = PINHOLE.undistort_points(PINHOLE.project(X))
    ideal = PINHOLE.project_ideal(X)
    assert np.max(np.abs(und - ideal)) < 1e-5
    # the convention check: x pixel depends on fx and cx only
    assert np.allclose(ideal[:, 0], 520.0 * X[:, 0] / X[:, 2] + 331.5)
    assert np.allclose(ideal[:, 1], 480.0 * X[:, 1] / X[:, 2] + 229.0)


def test_scaled_camera_keeps_pixel_centre_convention():
    cam = Camera(640, 480, 500.0, 490.0, 319.5, 239.5)
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (320, 240)
    assert half.cx == pytest.approx(159.5) and half.cy == pytest.approx(119.5)
    X = np.array([[0.3, -0.2, 2.0]])
    assert np.allclose((cam.project_ideal(X) + 0.5) * 0.5 - 0.5, half.project_ideal(X))


def test_points_behind_camera_are_nan():
    uv = PINHOLE.project(np.array([[0.0, 0.0, -1.0], [0.1, 0.1, 1.0]]))
    assert np.all(np.isnan(uv[0])) and np.all(np.isfinite(uv[1]))


@pytest.mark.parametrize(
    "text,needle",
    [("", "empty"), ("fx fy cx cy", "cannot parse"), ("500 500 320", "expected 4"), ("nan 500 320 240", "NaN"),
     ("-500 500 320 240", "positive")],
)
def test_bad_calibration_files_name_the_file(tmp_path, text, needle):
    path = tmp_path / "calib.txt"
    path.write_text(text)
    with pytest.raises(CalibrationError) as err:
        read_calib_file(path, 640, 480)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_calibration_file_with_distortion_and_fisheye(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("# comment\n500 490 320 240 0.1 -0.2 0.001 0.002 0.03\n")
    cam = read_calib_file(p, 640, 480)
    assert cam.dist == (0.1, -0.2, 0.001, 0.002, 0.03) and cam.fy == 490
    p.write_text("fisheye 300 301 320 240 0.1 0.01 0 0\n")
    assert read_calib_file(p, 640, 480).model == "fisheye"
