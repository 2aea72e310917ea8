"""Field-of-view, specular-highlight and combined masks; illumination flattening."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from conftest import shared_sequence
from slam.errors import InputError
from slam.features.masks import (
    FovMaskEstimator,
    combine_masks,
    erode_mask,
    estimate_fov_mask,
    load_mask,
    specular_mask,
)
from slam.features.photometric import brightness_change, flatten_illumination


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(np.count_nonzero(a & b)) / np.count_nonzero(a | b)


def texture(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """``(H, W, 3)`` uint8 reddish tissue-like texture with vignetting (darker towards the rim)."""
    base = np.zeros((h, w), np.float32)
    for scale, amp in ((4, 60.0), (16, 40.0), (64, 30.0)):
        noise = rng.standard_normal((h // scale + 2, w // scale + 2)).astype(np.float32)
        base += amp * cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)
    ys, xs = np.mgrid[0:h, 0:w]
    rr = np.hypot(xs - w / 2, ys - h / 2) / (0.5 * max(h, w))
    vignette = 1.0 - 0.55 * rr**2
    lum = np.clip((120 + base) * vignette, 25, 250)
    bgr = np.stack([0.55 * lum, 0.65 * lum, lum], axis=2)
    return np.clip(bgr, 0, 255).astype(np.uint8)


def endoscope_frames(shape_kind: str, n: int = 5, h: int = 480, w: int = 640, seed: int = 1):
    """Frames of a textured field of view on a noisy black border with a text overlay, and the truth mask."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((h, w), np.uint8)
    if shape_kind == "circle":
        cv2.circle(truth, (333, 236), 221, 255, -1)
    else:  # rounded rectangle: x 70..570, y 40..440, corner radius 60
        x0, y0, x1, y1, r = 70, 40, 570, 440, 60
        cv2.rectangle(truth, (x0 + r, y0), (x1 - r, y1), 255, -1)
        cv2.rectangle(truth, (x0, y0 + r), (x1, y1 - r), 255, -1)
        for cx, cy in ((x0 + r, y0 + r), (x1 - r, y0 + r), (x0 + r, y1 - r), (x1 - r, y1 - r)):
            cv2.circle(truth, (cx, cy), r, 255, -1)
    frames = []
    for i in range(n):
        img = texture(h, w, rng)
        img[truth == 0] = 0
        noise = rng.normal(0, 3.0, (h, w, 3))
        img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
        cv2.putText(img, "PAT 0042  12:34:56", (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)
        cv2.putText(img, f"frame {i}", (w - 130, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (200, 255, 200), 1)
        # a label crossing the outline, and a dark structure at the rim that stays in every frame
        cv2.putText(img, "SCOPE 30", (120, 70) if shape_kind == "circle" else (20, 60), cv2.FONT_HERSHEY_SIMPLEX,
                    0.8, (255, 255, 255), 2)
        cv2.circle(img, (544, 236), 40, (3, 3, 3), -1)
        if i == 2:
            img = (img * 0.15).astype(np.uint8)  # one nearly dark frame (light off) must not matter
        frames.append(img)
    return frames, truth


@pytest.mark.parametrize("kind", ["circle", "rounded_rect"])
@pytest.mark.parametrize("upscale", [1, 2])
def test_synthetic_border_recovered(kind, upscale):
    frames, truth = endoscope_frames(kind)
    if upscale != 1:  # above the working width: estimated on a downscaled copy, drawn at full size
        size = (640 * upscale, 480 * upscale)
        frames = [cv2.resize(f, size, interpolation=cv2.INTER_NEAREST) for f in frames]
        truth = cv2.resize(truth, size, interpolation=cv2.INTER_NEAREST)
    fov = estimate_fov_mask(frames, margin_px=0)
    assert fov.shape == kind
    assert fov.mask.shape == truth.shape
    assert iou(fov.mask, truth) >= 0.97
    assert fov.confidence > 0.9
    k = upscale
    if kind == "circle":
        cx, cy = fov.params["centre"]
        tol = 2.0 * k
        assert abs(cx - (333 * k + (k - 1) / 2)) < tol and abs(cy - (236 * k + (k - 1) / 2)) < tol
        assert abs(fov.params["radius"] - 221 * k) < tol
    else:
        expected = (70 * k, 40 * k, 571 * k - 1, 441 * k - 1)
        assert np.allclose(fov.params["rect"], expected, atol=2.0 * k)


def test_circle_clipped_by_image_edges():
    h, w = 360, 640
    truth = np.zeros((h, w), np.uint8)
    cv2.circle(truth, (320, 180), 230, 255, -1)  # taller than the image: cut at top and bottom
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(3):
        img = texture(h, w, rng)
        img[truth == 0] = 0
        frames.append(img)
    fov = estimate_fov_mask(frames, margin_px=0)
    assert fov.shape == "circle"
    assert abs(fov.params["radius"] - 230) < 3
    assert iou(fov.mask, truth) >= 0.97


def test_margin_keeps_keypoints_off_the_border():
    frames, truth = endoscope_frames("circle", n=3)
    fov = estimate_fov_mask(frames, margin_px=6)
    dist = cv2.distanceTransform((truth > 0).astype(np.uint8), cv2.DIST_L2, 5)
    assert dist[fov.mask > 0].min() >= 4.0  # a pixel or two of fitting error is allowed


def test_ordinary_image_gives_full_mask():
    rng = np.random.default_rng(5)
    frames = [texture(480, 640, rng) for _ in range(3)]
    fov = estimate_fov_mask(frames, margin_px=0)
    assert fov.shape == "full"
    assert np.all(fov.mask == 255)
    # a dark, textured corner of an ordinary scene is not a border
    dark = [f.copy() for f in frames]
    for f in dark:
        f[:200, :250] = (f[:200, :250] * 0.12).astype(np.uint8)
    fov = estimate_fov_mask(dark, margin_px=0)
    assert np.count_nonzero(fov.mask) / fov.mask.size > 0.95


def test_recheck_detects_changed_field_of_view():
    frames, _ = endoscope_frames("circle", n=4)
    est = FovMaskEstimator(num_frames=4, margin_px=2, max_failures=2)
    results = [est.add(f) for f in frames]
    assert results[:3] == [None, None, None] and results[3] is not None
    same, _ = endoscope_frames("circle", n=1, seed=9)
    assert est.recheck(same[0])
    wider = texture(480, 640, np.random.default_rng(11))  # scope changed: the whole image is bright
    assert not est.recheck(wider)
    assert not est.recheck(wider)
    assert est.needs_refit


def test_sinus_dev_automatic_mask_matches_file():
    seq = shared_sequence("sinus_dev")
    truth = cv2.imread(str(seq / "mask.png"), cv2.IMREAD_GRAYSCALE)
    paths = sorted((seq / "rgb").iterdir())
    frames = [cv2.imread(str(p)) for p in paths[:: max(1, len(paths) // 6)][:6]]
    t0 = time.perf_counter()
    fov = estimate_fov_mask(frames, margin_px=0)
    elapsed = time.perf_counter() - t0
    assert fov.mask.shape == truth.shape
    assert fov.shape == "circle"
    assert iou(fov.mask, truth) >= 0.95
    assert elapsed < 2.0
    # the file loader gives the same pixels, resized to a half-size image
    loaded = load_mask(seq / "mask.png", (540, 960))
    assert loaded.shape == (540, 960) and iou(loaded, cv2.resize(truth, (960, 540))) > 0.99


def test_load_mask_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_mask(tmp_path / "missing.png")
    cv2.imwrite(str(tmp_path / "empty.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(InputError, match="no usable"):
        load_mask(tmp_path / "empty.png")


def test_specular_mask_is_the_hsv_definition_pixel_for_pixel():
    """Bright (V >= 235) and nearly white (S <= 60): the mask equals OpenCV's HSV test, up to S's rounding."""
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (60, 80, 3)).astype(np.uint8)
    img[rng.random((60, 80)) < 0.4] = rng.integers(200, 256, 3)
    img[rng.random((60, 80)) < 0.2] = (250, 245, 240)
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV).astype(int)
    v, mn = img.max(axis=2).astype(int), img.min(axis=2).astype(int)
    exact = (v >= 235) & (255 * (v - mn) <= 60 * v)
    got = specular_mask(img, 235, 60, 0) > 0
    assert exact.sum() > 100 and (~exact & (v >= 235)).sum() > 100  # both kinds of bright pixel occur
    assert np.array_equal(got, exact)
    assert np.mean(got == ((hsv[..., 2] >= 235) & (hsv[..., 1] <= 60))) > 0.99
    assert not specular_mask(np.full((40, 40, 3), 100, np.uint8), 235, 60, 5).any()


def test_specular_mask_finds_highlights_not_texture():
    rng = np.random.default_rng(2)
    img = texture(480, 640, rng)
    truth = np.zeros((480, 640), np.uint8)
    for (cx, cy, ax, ay, ang) in ((100, 120, 12, 6, 30), (400, 300, 20, 9, -10), (520, 90, 7, 7, 0)):
        cv2.ellipse(truth, (cx, cy), (ax, ay), ang, 0, 360, 255, -1)
    img[truth > 0] = (250, 252, 255)
    raw = specular_mask(img, 235, 60, 0)
    assert iou(raw, truth) > 0.95
    dilated = specular_mask(img, 235, 60, 5)
    assert np.all(dilated[truth > 0] == 255)
    assert np.count_nonzero(dilated) < 3 * np.count_nonzero(truth)
    # bright but saturated red tissue is not a highlight
    red = np.zeros((50, 50, 3), np.uint8)
    red[:] = (60, 80, 250)
    assert not specular_mask(red, 235, 60, 3).any()
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert iou(specular_mask(gray, 235, 60, 0), truth) > 0.9
    t0 = time.perf_counter()
    for _ in range(20):
        specular_mask(img, 235, 60, 5)
    assert (time.perf_counter() - t0) / 20 < 0.02  # ~1-2 ms; generous for a loaded machine


def test_combine_and_erode():
    a = np.zeros((20, 30), np.uint8)
    a[2:18, 3:27] = 1
    b = np.full((20, 30), 255, np.uint8)
    b[:, 15:] = 0
    c = combine_masks(a, None, b)
    assert c.dtype == np.uint8 and set(np.unique(c)) == {0, 255}
    assert np.count_nonzero(c) == 16 * 12
    assert combine_masks(None, None) is None
    e = erode_mask(np.full((20, 30), 255, np.uint8), 3)
    assert e[:3].max() == 0 and e[3:-3, 3:-3].min() == 255  # image edges count as border


def test_flatten_illumination_removes_vignetting():
    h, w = 240, 320
    rng = np.random.default_rng(4)
    pattern = 100 + 40 * np.sign(rng.standard_normal((h // 8, w // 8)))
    pattern = cv2.resize(pattern.astype(np.float32), (w, h), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.7 * (np.hypot(xs - w / 2, ys - h / 2) / np.hypot(w / 2, h / 2)) ** 2
    img = np.clip(pattern * vignette, 0, 255).astype(np.uint8)
    flat = flatten_illumination(img, sigma=30)
    centre, corner = (slice(90, 150), slice(120, 200)), (slice(0, 50), slice(0, 60))
    ratio_before = img[corner].mean() / img[centre].mean()
    ratio_after = flat[corner].mean() / flat[centre].mean()
    assert ratio_before < 0.6 and abs(ratio_after - 1.0) < 0.15
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (160, 120), 100, 255, -1)
    flat_masked = flatten_illumination(img, sigma=30, mask=mask)
    assert flat_masked[mask == 0].max() == 0
    assert abs(brightness_change(img, (img * 0.5).astype(np.uint8)) - 0.5) < 0.02
