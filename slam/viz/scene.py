"""What the viewer draws, as plain arrays (no Qt): display axes, camera frustums, view fitting, colours.

SLAM worlds are usually the first camera's frame (x right, y down, z forward). The viewer orbits around a
z-up axis, so everything is drawn in *display* coordinates ``(x, z, -y)``: the first camera's up is up on
screen and its viewing direction is horizontal.
"""

from __future__ import annotations

import numpy as np

# world (x right, y down, z forward) -> display (x, forward, up); a proper rotation
R_DISPLAY_WORLD = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

COLOURS = {  # RGBA floats
    "background": (0.07, 0.07, 0.09, 1.0),
    "trajectory": (1.0, 0.82, 0.1, 1.0),
    "groundtruth": (1.0, 0.3, 0.85, 1.0),
    "keyframes": (0.35, 0.6, 1.0, 1.0),
    "camera": (0.2, 1.0, 0.35, 1.0),
    "tracked": (0.2, 1.0, 0.35, 1.0),
    "untracked": (1.0, 0.35, 0.3, 1.0),
}
STATE_COLOURS = {"initialising": "#ffd21a", "tracking": "#33ff59", "lost": "#ff5a4d"}


def to_display(xyz: np.ndarray) -> np.ndarray:
    """World points ``(N, 3)`` -> display points ``(N, 3)`` float32."""
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    return (xyz @ R_DISPLAY_WORLD.T).astype(np.float32)


def frustum_segments(T_wc: np.ndarray, scale: float, aspect: float = 4.0 / 3.0) -> np.ndarray:
    """Line segments of camera frustums in world coordinates.

    Args:
        T_wc: ``(4, 4)`` or ``(K, 4, 4)`` camera-to-world poses.
        scale: depth of the drawn image plane, in world units.
        aspect: image width / height.

    Returns:
        ``(K * 16, 3)`` float64 vertex pairs (8 segments per camera: 4 from the centre to the image-plane
        corners, 4 around the image plane) for a ``lines`` plot.
    """
    T = np.asarray(T_wc, dtype=np.float64).reshape(-1, 4, 4)
    if len(T) == 0:
        return np.zeros((0, 3))
    h = 0.5 * scale
    w = h * aspect
    corners = np.array([[-w, -h, scale], [w, -h, scale], [w, h, scale], [-w, h, scale]])
    local = []
    for i in range(4):
        local += [np.zeros(3), corners[i]]
    for i in range(4):
        local += [corners[i], corners[(i + 1) % 4]]
    local = np.array(local)  # (16, 3) in the camera frame
    world = np.einsum("kij,nj->kni", T[:, :3, :3], local) + T[:, None, :3, 3]
    return world.reshape(-1, 3)


