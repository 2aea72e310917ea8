"""Saving maps to one compressed ``.npz`` file and loading them back, field for field.

The file holds, for each :class:`~slam.map.map.Map`, every keyframe (active and culled, with their
features, per-keypoint data and parent links), every map point (with its observations as flat arrays
``point id, keyframe id, keypoint index``) and the id counters, plus the camera and the configuration
(a JSON string). Loading rebuilds the objects exactly -- same ids, values, dtypes and dictionary orders
-- so the covisibility graph and everything derived from the observations recomputes identically.

Layout: a ``format`` / ``version`` header, ``camera_*`` and ``config_json`` entries, and per map ``i`` the
keys ``m{i}_*``. Variable-size arrays (keypoints, descriptors, ...) of all keyframes are concatenated
per field with per-keyframe row counts; rows whose dtype or trailing shape differ from the others go to
separate groups (``..._g0``, ``..._g1``), so no dtype is ever converted. The file is an ordinary numpy
``.npz`` archive (deflate level 1; arrays that do not compress are stored), read with ``allow_pickle=False``:
it contains only plain numeric and unicode arrays.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from slam.camera import Camera
from slam.errors import InputError
from slam.features.base import Features
from slam.map.map import KeyFrame, Map, MapPoint

log = logging.getLogger(__name__)

FORMAT_NAME = "slam-map"
FORMAT_VERSION = 1

# per-keypoint arrays of a keyframe: name in the file -> getter
_KF_FIELDS = (
    "keypoints", "descriptors", "octaves", "sizes", "angles", "responses",
    "kp_undist", "inv_sigma2", "point_ids", "colors", "track_ids",
)


def _kf_field(kf: KeyFrame, name: str) -> np.ndarray | None:
    f = kf.features
    return {
        "keypoints": f.keypoints, "descriptors": f.descriptors, "octaves": f.octaves, "sizes": f.sizes,
        "angles": f.angles, "responses": f.responses, "kp_undist": kf.kp_undist, "inv_sigma2": kf.inv_sigma2,
        "point_ids": kf.point_ids, "colors": kf.colors, "track_ids": kf.track_ids,
    }[name]


# ---------------------------------------------------------------------------------------------- packing
def _pack(out: dict, key: str, items: list[np.ndarray], stacked: bool) -> None:
    """Store ``items`` under ``key``: each item a block of rows (``stacked=False``) or one row (``True``).

    Writes ``key_group (K,)`` (group of each item), ``key_rows (K,)`` (rows of each item, blocks only)
    and ``key_g{j}`` (the items of group ``j`` concatenated / stacked along axis 0).
    """
    items = [np.asarray(a) for a in items]
    if stacked:
        sig = [(a.dtype.str, a.shape) for a in items]
    else:
        sig = [(a.dtype.str, a.shape[1:]) for a in items]
    table: dict = {}
    group = np.fromiter((table.setdefault(s, len(table)) for s in sig), dtype=np.int32, count=len(sig))
    out[f"{key}_group"] = group
    if not stacked:
        out[f"{key}_rows"] = np.fromiter((a.shape[0] for a in items), np.int64, len(items))
    for s, j in table.items():
        members = [a for a, g in zip(items, group.tolist()) if g == j] if len(table) > 1 else items
        out[f"{key}_g{j}"] = np.stack(members) if stacked else np.concatenate(members, axis=0)


def _unpack(data, key: str, count: int, stacked: bool) -> list[np.ndarray]:
    """Inverse of :func:`_pack`: ``count`` arrays, slices of one in-memory copy per group (disjoint rows)."""
    group = np.asarray(data[f"{key}_group"])
    if len(group) != count:
        raise KeyError(f"{key}_group has {len(group)} entries, expected {count}")
    rows = np.asarray(data[f"{key}_rows"]) if not stacked else np.ones(count, np.int64)
    result: list = [None] * count
    for j in np.unique(group).tolist():
        members = np.flatnonzero(group == j)
        arr = np.array(data[f"{key}_g{j}"])  # one copy per group; items are slices of it
        if stacked:
            if len(arr) != len(members):
                raise KeyError(f"{key}_g{j} has {len(arr)} rows, expected {len(members)}")
            for k, i in enumerate(members.tolist()):
                result[i] = arr[k]
        else:
            r = rows[members]
            if int(r.sum()) != len(arr):
                raise KeyError(f"{key}_g{j} has {len(arr)} rows, expected {int(r.sum())}")
            ends = np.cumsum(r).tolist()
            starts = [0] + ends[:-1]
            for i, a, b in zip(members.tolist(), starts, ends):
                result[i] = arr[a:b]
    return result


# ---------------------------------------------------------------------------------------------- save
def _map_arrays(m: Map, prefix: str) -> dict:
    """Every array of map ``m`` under keys ``prefix + name`` (call with ``m.lock`` held)."""
    out: dict = {}
    kfs = list(m.keyframes.values()) + list(m.culled_keyframes)
    n_active = len(m.keyframes)
    ids = np.array([kf.id for kf in kfs], dtype=np.int64)
    known = set(ids.tolist())
    parent_ids = []
    for kf in kfs:
        pid = -1 if kf.parent is None else int(kf.parent.id)
        if pid >= 0 and pid not in known:
            log.warning("map %d: keyframe %d has parent %d outside the map; the link is not saved", m.id, kf.id, pid)
            pid = -1
        parent_ids.append(pid)
    out["meta"] = np.array([m.id, m._next_kf_id, m._next_point_id, n_active], dtype=np.int64)
    out["kf_id"] = ids
    out["kf_frame_index"] = np.array([kf.frame_index for kf in kfs], dtype=np.int64)
    out["kf_timestamp"] = np.array([kf.timestamp for kf in kfs], dtype=np.float64)
    out["kf_T_cw"] = np.array([kf.T_cw for kf in kfs], dtype=np.float64).reshape(-1, 4, 4)
    out["kf_bad"] = np.array([kf.bad for kf in kfs], dtype=bool)
    out["kf_parent_id"] = np.array(parent_ids, dtype=np.int64)
    out["kf_has_T_c_parent"] = np.array([kf.T_c_parent is not None for kf in kfs], dtype=bool)
    out["kf_T_c_parent"] = np.array(
        [kf.T_c_parent if kf.T_c_parent is not None else np.zeros((4, 4)) for kf in kfs], dtype=np.float64
    ).reshape(-1, 4, 4)
    out["kf_binary"] = np.array([kf.features.binary for kf in kfs], dtype=bool)
    out["kf_scale_factor"] = np.array([kf.features.scale_factor for kf in kfs], dtype=np.float64)
    out["kf_has_track_ids"] = np.array([kf.track_ids is not None for kf in kfs], dtype=bool)
    out["kf_rotation_only"] = np.array([kf.rotation_only for kf in kfs], dtype=bool)
    for name in _KF_FIELDS:
        arrays = [_kf_field(kf, name) for kf in kfs]
        if name == "track_ids":
            arrays = [a if a is not None else np.zeros(0, np.int64) for a in arrays]
        _pack(out, f"kf_{name}", arrays, stacked=False)

    pts = list(m.points.values())
    out["pt_id"] = np.array([p.id for p in pts], dtype=np.int64)
    out["pt_first_kf_id"] = np.array([p.first_kf_id for p in pts], dtype=np.int64)
    out["pt_min_distance"] = np.array([p.min_distance for p in pts], dtype=np.float64)
    out["pt_max_distance"] = np.array([p.max_distance for p in pts], dtype=np.float64)
    out["pt_visible"] = np.array([p.visible for p in pts], dtype=np.int64)
    out["pt_found"] = np.array([p.found for p in pts], dtype=np.int64)
    out["pt_bad"] = np.array([p.bad for p in pts], dtype=bool)
    for name in ("position", "descriptor", "color", "normal"):
        _pack(out, f"pt_{name}", [getattr(p, name) for p in pts], stacked=True)
    n_obs = [len(p.observations) for p in pts]
    out["pt_num_obs"] = np.array(n_obs, dtype=np.int64)
    out["obs_point_id"] = np.repeat(out["pt_id"], out["pt_num_obs"])
    out["obs_kf_id"] = np.fromiter((k for p in pts for k in p.observations.keys()), np.int64, sum(n_obs))
    out["obs_kp_index"] = np.fromiter((i for p in pts for i in p.observations.values()), np.int64, sum(n_obs))
    return {prefix + k: v for k, v in out.items()}


def _camera_arrays(camera: Camera) -> dict:
    return {
        "camera_size": np.array([camera.width, camera.height], dtype=np.int64),
        "camera_intrinsics": np.array([camera.fx, camera.fy, camera.cx, camera.cy], dtype=np.float64),
        "camera_dist": np.array(camera.dist, dtype=np.float64).reshape(-1),
        "camera_model": np.array(camera.model),
    }


def save_maps(path: str | Path, maps: list[Map], camera: Camera, config_dict: dict | None = None) -> Path:
    """Write ``maps``, ``camera`` and ``config_dict`` to one compressed ``.npz`` at ``path``, atomically.

    Each map is copied under its own lock, then compressed without holding it. Returns the path.
    Raises InputError when the folder is not writable.
    """
    path = Path(path)
    arrays: dict = {
        "format": np.array(FORMAT_NAME),
        "version": np.array(FORMAT_VERSION, dtype=np.int64),
        "num_maps": np.array(len(maps), dtype=np.int64),
        "config_json": np.array(json.dumps(config_dict, default=_json_default)),
    }
    arrays.update(_camera_arrays(camera))
    for i, m in enumerate(maps):
        with m.lock:
            arrays.update(_map_arrays(m, f"m{i}_"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"{path}: cannot write the map file ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            _write_npz(fh, arrays)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write the map file ({exc.strerror or exc})") from exc
        raise
    log.info("saved %d map(s) to %s", len(maps), path)
    return path


def _write_npz(fh, arrays: dict[str, np.ndarray], compresslevel: int = 1) -> None:
    """An ``.npz`` archive as :func:`numpy.savez_compressed` writes it (``np.load`` reads it), tuned for speed.

    Deflate level 1 (nearly the ratio of the default level on descriptors, at about twice the speed),
    and large arrays that do not compress (ORB descriptors, random bits) are stored, not deflated:
    a 64 KiB sample of each array over 1 MiB decides.
    """
    with zipfile.ZipFile(fh, mode="w", compression=zipfile.ZIP_DEFLATED, compresslevel=compresslevel,
                         allowZip64=True) as zf:
        for name, value in arrays.items():
            value = np.asanyarray(value)
            member: str | zipfile.ZipInfo = name + ".npy"  # deflated with the archive's level
            if value.nbytes > (1 << 20):
                sample = np.ascontiguousarray(value).reshape(-1).view(np.uint8)[: 1 << 16].tobytes()
                if len(zlib.compress(sample, compresslevel)) > 0.9 * len(sample):
                    member = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
                    member.compress_type = zipfile.ZIP_STORED
            with zf.open(member, mode="w", force_zip64=True) as out:
                np.lib.format.write_array(out, value, allow_pickle=False)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)


# ---------------------------------------------------------------------------------------------- load
def _load_map(data, prefix: str) -> Map:
    d = _Prefixed(data, prefix)
    map_id, next_kf, next_pt, n_active = (int(v) for v in d["meta"])
    m = Map(map_id)
    m._next_kf_id, m._next_point_id = next_kf, next_pt

    ids = d["kf_id"].tolist()
    n = len(ids)
    fields = {name: _unpack(d, f"kf_{name}", n, stacked=False) for name in _KF_FIELDS}
    frame_index = d["kf_frame_index"].tolist()
    timestamps = d["kf_timestamp"].tolist()
    T_cw, T_c_parent = d["kf_T_cw"], d["kf_T_c_parent"]
    has_tcp, has_tracks = d["kf_has_T_c_parent"].tolist(), d["kf_has_track_ids"].tolist()
    bad, binary, scale = d["kf_bad"].tolist(), d["kf_binary"].tolist(), d["kf_scale_factor"].tolist()
    rotation_only = d["kf_rotation_only"].tolist() if "kf_rotation_only" in d else [False] * n  # older files
    kfs = []
    for k in range(n):
        features = Features(
            fields["keypoints"][k], fields["descriptors"][k], fields["octaves"][k], fields["sizes"][k],
            fields["angles"][k], fields["responses"][k], bool(binary[k]), float(scale[k]),
        )
        kfs.append(KeyFrame(
            id=int(ids[k]), frame_index=int(frame_index[k]), timestamp=float(timestamps[k]),
            T_cw=T_cw[k].copy(), features=features, kp_undist=fields["kp_undist"][k],
            inv_sigma2=fields["inv_sigma2"][k], point_ids=fields["point_ids"][k], colors=fields["colors"][k],
            bad=bool(bad[k]), T_c_parent=T_c_parent[k].copy() if has_tcp[k] else None,
            track_ids=fields["track_ids"][k] if has_tracks[k] else None, rotation_only=bool(rotation_only[k]),
        ))
    by_id = {kf.id: kf for kf in kfs}
    for kf, pid in zip(kfs, d["kf_parent_id"].tolist()):
        if pid >= 0:
            if pid not in by_id:
                raise KeyError(f"keyframe {kf.id} has parent {pid}, which is not in the map")
            kf.parent = by_id[pid]
    m.keyframes = {kf.id: kf for kf in kfs[:n_active]}
    m.culled_keyframes = kfs[n_active:]

    pids = d["pt_id"]
    P = len(pids)
    vecs = {name: _unpack(d, f"pt_{name}", P, stacked=True) for name in ("position", "descriptor", "color", "normal")}
    num_obs = d["pt_num_obs"]
    if len(num_obs) != P or not np.array_equal(np.repeat(pids, num_obs), d["obs_point_id"]):
        raise KeyError("observation arrays do not match the point list")
    obs_kf, obs_idx = d["obs_kf_id"].tolist(), d["obs_kp_index"].tolist()
    first, mind, maxd = d["pt_first_kf_id"].tolist(), d["pt_min_distance"].tolist(), d["pt_max_distance"].tolist()
    vis, found, pbad = d["pt_visible"].tolist(), d["pt_found"].tolist(), d["pt_bad"].tolist()
    points: dict[int, MapPoint] = {}
    pos = 0
    for k, (pid, c) in enumerate(zip(pids.tolist(), num_obs.tolist())):
        points[pid] = MapPoint(
            id=pid, position=vecs["position"][k], descriptor=vecs["descriptor"][k], first_kf_id=first[k],
            color=vecs["color"][k], observations=dict(zip(obs_kf[pos:pos + c], obs_idx[pos:pos + c])),
            normal=vecs["normal"][k], min_distance=mind[k], max_distance=maxd[k], visible=vis[k],
            found=found[k], bad=bool(pbad[k]),
        )
        pos += c
    m.points = points
    return m


class _Prefixed:
    """Read-only view of the entries of an NpzFile whose keys start with ``prefix``."""

    def __init__(self, data, prefix: str) -> None:
        self._data, self._prefix = data, prefix

    def __getitem__(self, key: str) -> np.ndarray:
        return self._data[self._prefix + key]

    def __contains__(self, key: str) -> bool:
        return self._prefix + key in self._data


def load_maps(path: str | Path) -> tuple[list[Map], Camera, dict | None]:
    """Read a file written by :func:`save_maps`: ``(maps, camera, config_dict)``.

    Raises InputError naming the file when it is missing, not such a map file, of another format
    version, or damaged.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: map file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a saved map (.npz written by `slam`): {exc}") from exc
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: not a saved map (a single .npy array, expected an .npz archive)")
    with data:
        try:
            fmt = str(data["format"]) if "format" in data.files else None
            if fmt != FORMAT_NAME:
                raise InputError(f"{path}: not a saved map (no '{FORMAT_NAME}' format marker)")
            version = int(data["version"])
            if version != FORMAT_VERSION:
                raise InputError(
                    f"{path}: map file format version {version}, this version of slam reads version "
                    f"{FORMAT_VERSION}; save the map again with this version"
                )
            w, h = (int(v) for v in data["camera_size"])
            fx, fy, cx, cy = (float(v) for v in data["camera_intrinsics"])
            dist = tuple(float(v) for v in data["camera_dist"])
            camera = Camera(w, h, fx, fy, cx, cy, dist, str(data["camera_model"]))
            config = json.loads(str(data["config_json"]))
            maps = [_load_map(data, f"m{i}_") for i in range(int(data["num_maps"]))]
        except InputError:
            raise
        except (KeyError, ValueError, TypeError, IndexError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise InputError(f"{path}: damaged map file ({type(exc).__name__}: {exc})") from exc
    log.info("loaded %d map(s) from %s", len(maps), path)
    return maps, camera, config
