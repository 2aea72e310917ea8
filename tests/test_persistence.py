"""Map persistence: save -> load gives back every field and the same covisibility; bad files are refused."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from slam.camera import Camera
from slam.errors import InputError
from slam.features.base import Features
from slam.map.map import KeyFrame, Map
from slam.map.persistence import FORMAT_VERSION, load_maps, save_maps


def _random_pose(rng: np.random.Generator) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    T = np.eye(4)
    T[:3, :3] = q
    T[:3, 3] = rng.normal(size=3)
    return T


def _random_keyframe(rng, m: Map, n: int, binary: bool, with_tracks: bool) -> KeyFrame:
    if binary:
        desc = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    else:
        desc = rng.random((n, 128), dtype=np.float32)
        desc /= np.linalg.norm(desc, axis=1, keepdims=True)
    octaves = rng.integers(0, 5, size=n).astype(np.int32)
    scale = 1.2 if binary else 2.0
    feats = Features(
        keypoints=(rng.random((n, 2)) * [640, 480]).astype(np.float32), descriptors=desc, octaves=octaves,
        sizes=rng.random(n, dtype=np.float32) * 30, angles=rng.random(n, dtype=np.float32) * 360,
        responses=rng.random(n, dtype=np.float32), binary=binary, scale_factor=scale,
    )
    kf = KeyFrame(
        id=m.new_keyframe_id(), frame_index=int(rng.integers(0, 10_000)), timestamp=float(rng.random() * 100),
        T_cw=_random_pose(rng), features=feats, kp_undist=feats.keypoints.astype(np.float64) + rng.normal(size=(n, 2)),
        inv_sigma2=1.0 / scale ** (2 * octaves.astype(np.float64)), point_ids=np.full(n, -1, np.int64),
        colors=rng.integers(0, 256, size=(n, 3), dtype=np.uint8),
        track_ids=rng.integers(0, 1_000_000, size=n) if with_tracks else None, rotation_only=bool(rng.random() < 0.5),
    )
    m.add_keyframe(kf)
    return kf


def _random_map(seed: int, map_id: int, num_kf: int, num_kp: int, num_points: int, binary: bool) -> Map:
    rng = np.random.default_rng(seed)
    m = Map(map_id)
    kfs = [_random_keyframe(rng, m, num_kp, binary, with_tracks=bool(i % 2)) for i in range(num_kf)]
    for _ in range(num_points):
        owners = rng.choice(num_kf, size=int(rng.integers(2, 5)), replace=False)
        free = [np.flatnonzero(kfs[k].point_ids < 0) for k in owners]
        if any(len(f) == 0 for f in free):
            continue
        idx = [int(rng.choice(f)) for f in free]
        kf0 = kfs[owners[0]]
        p = m.create_point(rng.normal(size=3) * 5, kf0.features.descriptors[idx[0]], kf0, idx[0])
        for k, i in zip(owners[1:], idx[1:]):
            m.add_observation(p, kfs[k], i)
        p.normal = rng.normal(size=3)
        p.normal /= np.linalg.norm(p.normal)
        p.min_distance, p.max_distance = float(rng.random()), float(1 + rng.random() * 10)
        p.visible = int(rng.integers(1, 50))
        p.found = int(rng.integers(1, p.visible + 1))
    pts = list(m.points.values())
    for a, b in zip(pts[:6:2], pts[1:6:2]):  # fuse a few duplicates
        m.replace_point(a, b)
    # cull two keyframes; the second's parent is the first culled one (a parent chain through a culled kf)
    m.erase_keyframe(kfs[1], kfs[0])
    m.erase_keyframe(kfs[2], kfs[1])
    return m


def _camera() -> Camera:
    return Camera(640, 480, 500.5, 498.25, 319.75, 241.5, (0.1, -0.05, 0.001, 0.002, 0.01), "pinhole")


def _assert_array_same(a, b, what: str) -> None:
    if a is None or b is None:
        assert a is None and b is None, what
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    assert np.array_equal(a, b), what


def _assert_keyframe_same(a: KeyFrame, b: KeyFrame) -> None:
    w = f"keyframe {a.id}"
    assert (a.id, a.frame_index, a.timestamp, a.bad, a.rotation_only) == (b.id, b.frame_index, b.timestamp, b.bad, b.rotation_only), w
    assert (a.features.binary, a.features.scale_factor) == (b.features.binary, b.features.scale_factor), w
    for name in ("keypoints", "descriptors", "octaves", "sizes", "angles", "responses"):
        _assert_array_same(getattr(a.features, name), getattr(b.features, name), f"{w} {name}")
    for name in ("T_cw", "kp_undist", "inv_sigma2", "point_ids", "colors", "track_ids", "T_c_parent"):
        _assert_array_same(getattr(a, name), getattr(b, name), f"{w} {name}")
    assert (a.parent.id if a.parent else None) == (b.parent.id if b.parent else None), w
    np.testing.assert_array_equal(a.current_T_cw(), b.current_T_cw())


def _assert_map_same(a: Map, b: Map) -> None:
    assert a.id == b.id
    assert (a._next_kf_id, a._next_point_id) == (b._next_kf_id, b._next_point_id)
    assert list(a.keyframes) == list(b.keyframes)
    for k in a.keyframes:
        _assert_keyframe_same(a.keyframes[k], b.keyframes[k])
        if b.keyframes[k].parent is not None:  # parent links point to objects of the loaded map
            assert b.keyframes[k].parent in list(b.keyframes.values()) + b.culled_keyframes
    assert [kf.id for kf in a.culled_keyframes] == [kf.id for kf in b.culled_keyframes]
    for ka, kb in zip(a.culled_keyframes, b.culled_keyframes):
        _assert_keyframe_same(ka, kb)
    assert list(a.points) == list(b.points)
    for pid, pa in a.points.items():
        pb = b.points[pid]
        w = f"point {pid}"
        for name in ("id", "first_kf_id", "visible", "found", "bad", "min_distance", "max_distance"):
            assert getattr(pa, name) == getattr(pb, name), f"{w} {name}"
        assert list(pa.observations.items()) == list(pb.observations.items()), w
        for name in ("position", "descriptor", "color", "normal"):
            _assert_array_same(getattr(pa, name), getattr(pb, name), f"{w} {name}")
    for k in a.keyframes:
        assert a.covisibility(a.keyframes[k]) == b.covisibility(b.keyframes[k])
        assert [kf.id for kf in a.best_covisible(a.keyframes[k], 5)] == [
            kf.id for kf in b.best_covisible(b.keyframes[k], 5)
        ]
    xa, ca = a.point_cloud()
    xb, cb = b.point_cloud()
    _assert_array_same(xa, xb, "point cloud")
    _assert_array_same(ca, cb, "colours")


@pytest.fixture
def maps() -> list[Map]:
    return [
        _random_map(1, 0, num_kf=12, num_kp=300, num_points=700, binary=False),
        _random_map(2, 1, num_kf=8, num_kp=200, num_points=300, binary=True),
        Map(2),  # an empty map (a reset that never initialised)
    ]


def test_round_trip_identical(tmp_path, maps):
    config = {"features": {"type": "sift", "n": 1500}, "system": {"sync": True, "seed": 3}}
    assert any(m.culled_keyframes for m in maps) and sum(len(m.points) for m in maps) > 500
    path = save_maps(tmp_path / "map.npz", maps, _camera(), config)
    assert path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["map.npz"]  # no temp file left behind
    loaded, camera, cfg = load_maps(path)
    assert camera == _camera()
    assert cfg == config
    assert len(loaded) == len(maps)
    for a, b in zip(maps, loaded):
        _assert_map_same(a, b)
    # the counters continue where they stopped
    assert loaded[0].new_keyframe_id() == maps[0].new_keyframe_id()
    # saving the loaded maps gives the same content again
    save_maps(tmp_path / "again.npz", loaded, camera, cfg)
    again, _, _ = load_maps(tmp_path / "again.npz")
    for a, b in zip(maps, again):
        _assert_map_same(a, b)


def test_mixed_dtypes_and_fisheye(tmp_path):
    m = _random_map(5, 7, num_kf=5, num_kp=60, num_points=40, binary=False)
    kf = next(iter(m.keyframes.values()))
    kf.kp_undist = kf.kp_undist.astype(np.float32)  # one keyframe with another dtype than the rest
    cam = Camera(320, 240, 200.0, 200.0, 160.0, 120.0, (0.01, 0.002, 0.0, 0.0), "fisheye")
    save_maps(tmp_path / "m.npz", [m], cam)
    (loaded,), camera, cfg = load_maps(tmp_path / "m.npz")
    assert camera == cam and cfg is None
    _assert_map_same(m, loaded)


def test_bad_files(tmp_path, maps):
    with pytest.raises(InputError, match="not found"):
        load_maps(tmp_path / "missing.npz")
    text = tmp_path / "text.npz"
    text.write_text("hello, not a map\n")
    with pytest.raises(InputError, match="text.npz"):
        load_maps(text)
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.arange(5))
    with pytest.raises(InputError, match="array.npz"):
        load_maps(npy)
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(InputError, match="other.npz.*not a saved map"):
        load_maps(other)

    good = save_maps(tmp_path / "good.npz", maps[:1], _camera())
    with np.load(good) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["version"] = np.array(FORMAT_VERSION + 1)
    newer = tmp_path / "newer.npz"
    np.savez_compressed(newer, **arrays)
    with pytest.raises(InputError, match=f"newer.npz.*version {FORMAT_VERSION + 1}"):
        load_maps(newer)

    arrays["version"] = np.array(FORMAT_VERSION)
    del arrays["m0_obs_kf_id"]
    damaged = tmp_path / "damaged.npz"
    np.savez_compressed(damaged, **arrays)
    with pytest.raises(InputError, match="damaged.npz.*damaged"):
        load_maps(damaged)

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.npz"):
        load_maps(truncated)

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, format=np.array("slam-map"), version=np.array(FORMAT_VERSION), obj=np.array([{}], dtype=object))
    with pytest.raises(InputError, match="pickled.npz"):
        load_maps(pickled)


def test_failed_save_keeps_old_file(tmp_path, maps, monkeypatch):
    path = save_maps(tmp_path / "map.npz", maps[:1], _camera())
    before = path.read_bytes()

    def disk_full(fh, arrays):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    import slam.map.persistence as persistence

    monkeypatch.setattr(persistence, "_write_npz", disk_full)
    with pytest.raises(InputError, match="map.npz.*No space left"):
        save_maps(path, maps, _camera())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.npz"]
    # a config value JSON cannot encode natively is written as its string, never lost
    save_maps(path, maps[:1], _camera(), {"path": tmp_path})
    assert load_maps(path)[2] == {"path": str(tmp_path)}


def test_save_is_fast_for_a_large_map(tmp_path):
    """A map of 40 keyframes x 1000 SIFT keypoints: save + load stay within a few seconds."""
    m = _random_map(9, 0, num_kf=40, num_kp=1000, num_points=8_000, binary=False)
    start = time.perf_counter()
    save_maps(tmp_path / "big.npz", [m], _camera())
    t_save = time.perf_counter() - start
    start = time.perf_counter()
    (loaded,), _, _ = load_maps(tmp_path / "big.npz")
    t_load = time.perf_counter() - start
    assert len(loaded.points) == len(m.points) and len(loaded.keyframes) == len(m.keyframes)
    some = list(m.keyframes)[5]
    assert m.covisibility(m.keyframes[some]) == loaded.covisibility(loaded.keyframes[some])
    assert t_save < 10.0 and t_load < 5.0, (t_save, t_load)


def test_open3d_reads_written_ply(tmp_path):
    o3d = pytest.importorskip("open3d")
    from slam.viz.ply import write_ply

    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(1234, 3)) * 3
    rgb = rng.integers(0, 256, size=(1234, 3), dtype=np.uint8)
    write_ply(tmp_path / "map.ply", xyz, rgb)
    pcd = o3d.io.read_point_cloud(str(tmp_path / "map.ply"))
    assert len(pcd.points) == 1234
    assert pcd.has_colors()
    np.testing.assert_allclose(np.asarray(pcd.points), xyz.astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.rint(np.asarray(pcd.colors) * 255).astype(np.uint8), rgb)


def test_map_of_a_real_run_round_trips(tmp_path):
    """The maps a synchronous SLAM run builds (flow front end: with track ids) load back identical."""
    from slam.config import load_config
    from slam.runner import run_source
    from slam.sources import open_source
    from slam.synth import generate

    seq = generate("room", tmp_path / "room", frames=25, seed=2, size=(320, 240))
    cfg = load_config(None, ["system.sync=true", "features.type=orb", "tracking.frontend=flow"])
    held = {}
    source = open_source(str(seq), cfg.source)
    camera = source.camera
    run_source(source, cfg, tmp_path / "out", on_frame=lambda system, fd, res: held.setdefault("system", system))
    maps = held["system"].maps
    assert sum(len(m.keyframes) for m in maps) >= 2 and sum(len(m.points) for m in maps) > 50
    path = save_maps(tmp_path / "out" / "map.npz", maps, camera, cfg.to_dict())
    loaded, camera2, config = load_maps(path)
    assert camera2 == camera and config == json.loads(json.dumps(cfg.to_dict()))
    for a, b in zip(maps, loaded, strict=True):
        _assert_map_same(a, b)


def test_points_geometry_matches_per_point_definition():
    """Batched normal/distance update equals the per-point definition (mean unit ray, reference octave)."""
    m = _random_map(seed=3, map_id=0, num_kf=6, num_kp=40, num_points=60, binary=True)
    points = list(m.points.values())
    m.update_points_geometry(points, 1.2, 8)
    checked = 0
    for p in points:
        obs = [(k, i) for k, i in p.observations.items() if k in m.keyframes]
        if not obs:
            continue
        rays = np.array([m.keyframes[k].center - p.position for k, _ in obs])
        mean = (rays / np.linalg.norm(rays, axis=1, keepdims=True)).mean(axis=0)
        np.testing.assert_allclose(p.normal, mean / np.linalg.norm(mean), atol=1e-12)
        k, i = next(((k, i) for k, i in obs if k == p.first_kf_id), obs[0])
        dist = np.linalg.norm(m.keyframes[k].center - p.position)
        expected_max = dist * 1.2 ** int(m.keyframes[k].features.octaves[i]) * 1.2
        assert p.max_distance == pytest.approx(expected_max, rel=1e-12)
        assert p.min_distance == pytest.approx(expected_max / 1.2 ** 7 / 1.44, rel=1e-12)
        checked += 1
    assert checked > 20