def scene_extent(snapshot) -> tuple[np.ndarray, float]:
    """Robust centre ``(3,)`` and radius of what a snapshot shows, in world coordinates.

    Uses the trajectory, keyframes, current camera, map points and ground truth; percentiles keep far
    outlier points (and a badly aligned ground truth) from shrinking the view. Returns ``(zeros, 1.0)`` for an empty snapshot.
    """
    parts = [np.asarray(snapshot.trajectory_xyz, np.float64).reshape(-1, 3)]
    if len(snapshot.keyframe_T_wc):
        parts.append(np.asarray(snapshot.keyframe_T_wc)[:, :3, 3])
    if snapshot.T_wc is not None:
        parts.append(np.asarray(snapshot.T_wc)[None, :3, 3])
    cams = np.concatenate(parts) if parts else np.zeros((0, 3))
    pts = np.asarray(snapshot.points_xyz).reshape(-1, 3)
    if len(pts) > 20000:  # percentiles of an even subsample are as good and much cheaper
        pts = pts[:: len(pts) // 20000 + 1]
    pts = pts.astype(np.float64)
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if snapshot.gt_xyz is not None and len(snapshot.gt_xyz):
        gt = np.asarray(snapshot.gt_xyz, np.float64).reshape(-1, 3)
        pts = np.concatenate([pts, gt[np.all(np.isfinite(gt), axis=1)]])
    allp = np.concatenate([cams, pts]) if len(pts) else cams
    if len(allp) == 0:
        return np.zeros(3), 1.0
    lo = np.percentile(allp, 5, axis=0) if len(allp) > 20 else allp.min(axis=0)
    hi = np.percentile(allp, 95, axis=0) if len(allp) > 20 else allp.max(axis=0)
    if len(cams):  # always keep the whole camera path in view
        lo = np.minimum(lo, cams.min(axis=0))
        hi = np.maximum(hi, cams.max(axis=0))
    centre = 0.5 * (lo + hi)
    radius = float(0.5 * np.linalg.norm(hi - lo))
    return centre, radius if radius > 1e-9 else 1.0


def frustum_scale(snapshot, radius: float | None = None) -> float:
    """A frustum depth that reads well: a fraction of the scene (``radius``: its :func:`scene_extent`),
    at most a small fraction of the path length."""
    if radius is None:
        _, radius = scene_extent(snapshot)
    scale = 0.06 * radius
    traj = np.asarray(snapshot.trajectory_xyz).reshape(-1, 3)
    if len(traj) >= 2:
        length = float(np.linalg.norm(np.diff(traj, axis=0), axis=1).sum())
        if length > 0:
            scale = min(scale, 0.08 * length) if scale > 0 else 0.08 * length
    return max(scale, 1e-6)


def point_colours(rgb: np.ndarray) -> np.ndarray:
    """``(N, 3)`` uint8 RGB -> ``(N, 4)`` float32 RGBA, lifted so that dark (endoscopy) points stay visible."""
    c = np.asarray(rgb, dtype=np.float32).reshape(-1, 3) / 255.0
    c = 0.12 + 0.88 * np.power(c, 0.7)
    return np.concatenate([c, np.ones((len(c), 1), np.float32)], axis=1).astype(np.float32)


def panel_image(image: np.ndarray | None, mask: np.ndarray | None) -> np.ndarray | None:
    """The 2D panel's picture: ``(H, W, 3)`` uint8 RGB of the BGR/grey frame, unusable pixels dimmed blue."""
    if image is None:
        return None
    img = np.asarray(image)
    if img.ndim == 2:
        rgb = np.repeat(img[:, :, None], 3, axis=2)
    else:
        rgb = img[:, :, 2::-1]
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if mask is not None and np.asarray(mask).shape[:2] == rgb.shape[:2]:
        bad = np.asarray(mask) == 0
        if bad.any():
            out = rgb.astype(np.float32)
            out[bad] = 0.35 * out[bad] + np.array([0.0, 10.0, 60.0], np.float32)
            rgb = np.clip(out, 0, 255).astype(np.uint8)
    return rgb


def status_text(snapshot, paused: bool = False) -> str:
    """One-line HTML status: frame, fps, tracked points, keyframes, map points, state."""
    colour = STATE_COLOURS.get(snapshot.state, "#dddddd")
    text = (
        f"frame <b>{snapshot.frame_index}</b> &nbsp; t {snapshot.timestamp:.2f} s &nbsp; "
        f"<b>{snapshot.fps:.1f}</b> fps &nbsp; tracked <b>{snapshot.num_tracked}</b> &nbsp; "
        f"keyframes <b>{snapshot.num_keyframes}</b> &nbsp; map points <b>{snapshot.num_map_points}</b> &nbsp; "
        f"<span style='color:{colour}'><b>{snapshot.state.upper()}</b></span>"
    )
    if paused:
        text += " &nbsp; <span style='color:#ffa500'><b>PAUSED</b></span>"
    return text


def legend_html(has_gt: bool) -> str:
    """Colour key of the 3D view."""
    def swatch(name: str, label: str) -> str:
        r, g, b, _ = COLOURS[name]
        return f"<span style='color:rgb({int(r * 255)},{int(g * 255)},{int(b * 255)})'>&#9632;</span> {label}"

    items = [swatch("trajectory", "trajectory"), swatch("keyframes", "keyframes"), swatch("camera", "camera")]
    if has_gt:
        items.append(swatch("groundtruth", "ground truth (Sim3-aligned)"))
    return " &nbsp; ".join(items)
