"""SIFT in torch (slam.features.sift_torch) on CPU: blobs at the right scale, rotation invariance of the
descriptors, agreement with OpenCV's SIFT, the extractor interface, batches, masks and the device matcher."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slam.config import FeatureConfig  # noqa: E402
from slam.errors import ConfigError, InputError  # noqa: E402
from slam.features.base import Features  # noqa: E402
from slam.features.matching import match_descriptors  # noqa: E402
from slam.features.sift import SiftExtractor  # noqa: E402
from slam.features.sift_torch import SCALE_FACTOR, TorchSIFTExtractor, match_batch_torch  # noqa: E402
from slam.features.torch_matching import match_descriptors_torch  # noqa: E402

W, H = 320, 240


def textured(width: int = W, height: int = H, seed: int = 0) -> np.ndarray:
    """``(H, W)`` uint8 multi-scale smooth noise (blobs and corners at all scales)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width), np.float32)
    for step in (2, 4, 8, 16, 32):
        noise = rng.standard_normal((height // step + 2, width // step + 2)).astype(np.float32)
        img += cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC) * np.sqrt(step)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    return ((img - img.min()) / (img.max() - img.min()) * 255.0).astype(np.uint8)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the test machine's cores are shared, and thread hand-offs cost more than they save."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured(seed=3)


def extractor(**overrides) -> TorchSIFTExtractor:
    return TorchSIFTExtractor(FeatureConfig(**overrides), device="cpu")


def test_blobs_found_at_their_scale():
    """Gaussian blobs of known sigma (bright and dark) are found at their centre, at sigma ~0.88 x the blob's
    (the DoG extremum of a Gaussian blob of sigma s lies at s / k^(1/2)-ish; OpenCV reports the same)."""
    img = np.full((H, W), 128.0, np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    rng = np.random.default_rng(1)
    blobs = []
    for i, s in enumerate([3.0, 4.5, 6.0, 9.0]):
        for j, sign in enumerate((1.0, -1.0)):
            cx, cy = 50 + 70 * i + rng.uniform(-0.5, 0.5), 65 + 110 * j + rng.uniform(-0.5, 0.5)
            img += sign * 100.0 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
            blobs.append((cx, cy, s))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    feats = extractor(num_features=100, clahe=False).extract(img)
    for cx, cy, s in blobs:
        d = np.hypot(feats.keypoints[:, 0] - cx, feats.keypoints[:, 1] - cy)
        k = int(d.argmin())
        assert d[k] < 0.3, f"blob sigma {s} at ({cx:.1f}, {cy:.1f}): nearest keypoint {d[k]:.2f} px away"
        sigma = feats.sizes[k] / 2.0
        assert 0.75 * s < sigma < 1.05 * s, f"blob sigma {s}: detected sigma {sigma:.2f}"
        # the pyramid level tells the scale: sigma ~ 1.6 * 2^((level + 1) / 3) up to the sub-scale offset
        nominal = 1.6 * SCALE_FACTOR ** (feats.octaves[k] + 1)
        assert 2 ** (-0.5 / 3) * 0.99 < sigma / nominal < 2 ** (0.5 / 3) * 1.01


def _affine_pair(img: np.ndarray, angle_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated by ``angle_deg`` about its centre (same size) and the 2x3 map of image 1 to 2."""
    h, w = img.shape
    A = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), angle_deg, 1.0)
    return cv2.warpAffine(img, A, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101), A


@pytest.mark.parametrize("angle", [90.0, 35.0])
def test_rotation_invariance(image, angle):
    """Descriptors matched across a rotated copy land at the right place; orientations turn with the image."""
    img2, A = _affine_pair(image, angle)
    ex = extractor(num_features=500, clahe=False)
    f1, f2 = ex.extract(image), ex.extract(img2)
    pairs = match_descriptors_torch(torch.from_numpy(f1.descriptors), torch.from_numpy(f2.descriptors), 0.8, True)
    m1, m2 = pairs[:, 0].numpy(), pairs[:, 1].numpy()
    p12 = f1.keypoints[m1] @ A[:, :2].T + A[:, 2]
    err = np.linalg.norm(p12 - f2.keypoints[m2], axis=1)
    correct = err < 3.0
    assert len(m1) > 0.3 * min(len(f1), len(f2)), f"only {len(m1)} matches of {len(f1)} / {len(f2)} keypoints"
    assert correct.mean() > 0.9, f"matching accuracy {correct.mean():.3f} at {angle} deg"
    # OpenCV's getRotationMatrix2D turns counter-clockwise on screen, i.e. angles (y down) decrease by `angle`
    dang = (f2.angles[m2[correct]] - f1.angles[m1[correct]] + angle + 180.0) % 360.0 - 180.0
    assert np.median(np.abs(dang)) < 3.0
    # the same physical point described in both images gives nearby descriptors even without detection
    d1, k1 = ex.describe(image, f1.keypoints[m1[correct]], f1.octaves[m1[correct]])
    d2, k2 = ex.describe(img2, p12[correct], f1.octaves[m1[correct]])
    common = np.intersect1d(k1, k2)
    dist = np.linalg.norm(d1.descriptors[np.searchsorted(k1, common)] - d2.descriptors[np.searchsorted(k2, common)],
                          axis=1)
    assert np.median(dist) < 0.25


def test_agrees_with_opencv_keypoints(image):
    """At least 85% of the keypoints lie within 1 px of an OpenCV SIFT keypoint of the same pyramid level (on
    CLAHE input, as configured; measured ~92%: the rest are OpenCV's refinement taking more steps)."""
    cfg = FeatureConfig(num_features=500)
    ft = TorchSIFTExtractor(cfg).extract(image)
    fc = SiftExtractor(cfg).extract(image)
    d = np.linalg.norm(ft.keypoints[:, None] - fc.keypoints[None], axis=2)
    j = d.argmin(axis=1)
    near = d[np.arange(len(ft)), j] <= 1.0
    assert near.mean() > 0.85, f"only {near.mean():.3f} of the torch keypoints are near an OpenCV keypoint"
    assert (ft.octaves[near] == fc.octaves[j[near]]).mean() > 0.9
    assert np.median(np.abs(np.log(ft.sizes[near] / fc.sizes[j[near]]))) < 0.05
    dang = (ft.angles[near] - fc.angles[j[near]] + 180.0) % 360.0 - 180.0
    assert np.median(np.abs(dang)) < 5.0
    assert len(ft) > 0.6 * len(fc)  # OpenCV also counts a duplicate per secondary orientation


def test_extract_interface(image):
    ex = extractor(num_features=300)
    feats = ex.extract(image)
    assert isinstance(feats, Features)
    assert 0.6 * 300 <= len(feats) <= 300
    assert feats.keypoints.dtype == np.float32 and feats.keypoints.shape == (len(feats), 2)
    assert feats.descriptors.dtype == np.float32 and feats.descriptors.shape == (len(feats), 128)
    assert feats.octaves.dtype == np.int32 and feats.octaves.min() >= 0
    assert np.allclose(np.linalg.norm(feats.descriptors, axis=1), 1.0, atol=1e-4)
    assert (feats.descriptors >= 0).all()  # RootSIFT
    assert ((feats.angles >= 0) & (feats.angles < 360)).all()
    assert not feats.binary and feats.scale_factor == pytest.approx(2 ** (1 / 3))
    x, y = feats.keypoints[:, 0], feats.keypoints[:, 1]
    assert ((x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)).all()
    # spread over the grid: every one of the 8 x 6 cells of this evenly textured image gets keypoints
    cells = np.unique((y * 6 // H).astype(int) * 8 + (x * 8 // W).astype(int))
    assert len(cells) == 48
    with pytest.raises(InputError):
        ex.extract(image.astype(np.float32))
    with pytest.raises(ConfigError):
        TorchSIFTExtractor(FeatureConfig(sift_contrast_threshold=0.0))


def test_mask_and_empty_mask(image):
    ex = extractor(num_features=300)
    mask = np.zeros_like(image)
    mask[:, W // 2 :] = 255
    feats = ex.extract(image, mask)
    assert len(feats) > 50
    assert feats.keypoints[:, 0].min() >= W // 2 + ex.mask_margin_px - 0.5
    assert len(ex.extract(image, np.zeros_like(image))) == 0


def test_describe_matches_extract(image):
    """describe() at extracted keypoints reproduces extract()'s descriptors (only the sub-scale offset
    differs) and drops keypoints outside the image, reporting the kept indices."""
    ex = extractor(num_features=200)
    feats = ex.extract(image)
    pts = np.vstack([feats.keypoints, [[-5.0, 10.0], [W + 3.0, 5.0]]])
    levels = np.r_[feats.octaves, 0, 0]
    desc, kept = ex.describe(image, pts, levels)
    assert kept.tolist() == list(range(len(feats)))
    assert np.array_equal(desc.octaves, feats.octaves)
    dist = np.linalg.norm(desc.descriptors - feats.descriptors, axis=1)
    assert np.median(dist) < 0.15
    empty, kept = ex.describe(image, np.zeros((0, 2)))
    assert len(empty) == 0 and len(kept) == 0


def test_batch_equals_single_frames(image):
    """A batch of two images gives each image's own keypoints; results stay on the input's device."""
    ex = extractor(num_features=200, clahe=False)
    other = textured(seed=11)
    imgs = torch.from_numpy(np.stack([image, other]))[:, None].float() / 255.0
    with torch.inference_mode():
        batch = ex.extract_batch(imgs)
        single = [ex.extract_batch(imgs[i : i + 1]).to_features()[0] for i in range(2)]
    assert batch.keypoints.device == imgs.device and batch.valid.shape == (2, 200)
    for got, want in zip(batch.to_features(), single):
        assert np.allclose(got.keypoints, want.keypoints, atol=1e-3)
        assert np.allclose(got.descriptors, want.descriptors, atol=1e-4)


def test_batch_matcher_agrees_with_pair_matchers():
    """match_batch_torch on a padded batch gives, per image, the pairs of the numpy and torch pair matchers."""
    rng = np.random.default_rng(5)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    d1 = unit(np.abs(rng.standard_normal((200, 128))))
    d2 = unit(np.vstack([d1[rng.permutation(200)[:150]] + 0.05 * np.abs(rng.standard_normal((150, 128))),
                         np.abs(rng.standard_normal((50, 128)))]))
    want = match_descriptors(d1, d2, False, 0.8, True)
    assert len(want) > 100
    assert np.array_equal(match_descriptors_torch(torch.from_numpy(d1), torch.from_numpy(d2), 0.8, True).numpy(), want)
    # batch of 2: the pair above, and the same pair with the last 60 rows of d2 padding (invalid)
    b1 = torch.from_numpy(np.stack([d1, d1]))
    b2 = torch.from_numpy(np.stack([d2, d2]))
    valid2 = torch.ones(2, 200, dtype=torch.bool)
    valid2[1, 140:] = False
    idx, dist = match_batch_torch(b1, b2, 0.8, True, valid2=valid2)
    for i, cut in enumerate((200, 140)):
        got = np.stack([np.flatnonzero(idx[i].numpy() >= 0), idx[i].numpy()[idx[i].numpy() >= 0]], axis=1)
        assert np.array_equal(got, match_descriptors(d1, d2[:cut], False, 0.8, True))
    assert np.isinf(dist.numpy()[idx.numpy() < 0]).all()


def test_secondary_orientations_fill_free_slots(image):
    """Secondary-orientation keypoints repeat a detected location with another angle, only in free slots."""
    one = extractor(num_features=1000, clahe=False)
    one.secondary_orientations = False
    two = extractor(num_features=1000, clahe=False)
    f1, f2 = one.extract(image), two.extract(image)
    assert len(f1) < 1000 and len(f1) < len(f2) <= 1000
    assert len(np.unique(f1.keypoints, axis=0)) == len(f1)
    assert np.allclose(f2.keypoints[: len(f1)], f1.keypoints)  # detected keypoints first, unchanged
    extra = f2.keypoints[len(f1) :]
    d = np.linalg.norm(extra[:, None] - f1.keypoints[None], axis=2)
    twin = d.argmin(axis=1)
    assert (d.min(axis=1) == 0).all()
    dang = np.abs((f2.angles[len(f1) :] - f1.angles[twin] + 180.0) % 360.0 - 180.0)
    assert dang.min() > 15.0
    # when the detected keypoints fill all slots there is no room for a second orientation
    few = extractor(num_features=50, clahe=False).extract(image)
    assert len(np.unique(few.keypoints, axis=0)) == len(few) == 50


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("graph", [False, True])
def test_cuda_matches_cpu(image, graph):
    """On CUDA (eager or through a CUDA graph) the keypoints are those found on the CPU."""
    cfg = FeatureConfig(num_features=500)
    ref = TorchSIFTExtractor(cfg, device="cpu").extract(image)
    ex = TorchSIFTExtractor(cfg, device="cuda", cuda_graph=graph)
    for _ in range(2):  # the second call replays the captured graph
        got = ex.extract(image)
        d = np.linalg.norm(got.keypoints[:, None] - ref.keypoints[None], axis=2).min(axis=1)
        assert abs(len(got) - len(ref)) <= 0.02 * len(ref)
        assert (d < 0.05).mean() > 0.97


def test_sift_backend_selects_the_implementation():
    """features.sift_backend: torch runs our SIFT on the CPU too; opencv/auto on CPU keep OpenCV's; typos are refused."""
    from slam.config import FeatureConfig
    from slam.errors import ConfigError
    from slam.features.factory import create_extractor
    from slam.features.sift import SiftExtractor
    from slam.features.sift_torch import TorchSIFTExtractor

    assert isinstance(create_extractor(FeatureConfig(type="sift", sift_backend="torch"), "cpu"), TorchSIFTExtractor)
    assert isinstance(create_extractor(FeatureConfig(type="sift", sift_backend="auto"), "cpu"), SiftExtractor)
    assert isinstance(create_extractor(FeatureConfig(type="sift", sift_backend="opencv"), "cuda"), SiftExtractor)
    with pytest.raises(ConfigError, match="sift_backend"):
        create_extractor(FeatureConfig(type="sift", sift_backend="cudasift"), "cpu")
