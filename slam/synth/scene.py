"""Scene geometry: textured triangle meshes of a bending, folded tube and of a furnished box room.

A :class:`Mesh` has per-vertex positions, normals and texture coordinates; every triangle has a material
(one :class:`~slam.synth.texture.MipTexture` with the world size of its texel). Texture coordinates are in
level-0 texels of that material (column, row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from slam.geometry.se3 import so3_exp
from slam.synth.texture import MipTexture, mucosa_texture, room_texture


@dataclass
class Material:
    texture: MipTexture
    texel: float  # world size of one level-0 texel


@dataclass
class Mesh:
    """Triangle mesh. vertices, normals ``(V, 3)`` float64; uv ``(V, 2)`` float64 texels;
    triangles ``(T, 3)`` int64; tri_material ``(T,)`` int32 index into ``materials``."""

    vertices: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    triangles: np.ndarray
    tri_material: np.ndarray
    materials: list[Material]
    smooth: bool = True  # interpolate vertex normals (False: each triangle's normal is its first vertex's)


# ---------------------------------------------------------------------------------------------- tube
@dataclass
class Centerline:
    """A smooth space curve sampled by arc length with parallel-transported frames.

    s ``(M,)`` arc lengths; points, tangent, normal, binormal ``(M, 3)``.
    """

    s: np.ndarray
    points: np.ndarray
    tangent: np.ndarray
    normal: np.ndarray
    binormal: np.ndarray

    def at(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Point, tangent, normal, binormal ``(N, 3)`` at arc lengths ``s (N,)`` (linear interpolation)."""
        s = np.clip(np.atleast_1d(np.asarray(s, np.float64)), self.s[0], self.s[-1])

        def interp(a: np.ndarray) -> np.ndarray:
            return np.stack([np.interp(s, self.s, a[:, k]) for k in range(3)], axis=1)

        p = interp(self.points)
        t = interp(self.tangent)
        t /= np.linalg.norm(t, axis=1, keepdims=True)
        n = interp(self.normal)
        n -= (n * t).sum(1, keepdims=True) * t
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return p, t, n, np.cross(t, n)


