"""Keypoint extractors (SIFT, ORB), grid bucketing, masks, descriptor matching and guided search."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest

from slam.config import FeatureConfig
from slam.errors import ConfigError, DependencyError, InputError
from slam.features.base import Features
from slam.features.factory import create_extractor
from slam.features.grid import cell_index, level_shares, prepare_mask, select_grid, select_grid_levels
from slam.features.matching import (
    default_max_distance,
    descriptor_distance,
    distance_matrix,
    match_descriptors,
    search_by_projection,
)
from slam.features.orb import OrbExtractor
from slam.features.sift import SiftExtractor, rootsift, unpack_octave

from conftest import shared_sequence

W, H = 640, 480
KINDS = ["sift", "orb"]


def textured_image(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """``(H, W)`` uint8 multi-scale noise (blobs and corners at all scales)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width), np.float32)
    for step in (2, 4, 8, 16, 32):
        noise = rng.standard_normal((height // step + 2, width // step + 2)).astype(np.float32)
        img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * np.sqrt(step)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    img = (img - img.min()) / (img.max() - img.min()) * 255.0
    return img.astype(np.uint8)


def extractor(kind: str, **overrides) -> object:
    return create_extractor(FeatureConfig(type=kind, **overrides))


def warp_points(xy: np.ndarray, homography: np.ndarray) -> np.ndarray:
    return cv2.perspectiveTransform(xy.reshape(-1, 1, 2).astype(np.float64), homography).reshape(-1, 2)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured_image()


# ------------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("kind", KINDS)
def test_extract_count_types_and_levels(kind, image):
    ex = extractor(kind, num_features=1000)
    feats = ex.extract(image)
    assert isinstance(feats, Features)
    assert 900 <= len(feats) <= 1000
    assert feats.keypoints.shape == (len(feats), 2) and feats.keypoints.dtype == np.float32
    assert feats.octaves.dtype == np.int32 and feats.octaves.min() >= 0
    assert len(np.unique(feats.octaves)) >= 4  # several scales are used
    assert np.all((feats.keypoints >= 0) & (feats.keypoints <= [W - 1, H - 1]))
    assert feats.scale_factor == pytest.approx(ex.scale_factor) and feats.octaves.max() < ex.num_levels
    if kind == "sift":
        assert feats.descriptors.shape == (len(feats), 128) and feats.descriptors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
        assert feats.descriptors.min() >= 0 and not feats.binary
        assert feats.scale_factor == pytest.approx(2 ** (1 / 3))
        # the level tells the keypoint's scale: size ~ 4.03 * scale_factor ** level (level 0: sigma ~2 px)
        ratio = feats.sizes / (4.03 * feats.scale_factor ** feats.octaves)
        assert np.all((ratio > 0.85) & (ratio < 1.2))
    else:
        assert feats.descriptors.shape == (len(feats), 32) and feats.descriptors.dtype == np.uint8
        assert feats.binary and feats.scale_factor == pytest.approx(1.2)
        assert feats.octaves.max() <= 7
        # the finest level keeps the largest share (proportional to 1.2 ** -level)
        counts = np.bincount(feats.octaves, minlength=8)
        assert counts[0] == counts.max() and counts[0] > 1.5 * counts[7]


@pytest.mark.parametrize("kind", KINDS)
def test_extract_honours_mask_and_erodes_its_border(kind, image):
    yy, xx = np.mgrid[0:H, 0:W]
    mask = (((xx - 320) ** 2 + (yy - 240) ** 2) < 200**2).astype(np.uint8) * 255
    mask[200:280, 280:360] = 0  # a hole in the middle (e.g. a specular highlight)
    feats = extractor(kind, num_features=800).extract(image, mask)
    assert len(feats) > 400
    # distance of every keypoint to the nearest unusable pixel: at least the 4 px margin (1 px rounding)
    clearance = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, 5)
    ix, iy = np.rint(feats.keypoints).astype(int).T
    assert clearance[iy, ix].min() >= 3.0
    # wrong mask size or an empty mask
    with pytest.raises(InputError):
        extractor(kind).extract(image, mask[:100])
    assert len(extractor(kind).extract(image, np.zeros_like(mask))) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_grid_spreads_keypoints_away_from_a_textured_corner(kind):
    faint = 128 + (textured_image(seed=7).astype(np.float32) - 128) * 0.1  # faint texture, +-13 grey levels
    img = np.clip(faint, 0, 255).astype(np.uint8)
    img[: H // 2, : W // 2] = textured_image(W // 2, H // 2, seed=5)  # one highly textured quadrant
    cfg = FeatureConfig(type=kind, num_features=600)
    # the plain detectors put (nearly) all their keypoints in the textured quadrant
    plain = cv2.ORB_create(600) if kind == "orb" else cv2.SIFT_create(600, 3, cfg.sift_contrast_threshold)
    plain_xy = cv2.KeyPoint_convert(plain.detect(img, None))
    assert np.mean((plain_xy[:, 0] < W / 2) & (plain_xy[:, 1] < H / 2)) > 0.9
    feats = create_extractor(cfg).extract(img)
    in_corner = np.mean((feats.keypoints[:, 0] < W / 2) & (feats.keypoints[:, 1] < H / 2))
    cells = cell_index(feats.keypoints, W, H, cfg.grid_cols, cfg.grid_rows)
    per_cell = np.bincount(cells, minlength=cfg.grid_cols * cfg.grid_rows)
    assert len(feats) >= 540
    assert in_corner < 0.45  # the quadrant is a quarter of the image
    assert np.mean(per_cell > 0) > 0.9
    assert per_cell.max() < 0.1 * len(feats)


def test_select_grid_round_robin():
    rng = np.random.default_rng(0)
    # 900 strong candidates in cell (0, 0) of a 4x4 grid, 10 weak ones in each other cell
    dense = rng.uniform(0, 25, (900, 2))
    sparse = np.concatenate([rng.uniform(0, 25, (10, 2)) + [25 * (c % 4), 25 * (c // 4)] for c in range(1, 16)])
    xy = np.concatenate([dense, sparse])
    resp = np.concatenate([rng.uniform(10, 20, 900), rng.uniform(0, 1, 150)])
    idx = select_grid(xy, resp, 200, 100, 100, 4, 4)
    assert len(idx) == 200 and len(np.unique(idx)) == 200
    cells = cell_index(xy[idx], 100, 100, 4, 4)
    # every weak cell gives all its 10 candidates, the dense cell gets the rest: its 50 strongest
    np.testing.assert_array_equal(np.bincount(cells, minlength=16), [50] + [10] * 15)
    np.testing.assert_array_equal(np.sort(idx[cells == 0]), np.sort(np.argsort(-resp[:900])[:50]))
    # fewer candidates than asked: all of them, strongest first
    few = select_grid(xy[:5], resp[:5], 10, 100, 100, 4, 4)
    np.testing.assert_array_equal(few, np.argsort(-resp[:5]))
    # several pyramid levels: within a cell they are taken in proportion to their shares, whatever the
    # responses (coarse levels here have the larger ones), and cells are still served in turn
    shares = level_shares(3, 1.2)
    assert shares.sum() == pytest.approx(1.0) and shares[0] > shares[1] > shares[2]
    pts = rng.uniform(0, 50, (900, 2))  # all in cell (0, 0) of a 2x2 grid on 100x100
    lv = np.repeat([0, 1, 2], 300)
    resp3 = rng.uniform(0, 1, 900) + lv
    chosen = select_grid_levels(pts, resp3, lv, shares, 100, 100, 100, 2, 2)
    assert len(chosen) == 100 and len(np.unique(chosen)) == 100
    np.testing.assert_allclose(np.bincount(lv[chosen], minlength=3), 100 * shares, atol=1.0)
    for level in range(3):  # the strongest of each level
        mine = chosen[lv[chosen] == level]
        assert resp3[mine].min() >= np.sort(resp3[lv == level])[-len(mine)]
    other = np.concatenate([pts, rng.uniform(50, 100, (60, 2))])  # 60 level-2 candidates in cell (1, 1)
    chosen = select_grid_levels(other, np.r_[resp3, rng.uniform(0, 1, 60)], np.r_[lv, np.full(60, 2)], shares,
                                100, 100, 100, 2, 2)
    assert np.sum(chosen >= 900) == 50


def test_prepare_mask_erodes_only_the_mask_border():
    mask = np.zeros((50, 60), np.uint8)
    mask[:, 20:] = 1
    eroded = prepare_mask(mask, (50, 60), 3)
    assert eroded[:, :23].sum() == 0 and eroded[:, 23:].all()  # image borders are not eroded
    assert prepare_mask(None, (50, 60), 3) is None


def test_sift_positions_follow_the_pixel_centre_convention():
    """Gaussian blobs at known sub-pixel centres: SIFT must find them there (guards the 2x-downsampling
    detection path against half-pixel offsets)."""
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    centres = np.stack(np.meshgrid(np.arange(40, W - 40, 48.0), np.arange(40, H - 40, 48.0)), -1).reshape(-1, 2)
    centres += rng.uniform(-0.5, 0.5, centres.shape)
    img = np.full((H, W), 40.0)
    for cx, cy in centres:
        img += 150.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 3.0**2))
    feats = extractor("sift", clahe=False).extract(np.clip(img, 0, 255).astype(np.uint8))
    d = np.linalg.norm(feats.keypoints[:, None] - centres[None], axis=2)
    nearest = d.min(axis=0)
    found = nearest < 1.0
    assert found.mean() > 0.9
    assert np.median(nearest[found]) < 0.15


def test_sift_octave_unpacking():
    packed = np.array([(1 << 8) | 255, (3 << 8) | 0, (2 << 8) | 4])  # (-1, 1), (0, 3), (4, 2)
    octave, layer = unpack_octave(packed)
    np.testing.assert_array_equal(octave, [-1, 0, 4])
    np.testing.assert_array_equal(layer, [1, 3, 2])
    d = rootsift(np.array([[1.0, 3.0, 0.0, 0.0]]))
    np.testing.assert_allclose(d, [[0.5, np.sqrt(0.75), 0, 0]], atol=1e-6)


# ------------------------------------------------------------------------------------------------ matching
@pytest.mark.parametrize("kind", KINDS)
def test_matching_under_a_known_homography(kind, image):
    angle = np.radians(6.0)
    scale = 1.05
    homography = np.array(
        [
            [scale * np.cos(angle), -scale * np.sin(angle), 20.0],
            [scale * np.sin(angle), scale * np.cos(angle), -30.0],
            [2e-5, -1e-5, 1.0],
        ]
    )
    rng = np.random.default_rng(1)
    warped = cv2.warpPerspective(image, homography, (W, H), flags=cv2.INTER_LINEAR)
    warped = np.clip(warped + rng.normal(0, 2, warped.shape), 0, 255).astype(np.uint8)
    ex = extractor(kind, num_features=1200)
    f1, f2 = ex.extract(image), ex.extract(warped)
    matches = match_descriptors(f1.descriptors, f2.descriptors, ex.binary, ratio=0.8, mutual=True)
    err = np.linalg.norm(warp_points(f1.keypoints[matches[:, 0]], homography) - f2.keypoints[matches[:, 1]], axis=1)
    assert len(matches) > 300
    assert np.mean(err < 3.0) > 0.9
    # each keypoint is used once with the mutual check
    assert len(np.unique(matches[:, 0])) == len(matches) == len(np.unique(matches[:, 1]))
    # without ratio and mutual checks there are more matches, but a smaller share is right
    loose = match_descriptors(f1.descriptors, f2.descriptors, ex.binary, ratio=None, mutual=False)
    err_loose = np.linalg.norm(warp_points(f1.keypoints[loose[:, 0]], homography) - f2.keypoints[loose[:, 1]], axis=1)
    assert len(loose) == len(f1) and np.mean(err_loose < 3.0) < np.mean(err < 3.0)


@pytest.mark.parametrize("binary", [False, True])
def test_ratio_and_mutual_logic_on_constructed_descriptors(binary):
    rng = np.random.default_rng(4)
    if binary:
        base = rng.integers(0, 256, (6, 32), dtype=np.uint8)

        def perturb(d, bits):  # flip `bits` bits of every row
            out = d.copy()
            for row in out:
                pos = rng.choice(256, bits, replace=False)
                np.bitwise_xor.at(row, pos // 8, (1 << (pos % 8)).astype(np.uint8))
            return out

    else:
        base = rootsift(rng.random((6, 128)).astype(np.float32))

        def perturb(d, level):
            return rootsift(np.square(d) + level / 100.0 * rng.random(d.shape).astype(np.float32))

    small, large = (4, 20) if binary else (1.0, 3.0)
    desc2 = base[[3, 0, 5, 1, 4, 2]]  # desc2[j] = base[perm[j]]
    desc1 = perturb(base, small)
    m = match_descriptors(desc1, desc2, binary, ratio=0.8, mutual=True)
    np.testing.assert_array_equal(m, [[0, 1], [1, 3], [2, 5], [3, 0], [4, 4], [5, 2]])

    # ambiguous: desc2 holds base[0] twice -> ratio test rejects row 0
    amb = np.concatenate([desc2, base[:1]])
    m = match_descriptors(desc1, amb, binary, ratio=0.8, mutual=False)
    assert 0 not in m[:, 0] and len(m) == 5
    m = match_descriptors(desc1, amb, binary, ratio=None, mutual=False)
    assert 0 in m[:, 0] and len(m) == 6

    # two rows of desc1 near base[2]: without the mutual check both match; with it only the closer one
    two = np.concatenate([desc1, perturb(base[2:3], large)])
    m = match_descriptors(two, desc2, binary, ratio=None, mutual=False)
    assert set(m[m[:, 1] == 5, 0]) == {2, 6}
    m = match_descriptors(two, desc2, binary, ratio=None, mutual=True)
    np.testing.assert_array_equal(m[m[:, 1] == 5, 0], [2])

    # max_distance and empty inputs
    dmax = float(descriptor_distance(desc1, base, binary).max())
    assert len(match_descriptors(desc1, desc2, binary, max_distance=dmax * 0.999)) < 6
    assert match_descriptors(desc1[:0], desc2, binary).shape == (0, 2)


@pytest.mark.parametrize("binary", [False, True])
def test_distances_agree_with_brute_force(binary):
    rng = np.random.default_rng(5)
    if binary:
        a = rng.integers(0, 256, (40, 32), dtype=np.uint8)
        b = rng.integers(0, 256, (30, 32), dtype=np.uint8)
        ua, ub = np.unpackbits(a, axis=1).astype(int), np.unpackbits(b, axis=1).astype(int)
        expected = np.abs(ua[:, None] - ub[None]).sum(-1)
    else:
        a = rootsift(rng.random((40, 128)))
        b = rootsift(rng.random((30, 128)))
        expected = np.linalg.norm(a[:, None].astype(float) - b[None], axis=-1)
    np.testing.assert_allclose(distance_matrix(a, b, binary), expected, atol=1e-3)
    np.testing.assert_allclose(descriptor_distance(a[:30], b, binary), np.diag(expected[:30]), atol=1e-3)
    assert default_max_distance(True) == 100 and default_max_distance(True, strict=True) == 50
    assert 0 < default_max_distance(False, strict=True) < default_max_distance(False) < np.sqrt(2)


@pytest.mark.parametrize("binary", [False, True])
def test_search_by_projection_with_distractors(binary):
    rng = np.random.default_rng(6)
    n_kp, n_pts = 1200, 400
    kp_uv = rng.uniform([0, 0], [W, H], (n_kp, 2))
    if binary:
        kp_desc = rng.integers(0, 256, (n_kp, 32), dtype=np.uint8)
    else:
        kp_desc = rootsift(rng.random((n_kp, 128)))
    truth = rng.choice(n_kp, n_pts, replace=False)
    # map points: a noisy copy of their keypoint's descriptor, projected within 3 px of it
    if binary:
        flips = (rng.random((n_pts, 256)) < 0.06).astype(np.uint8)
        proj_desc = kp_desc[truth] ^ np.packbits(flips, axis=1)
    else:
        proj_desc = rootsift(np.square(kp_desc[truth]) + 0.002 * rng.random((n_pts, 128)))
    proj_uv = kp_uv[truth] + rng.uniform(-3, 3, (n_pts, 2))
    # a distractor keypoint 2 px from each true one, with an unrelated descriptor
    kp_uv = np.concatenate([kp_uv, kp_uv[truth] + [2.0, 0.0]])
    kp_desc = np.concatenate([kp_desc, kp_desc[rng.permutation(n_kp)[:n_pts]]])
    found = search_by_projection(proj_uv, proj_desc, 6.0, kp_uv, kp_desc, binary)
    assert found.shape == (n_pts,) and found.dtype == np.int64
    assert np.mean(found == truth) > 0.95
    assert np.all((found == truth) | (found == -1))

    # a small radius misses the keypoints further away than it
    found_small = search_by_projection(proj_uv, proj_desc, 1.0, kp_uv, kp_desc, binary)
    far = np.linalg.norm(proj_uv - kp_uv[truth], axis=1) > 1.0
    assert np.all(found_small[far] != truth[far])

    # taken keypoints are never returned
    taken = np.zeros(len(kp_uv), bool)
    taken[truth[:50]] = True
    found_taken = search_by_projection(proj_uv, proj_desc, 6.0, kp_uv, kp_desc, binary, taken=taken)
    assert not np.any(np.isin(found_taken, truth[:50]))
    assert np.mean(found_taken[50:] == truth[50:]) > 0.95

    # octave gating: keypoints two levels away from the predicted level are ignored
    kp_oct = np.zeros(len(kp_uv), np.int64)
    proj_oct = np.zeros(n_pts, np.int64)
    proj_oct[:100] = 2
    gated = search_by_projection(
        proj_uv, proj_desc, 6.0, kp_uv, kp_desc, binary, kp_octaves=kp_oct, proj_octaves=proj_oct, max_octave_diff=1
    )
    assert np.all(gated[:100] == -1) and np.mean(gated[100:] == truth[100:]) > 0.95

    # two map points competing for one keypoint: the one with the closer descriptor wins
    dup_desc = np.concatenate([proj_desc[:1], kp_desc[truth[:1]]])
    dup_uv = np.concatenate([proj_uv[:1], proj_uv[:1]])
    res = search_by_projection(dup_uv, dup_desc, 6.0, kp_uv, kp_desc, binary)
    np.testing.assert_array_equal(res, [-1, truth[0]])
    assert np.all(search_by_projection(proj_uv[:0], proj_desc[:0], 6.0, kp_uv, kp_desc, binary) == -1)


# ------------------------------------------------------------------------------------------------ describe
@pytest.mark.parametrize("kind", KINDS)
def test_describe_reproduces_extracted_descriptors(kind, image):
    ex = extractor(kind, num_features=500)
    feats = ex.extract(image)
    pts = np.concatenate([feats.keypoints, [[-5.0, 10.0], [W + 3.0, 5.0], [np.nan, 1.0]]])
    octs = np.concatenate([feats.octaves, [0, 0, 0]])
    desc, index = ex.describe(image, pts, octs)
    np.testing.assert_array_equal(index, np.arange(len(feats)))  # the three outside points are dropped
    np.testing.assert_array_equal(desc.octaves, feats.octaves)
    dist = descriptor_distance(desc.descriptors, feats.descriptors, ex.binary)
    # SIFT keeps duplicate keypoints with a second orientation; describe() gives the dominant one only
    assert np.mean(dist < default_max_distance(ex.binary, strict=True) / 2) > 0.75


@pytest.mark.parametrize("kind", KINDS)
def test_describe_flow_corners_across_a_shift(kind, image):
    """Corners carried by optical flow get descriptors that match across frames (the hybrid front end)."""
    shift = np.array([9.0, -6.0])
    moved = cv2.warpAffine(image, np.array([[1.0, 0, shift[0]], [0, 1.0, shift[1]]]), (W, H))
    corners = cv2.goodFeaturesToTrack(image, 600, 0.01, 10).reshape(-1, 2)
    corners = corners[(corners[:, 0] > 20) & (corners[:, 0] < W - 20) & (corners[:, 1] > 20) & (corners[:, 1] < H - 20)]
    ex = extractor(kind)
    d1, i1 = ex.describe(image, corners)
    d2, i2 = ex.describe(moved, corners + shift)
    assert len(i1) == len(corners) and len(i2) > 0.95 * len(corners)  # ORB drops points near the border
    np.testing.assert_allclose(d2.keypoints, corners[i2] + shift, atol=1e-4)
    m = match_descriptors(d1.descriptors, d2.descriptors, ex.binary)
    assert len(m) > 0.7 * len(corners)
    assert np.mean(i1[m[:, 0]] == i2[m[:, 1]]) > 0.95


# ------------------------------------------------------------------------------------------------ factory
def test_factory_types_and_errors():
    assert isinstance(create_extractor(FeatureConfig(type="sift")), SiftExtractor)
    assert isinstance(create_extractor(FeatureConfig(type="ORB")), OrbExtractor)
    with pytest.raises(ConfigError, match="features.type"):
        create_extractor(FeatureConfig(type="surf"))
    with pytest.raises(ConfigError, match="num_features"):
        create_extractor(FeatureConfig(num_features=0))
    with pytest.raises(ConfigError, match="orb_scale_factor"):
        create_extractor(FeatureConfig(type="orb", orb_scale_factor=1.0))
    with pytest.raises(InputError):
        create_extractor(FeatureConfig()).extract(np.zeros((10, 10), np.float32))
    for kind in KINDS:  # a blank image has no keypoints
        blank = create_extractor(FeatureConfig(type=kind)).extract(np.full((120, 160), 90, np.uint8))
        assert len(blank) == 0 and blank.descriptors.shape[1] in (32, 128)


def test_factory_superpoint_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "slam.features.superpoint", None)  # as if the module were absent
    with pytest.raises(DependencyError, match="superpoint"):
        create_extractor(FeatureConfig(type="superpoint"))


def test_real_endoscopy_frame_with_mask():
    seq = shared_sequence("sinus_dev")
    frame = cv2.imread(str(seq / "rgb" / "000000.jpg"), cv2.IMREAD_GRAYSCALE)
    mask = cv2.imread(str(seq / "mask.png"), cv2.IMREAD_GRAYSCALE)
    frame = cv2.resize(frame, (960, 540), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (960, 540), interpolation=cv2.INTER_NEAREST)
    clearance = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, 5)
    for kind in KINDS:
        feats = extractor(kind).extract(frame, mask)
        assert len(feats) > 150
        ix, iy = np.rint(feats.keypoints).astype(int).T
        assert clearance[iy, ix].min() >= 3.0
