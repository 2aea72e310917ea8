"""SuperPoint network, weights, extraction, torch matching, self-supervised training and held-out accuracy."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from slam.config import FeatureConfig  # noqa: E402
from slam.errors import InputError  # noqa: E402
from slam.features import train as T  # noqa: E402
from slam.features.matching import match_descriptors  # noqa: E402
from slam.features.superpoint import LAYER_NAMES, SHIPPED_WEIGHTS, SuperPointExtractor, build_network  # noqa: E402
from slam.features.torch_matching import match_descriptors_torch  # noqa: E402

TINY = (8, 8, 16, 16, 32)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _texture_pairs(count: int, size: int, seed: int) -> list[T.Pair]:
    pool = T.texture_images(seed + T.HELDOUT_SEED_OFFSET, 4, size=384)
    return T.heldout_pairs(pool, count, seed, (size, size), T.WarpRange())


def _cfg(**kw) -> FeatureConfig:
    return FeatureConfig(type="superpoint", **kw)


def test_magic_leap_checkpoint_loads(tmp_path):
    """A state dict with the original key names (random weights) loads through features.weights."""
    gen = torch.Generator().manual_seed(3)
    ref = build_network()
    state = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in ref.state_dict().items()}
    assert {k.split(".")[0] for k in state} == set(LAYER_NAMES)
    path = tmp_path / "superpoint_v1.pth"
    torch.save(state, path)
    ex = SuperPointExtractor(_cfg(weights=str(path), num_features=200, clahe=False))
    assert torch.equal(ex.net.convDb.weight.detach(), state["convDb.weight"])
    assert torch.equal(ex.net.conv1a.bias.detach(), state["conv1a.bias"])
    img = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    f = ex.extract(img)
    assert 0 < len(f) <= 200
    assert f.descriptors.dtype == np.float32 and f.descriptors.shape == (len(f), 256)
    np.testing.assert_allclose(np.linalg.norm(f.descriptors, axis=1), 1.0, atol=1e-4)
    assert (f.octaves == 0).all() and f.scale_factor == 2.0 and not f.binary
    # a file without SuperPoint's keys is refused, naming the file
    torch.save({"conv1a.weight": state["conv1a.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="bad.pth"):
        SuperPointExtractor(_cfg(weights=str(tmp_path / "bad.pth")))


def test_shipped_weights_extract_mask_nms_describe():
    assert SHIPPED_WEIGHTS.is_file() and SHIPPED_WEIGHTS.stat().st_size < 10 * 1024 * 1024
    ex = SuperPointExtractor(_cfg(num_features=150))
    pair = _texture_pairs(1, 192, 5)[0]
    img = pair.img_a
    mask = np.zeros_like(img)
    mask[:, :96] = 255
    f = ex.extract(img, mask)
    assert 20 < len(f) <= 150
    assert (f.keypoints[:, 0] <= 96 - ex.mask_margin_px).all()  # only in the eroded usable half
    border = ex.border_px
    # no detection within border_px of the edge (sub-pixel refinement moves a peak by at most 0.5 px)
    assert (f.keypoints >= border - 0.5).all() and (f.keypoints[:, 1] <= img.shape[0] - border - 0.5).all()
    d = np.linalg.norm(f.keypoints[:, None] - f.keypoints[None], axis=2) + np.eye(len(f)) * 1e9
    assert d.min() >= ex.nms_radius - 1e-6  # non-maximum suppression keeps peaks apart
    # describe at the detected points reproduces extract's descriptors; points outside are dropped
    pts = np.vstack([f.keypoints[:10], [[-5.0, 3.0], [img.shape[1] + 2.0, 4.0]]])
    g, kept = ex.describe(img, pts)
    assert kept.tolist() == list(range(10))
    np.testing.assert_allclose(g.descriptors, f.descriptors[:10], atol=1e-5)
    # batched extraction equals single-image extraction
    both = ex.extract_batch([img, pair.img_b])
    np.testing.assert_allclose(both[0].keypoints, ex.extract(img).keypoints)


def test_torch_matching_equals_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(300, 64)).astype(np.float32)
    b = np.vstack([a[:150] + rng.normal(scale=0.3, size=(150, 64)), rng.normal(size=(200, 64))]).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    for ratio, mutual in [(0.8, True), (None, True), (0.9, False)]:
        ref = match_descriptors(a, b, False, ratio=ratio, mutual=mutual)
        got = match_descriptors_torch(torch.from_numpy(a), torch.from_numpy(b), ratio, mutual, block_elements=5000)
        assert got.dtype == torch.int64 and got.device.type == "cpu"
        np.testing.assert_array_equal(got.numpy(), ref)
    assert len(ref) > 100
    bits_a = rng.integers(0, 256, (120, 32), dtype=np.uint8)
    bits_b = np.vstack([bits_a[:60] ^ (rng.random((60, 32)) < 0.02).astype(np.uint8), rng.integers(0, 256, (80, 32), dtype=np.uint8)])
    ref = match_descriptors(bits_a, bits_b, True, ratio=0.9, mutual=True)
    got = match_descriptors_torch(bits_a, bits_b, 0.9, True, device="cpu")
    np.testing.assert_array_equal(got.numpy(), ref)
    assert match_descriptors_torch(a[:0], b, 0.8, True).shape == (0, 2)


def test_shipped_weights_beat_random_weights_on_warped_pairs():
    pairs = _texture_pairs(6, 160, 11)
    trained = SuperPointExtractor(_cfg(num_features=300))
    torch.manual_seed(0)
    random_net = build_network()
    rand = SuperPointExtractor(_cfg(num_features=300), network=random_net)
    res_t = T.evaluate_extractor(trained, pairs)
    res_r = T.evaluate_extractor(rand, pairs)
    assert res_t["mma@3"] > 0.5, res_t
    assert res_t["mma@3"] > res_r["mma@3"] + 0.3, (res_t, res_r)
    assert res_t["correct"] > 3 * max(res_r["correct"], 1.0)
    assert res_t["repeatability"] > res_r["repeatability"]


def test_training_loss_goes_down_and_resume_matches(tmp_path):
    cfg = T.TrainConfig(steps=40, batch=2, crop=64, lr=2e-3, warmup=5, widths=TINY, sources=("texture",),
                        textures=4, eval_every=0, checkpoint_every=10, threads=1)
    full = T.train(cfg, tmp_path / "a", out=tmp_path / "a.pt")
    losses = np.array([h["desc"] for h in full["history"] if "desc" in h])
    assert losses[-10:].mean() < losses[:5].mean() - 0.3, losses
    # an interrupted run resumed from its checkpoint ends with the same weights
    T.train(cfg, tmp_path / "b", stop_after=20)
    T.train(cfg, tmp_path / "b", out=tmp_path / "b.pt")
    wa = torch.load(tmp_path / "a.pt", weights_only=True)["state_dict"]
    wb = torch.load(tmp_path / "b.pt", weights_only=True)["state_dict"]
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), atol=2e-3, rtol=1e-2)
    # the exported small model loads as an extractor
    ex = SuperPointExtractor(_cfg(weights=str(tmp_path / "a.pt"), num_features=50))
    assert ex.net.widths == TINY


def test_train_command_runs(tmp_path):
    from slam.features import train_command

    p = argparse.ArgumentParser()
    train_command.add_arguments(p)
    args = p.parse_args(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "w.pt"), "--steps", "3",
                         "--batch", "1", "--crop", "64", "--widths", ",".join(map(str, TINY)), "--sources",
                         "texture", "--textures", "2", "--eval-every", "3", "--eval-pairs", "2", "--device", "cpu",
                         "--threads", "1"])
    assert train_command.run(args) == 0
    lines = (tmp_path / "w" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4 and "eval" in lines[-1]
    assert (tmp_path / "w.pt").is_file()


def test_sift_path_and_cli_do_not_import_torch():
    code = (
        "import sys, numpy as np\n"
        "from slam.cli import build_parser\n"
        "build_parser()\n"
        "from slam.config import FeatureConfig\n"
        "from slam.features.factory import create_extractor\n"
        "img = (np.random.default_rng(0).random((120, 160)) * 255).astype(np.uint8)\n"
        "create_extractor(FeatureConfig(type='sift')).extract(img)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