def make_centerline(rng: np.random.Generator, s0: float, s1: float, radius: float, bend: float,
                    ds: float = 0.05) -> Centerline:
    """A random smooth centreline over arc lengths ``[s0, s1]`` with curvature at most ``0.3 / radius``."""
    from scipy.interpolate import CubicSpline

    n = max(2, int(math.ceil((s1 - s0) / ds)) + 1)
    s = np.linspace(s0, s1, n)
    kmax = bend * 0.3 / radius
    knots = np.arange(s0 - 6 * radius, s1 + 6 * radius, 3.0 * radius)
    if len(knots) < 4:
        knots = np.linspace(s0 - 6 * radius, s1 + 6 * radius, 4)
    curv = [CubicSpline(knots, rng.normal(0.0, 0.9, len(knots)))(s) for _ in range(2)]
    k1 = kmax * np.tanh(curv[0])
    k2 = kmax * np.tanh(curv[1])
    T = np.zeros((n, 3)); N = np.zeros((n, 3)); B = np.zeros((n, 3)); P = np.zeros((n, 3))
    T[0], N[0], B[0] = [0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    h = s[1] - s[0] if n > 1 else ds
    for i in range(1, n):
        R = so3_exp(h * (k1[i - 1] * B[i - 1] - k2[i - 1] * N[i - 1]))
        T[i], N[i], B[i] = R @ T[i - 1], R @ N[i - 1], R @ B[i - 1]
        P[i] = P[i - 1] + 0.5 * h * (T[i - 1] + T[i])
    return Centerline(s, P, T, N, B)


@dataclass
class TubeShape:
    """Radius ``r(s, phi)`` of the tube wall: lobes, low-frequency bumps and haustral folds."""

    radius: float
    fold_s: np.ndarray
    fold_depth: np.ndarray
    fold_width: np.ndarray
    fold_phi: np.ndarray
    fold_sharp: np.ndarray
    bump_amp: np.ndarray
    bump_freq: np.ndarray
    bump_m: np.ndarray
    bump_phase: np.ndarray
    lobe_amp: float
    lobe_twist: float

    def grid(self, s: np.ndarray, phi: np.ndarray) -> np.ndarray:
        """Radius ``(S, M)`` at increasing arc lengths ``s (S,)`` and angles ``phi (M,)``."""
        s = np.asarray(s, np.float64).reshape(-1)
        phi = np.asarray(phi, np.float64).reshape(-1)
        S, P = s[:, None], phi[None, :]
        r = 1.0 + self.lobe_amp * np.cos(3.0 * (P - self.lobe_twist * S))
        for a, f, m, p in zip(self.bump_amp, self.bump_freq, self.bump_m, self.bump_phase):
            r = r + a * np.cos(m * P + f * S + p)
        r = r * self.radius
        order = np.argsort(s, kind="stable")
        s_sorted = s[order]
        for k in range(len(self.fold_s)):
            lo, hi = np.searchsorted(s_sorted, [self.fold_s[k] - 4.5 * self.fold_width[k],
                                                self.fold_s[k] + 4.5 * self.fold_width[k]])
            if hi <= lo:
                continue
            rows = order[lo:hi]
            along = np.exp(-0.5 * ((s[rows] - self.fold_s[k]) / self.fold_width[k]) ** 2)[:, None]
            around = (0.5 + 0.5 * np.cos(P - self.fold_phi[k])) ** self.fold_sharp[k]
            r[rows] -= self.radius * self.fold_depth[k] * along * (0.35 + 0.65 * around)
        return r


def make_tube_shape(rng: np.random.Generator, s0: float, s1: float, radius: float, fold_depth: float,
                    fold_spacing: float) -> TubeShape:
    spacing = fold_spacing * radius
    fold_s = []
    s = s0 + rng.uniform(0.2, 1.0) * spacing
    while s < s1:
        fold_s.append(s)
        s += spacing * rng.uniform(0.6, 1.4)
    k = len(fold_s)
    # low-frequency bulges plus small bumps that break up the specular highlights
    m = np.concatenate([rng.integers(1, 5, 6), rng.integers(5, 25, 24)]).astype(np.float64)
    freq = np.concatenate([rng.uniform(0.3, 2.0, 6), rng.uniform(2.0, 12.0, 24)]) / radius
    amp = np.concatenate([rng.uniform(0.005, 0.02, 6), rng.uniform(0.001, 0.004, 24)])
    return TubeShape(
        radius=radius,
        fold_s=np.asarray(fold_s),
        fold_depth=fold_depth * rng.uniform(0.5, 1.0, k),
        fold_width=radius * rng.uniform(0.06, 0.14, k),
        fold_phi=rng.uniform(0, 2 * math.pi, k),
        fold_sharp=rng.uniform(0.5, 3.0, k),
        bump_amp=amp,
        bump_freq=freq,
        bump_m=m,
        bump_phase=rng.uniform(0, 2 * math.pi, len(m)),
        lobe_amp=rng.uniform(0.02, 0.07),
        lobe_twist=rng.uniform(-0.3, 0.3) / radius,
    )


def build_tube(rng: np.random.Generator, centerline: Centerline, shape: TubeShape, texel: float,
               contrast: float, vessel_density: float, hue: float, segments: int = 192) -> Mesh:
    """Mesh of the tube wall along the whole centreline, with its mucosa texture.

    Texture columns run around the tube (periodic), rows along it; ``texel`` is the texel's world size.
    """
    radius = shape.radius
    s0, s1 = float(centerline.s[0]), float(centerline.s[-1])
    ds = min(0.03 * radius, float(shape.fold_width.min()) / 3 if len(shape.fold_width) else 0.03 * radius)
    s = np.linspace(s0, s1, max(2, int(math.ceil((s1 - s0) / ds)) + 1))
    phi = np.linspace(0.0, 2 * math.pi, segments + 1)
    p, _, n, b = centerline.at(s)
    r = shape.grid(s, phi)  # (S, M+1)
    cos, sin = np.cos(phi)[None, :, None], np.sin(phi)[None, :, None]
    radial = cos * n[:, None, :] + sin * b[:, None, :]
    grid = p[:, None, :] + r[..., None] * radial  # (S, M+1, 3)
    # normals from the grid's tangents (periodic around)
    d_s = np.gradient(grid, s, axis=0)
    ring = grid[:, :-1]
    d_phi = np.roll(ring, -1, axis=1) - np.roll(ring, 1, axis=1)
    d_phi = np.concatenate([d_phi, d_phi[:, :1]], axis=1)
    normals = np.cross(d_s, d_phi)
    normals /= np.linalg.norm(normals, axis=2, keepdims=True)
    inward = (normals * (p[:, None, :] - grid)).sum(axis=2) < 0
    normals[inward] *= -1.0

    cols = int(round(2 * math.pi * radius / texel / 32.0)) * 32
    cols = max(cols, 64)
    rows = int(math.ceil((s1 - s0) / texel / 32.0)) * 32
    image = mucosa_texture(rng, (rows, cols), texel, contrast, vessel_density, hue)
    uv = np.stack(np.broadcast_arrays(phi[None, :] / (2 * math.pi) * cols, (s[:, None] - s0) / texel), axis=-1)

    S, M1 = grid.shape[:2]
    i = np.arange(S - 1)[:, None] * M1
    j = np.arange(M1 - 1)[None, :]
    a, bb, c, d = i + j, i + j + 1, i + j + M1, i + j + M1 + 1
    tris = np.concatenate([np.stack([a, c, bb], -1).reshape(-1, 3), np.stack([bb, c, d], -1).reshape(-1, 3)])
    return Mesh(
        vertices=grid.reshape(-1, 3),
        normals=normals.reshape(-1, 3),
        uv=uv.reshape(-1, 2).astype(np.float64),
        triangles=tris.astype(np.int64),
        tri_material=np.zeros(len(tris), np.int32),
        materials=[Material(MipTexture(image, wrap=True), texel)],
    )


# ---------------------------------------------------------------------------------------------- room
@dataclass
class RoomLayout:
    """Axis-aligned room ``[0, size]`` (x right, y up, z forward) and boxes ``(lo, hi)`` inside it."""

    size: np.ndarray
    boxes: list[tuple[np.ndarray, np.ndarray]]


def make_room_layout(rng: np.random.Generator, vary: bool) -> RoomLayout:
    size = np.array([rng.uniform(6.0, 9.0), rng.uniform(2.7, 3.3), rng.uniform(5.0, 7.5)]) if vary \
        else np.array([7.5, 3.0, 6.0])
    boxes = []
    for _ in range(int(rng.integers(4, 8))):
        w, h, d = rng.uniform(0.4, 1.4), rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.0)
        side = int(rng.integers(0, 4))
        if side in (0, 1):  # against a wall at x = 0 or x = size
            x0 = 0.05 if side == 0 else size[0] - 0.05 - d
            z0 = rng.uniform(0.2, size[2] - w - 0.2)
            lo, hi = np.array([x0, 0.0, z0]), np.array([x0 + d, h, z0 + w])
        else:
            z0 = 0.05 if side == 2 else size[2] - 0.05 - d
            x0 = rng.uniform(0.2, size[0] - w - 0.2)
            lo, hi = np.array([x0, 0.0, z0]), np.array([x0 + w, h, z0 + d])
        boxes.append((lo, hi))
    return RoomLayout(size, boxes)


def _quad(corner: np.ndarray, ax_u: np.ndarray, ax_v: np.ndarray, normal: np.ndarray, texel: float):
    """Two triangles spanning ``corner + a*ax_u + b*ax_v``; texture columns along u, rows along v."""
    verts = np.array([corner, corner + ax_u, corner + ax_v, corner + ax_u + ax_v])
    lu, lv = np.linalg.norm(ax_u), np.linalg.norm(ax_v)
    uv = np.array([[0, 0], [lu, 0], [0, lv], [lu, lv]]) / texel
    tris = np.array([[0, 1, 2], [1, 3, 2]])
    if np.dot(np.cross(ax_u, ax_v), normal) < 0:
        tris = tris[:, ::-1]
    return verts, uv, tris, (int(math.ceil(lv / texel)) + 2, int(math.ceil(lu / texel)) + 2)


def build_room(rng: np.random.Generator, layout: RoomLayout, texel: float) -> Mesh:
    """Mesh of the room's six inner faces and its boxes' outer faces, each face with its own texture."""
    X, Y, Z = layout.size
    ex, ey, ez = np.eye(3)
    faces = [  # corner, ax_u, ax_v, inward normal, kind
        (np.zeros(3), ez * Z, ey * Y, ex, "wall"),
        (np.array([X, 0, 0]), ez * Z, ey * Y, -ex, "wall"),
        (np.zeros(3), ex * X, ey * Y, ez, "wall"),
        (np.array([0, 0, Z]), ex * X, ey * Y, -ez, "wall"),
        (np.zeros(3), ex * X, ez * Z, ey, "floor"),
        (np.array([0, Y, 0]), ex * X, ez * Z, -ey, "ceiling"),
    ]
    for lo, hi in layout.boxes:
        d = hi - lo
        faces += [
            (lo, ez * d[2], ey * d[1], -ex, "wood"),
            (lo + ex * d[0], ez * d[2], ey * d[1], ex, "wood"),
            (lo, ex * d[0], ey * d[1], -ez, "wood"),
            (lo + ez * d[2], ex * d[0], ey * d[1], ez, "wood"),
            (lo + ey * d[1], ex * d[0], ez * d[2], ey, "wood"),
        ]
    verts, normals, uvs, tris, mats, materials = [], [], [], [], [], []
    base = 0
    for k, (corner, au, av, normal, kind) in enumerate(faces):
        v, uv, t, shape = _quad(corner, au, av, normal, texel)
        image = room_texture(rng, shape, texel, kind)
        materials.append(Material(MipTexture(image, wrap=False), texel))
        verts.append(v); uvs.append(uv); normals.append(np.repeat(normal[None], 4, axis=0))
        tris.append(t + base); mats.append(np.full(len(t), k, np.int32))
        base += 4
    return Mesh(
        vertices=np.concatenate(verts), normals=np.concatenate(normals).astype(np.float64),
        uv=np.concatenate(uvs).astype(np.float64), triangles=np.concatenate(tris).astype(np.int64),
        tri_material=np.concatenate(mats), materials=materials, smooth=False,
    )
