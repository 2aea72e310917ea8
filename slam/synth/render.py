"""Headless ray-cast rendering of a textured mesh through a :class:`slam.camera.Camera`.

Every usable pixel's ray is the exact bearing ``Camera.unproject((u, v))`` of its centre (integer
coordinates), so distorted and fisheye images agree exactly with the camera model written to ``calib.txt``.
Rays are cast with open3d's ``RaycastingScene`` (Embree, CPU, no display). Shading:

* ``headlight`` (endoscopy): a point light at the camera with inverse-square falloff, Lambertian
  diffuse plus a white Phong specular lobe weighted by the texture's wetness channel.
* ``room``: fixed ceiling lights and ambient light, Lambertian only (brightness constant across views).

Output radiance is linear, ``(H, W, 3)`` float32 BGR, before vignetting, noise and tone mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from slam.camera import Camera
from slam.errors import ConfigError, DependencyError
from slam.synth.presets import SynthOptions
from slam.synth.scene import Mesh


def make_camera(opts: SynthOptions) -> Camera:
    """The synthetic camera for the options' lens, field of view and image size (asymmetric on purpose:
    fy != fx and the principal point is off-centre, so transposed conventions cannot pass tests)."""
    W, H = opts.width, opts.height
    cx = (W - 1) / 2.0 + 0.011 * W
    cy = (H - 1) / 2.0 - 0.009 * H
    half = math.radians(opts.fov_deg) / 2.0
    if opts.lens == "fisheye":
        if opts.distortion <= 0:
            raise ConfigError("synth option distortion must be > 0 for the fisheye lens (Kannala-Brandt k1..k4)")
        k = tuple(opts.distortion * c for c in (-0.012, 0.0025, -0.0004, 0.00002))
        t2 = half * half
        theta_d = half * (1 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))
        f = fov_radius_px(opts) / theta_d
        return Camera(W, H, f, f * 0.997, cx, cy, k, "fisheye")
    fx = (W / 2.0) / math.tan(half)
    dist: tuple[float, ...] = ()
    if opts.lens == "radtan" and opts.distortion > 0:
        dist = tuple(opts.distortion * c for c in (-0.28, 0.09, 0.0012, -0.0009, -0.012))
    return Camera(W, H, fx, fx * 0.997, cx, cy, dist, "pinhole")


def fov_radius_px(opts: SynthOptions) -> float:
    """Radius in pixels of the circular field of view."""
    return opts.fov_radius * min(opts.width, opts.height) / 2.0


def pixel_rays(camera: Camera, opts: SynthOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bearings ``(H, W, 3)``, usable-pixel mask ``(H, W)`` bool and pixel angular size ``(H, W)`` (rad).

    A pixel is usable when it lies in the circular field of view (if any) and the lens model maps its ray
    back onto it (projection round trip within 0.01 px).
    """
    H, W = camera.height, camera.width
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    uv = np.stack([u.ravel(), v.ravel()], axis=1)
    rays = camera.unproject(uv)
    ok = np.isfinite(rays).all(axis=1)
    back = np.full_like(uv, np.nan)
    back[ok] = camera.project(rays[ok])
    with np.errstate(invalid="ignore"):
        ok &= np.linalg.norm(back - uv, axis=1) < 0.01
    if opts.circular_fov:
        ok &= np.hypot(uv[:, 0] - camera.cx, uv[:, 1] - camera.cy) <= fov_radius_px(opts)
    rays[~ok] = [0.0, 0.0, 1.0]
    rays = rays.reshape(H, W, 3)
    du = np.linalg.norm(np.gradient(rays, axis=1), axis=2)
    dv = np.linalg.norm(np.gradient(rays, axis=0), axis=2)
    angle = np.sqrt(np.maximum(du * dv, 1e-12))
    return rays, ok.reshape(H, W), angle


@dataclass
class Lighting:
    """``kind``: ``"headlight"`` or ``"room"``. Headlight: ``intensity`` at the camera, ``soft`` (distance
    added in quadrature to avoid blow-up), ``specular``/``shininess``. Room: ``lights`` ``(K, 3)`` world
    positions, ``intensity`` each, ``falloff`` distance, ``ambient``."""

    kind: str
    intensity: float
    ambient: float = 0.0
    soft: float = 0.0
    specular: float = 0.0
    shininess: float = 40.0
    lights: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    falloff: float = 3.0


@dataclass
class RenderResult:
    """radiance ``(H, W, 3)`` float32 linear BGR; depth ``(H, W)`` float32 camera z (0 = no hit);
    points_w ``(P, 3)`` world hit points of the usable pixels that hit (``hit`` ``(H, W)`` bool marks them)."""

    radiance: np.ndarray
    depth: np.ndarray
    points_w: np.ndarray
    hit: np.ndarray


class Renderer:
    """Ray-casts ``mesh`` through ``camera`` for any camera-to-world pose."""

    def __init__(self, mesh: Mesh, camera: Camera, opts: SynthOptions, lighting: Lighting) -> None:
        try:
            import open3d as o3d
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DependencyError(
                "slam synth renders with open3d's RaycastingScene; install it with `pip install open3d` "
                "(or `pip install -e .[render]`)"
            ) from exc
        self._o3d = o3d
        self.mesh = mesh
        self.camera = camera
        self.lighting = lighting
        rays, self.usable, angle = pixel_rays(camera, opts)
        self._index = np.flatnonzero(self.usable.ravel())
        self._bearings = rays.reshape(-1, 3)[self._index].astype(np.float32)
        self._angle = angle.ravel()[self._index].astype(np.float32)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(mesh.vertices.astype(np.float32)),
            o3d.core.Tensor(mesh.triangles.astype(np.uint32)),
        )
        self._texels = np.array([m.texel for m in mesh.materials], np.float32)
        self._uv = mesh.uv.astype(np.float32)
        self._normals = mesh.normals.astype(np.float32)
        self._flat_normals = None
        if not mesh.smooth:
            n = mesh.normals[mesh.triangles[:, 0]]
            self._flat_normals = (n / np.linalg.norm(n, axis=1, keepdims=True)).astype(np.float32)

    def render(self, T_wc: np.ndarray) -> RenderResult:
        """Render at the camera-to-world pose ``T_wc (4, 4)``."""
        H, W = self.camera.height, self.camera.width
        R = np.asarray(T_wc[:3, :3], np.float32)
        origin = np.asarray(T_wc[:3, 3], np.float32)
        b = self._bearings
        rays = np.empty((len(b), 6), np.float32)
        rays[:, :3] = origin
        rays[:, 3:] = b[:, :1] * R[:, 0] + b[:, 1:2] * R[:, 1] + b[:, 2:3] * R[:, 2]
        ans = self._scene.cast_rays(self._o3d.core.Tensor(rays))
        t_hit = ans["t_hit"].numpy()
        ok = np.isfinite(t_hit)
        prim = ans["primitive_ids"].numpy()[ok]
        bary = ans["primitive_uvs"].numpy()[ok]
        t = t_hit[ok]
        d = rays[ok, 3:]
        points = origin + t[:, None] * d
        w1, w2 = bary[:, :1], bary[:, 1:2]
        w0 = 1.0 - w1 - w2
        tri = self.mesh.triangles[prim]
        i0, i1, i2 = tri[:, 0], tri[:, 1], tri[:, 2]
        if self._flat_normals is not None:
            normal = self._flat_normals[prim]
        else:
            n = self._normals
            normal = w0 * n[i0] + w1 * n[i1] + w2 * n[i2]
            normal /= np.linalg.norm(normal, axis=1, keepdims=True)
        cos = np.abs((normal * d).sum(axis=1))
        uvs = self._uv
        uv = w0 * uvs[i0] + w1 * uvs[i1] + w2 * uvs[i2]
        material = self.mesh.tri_material[prim]
        texel = self._texels[material]
        footprint = t * self._angle[ok] / (texel * np.sqrt(np.maximum(cos, 0.05)))
        lod = np.log2(np.maximum(footprint, 1.0))
        u_tex = np.ascontiguousarray(uv[:, 0])
        v_tex = np.ascontiguousarray(uv[:, 1])
        if len(self.mesh.materials) == 1:
            albedo = self.mesh.materials[0].texture.sample(u_tex, v_tex, lod)
        else:
            albedo = np.zeros((len(t), 4), np.float32)
            order = np.argsort(material, kind="stable")
            bounds = np.searchsorted(material[order], np.arange(len(self.mesh.materials) + 1))
            for m in range(len(self.mesh.materials)):
                idx = order[bounds[m]:bounds[m + 1]]
                if len(idx):
                    albedo[idx] = self.mesh.materials[m].texture.sample(u_tex[idx], v_tex[idx], lod[idx])

        radiance = self._shade(albedo, normal, cos, t, points)
        out = np.zeros((H * W, 3), np.float32)
        depth = np.zeros(H * W, np.float32)
        hit = np.zeros(H * W, bool)
        pix = self._index[ok]
        out[pix] = radiance
        depth[pix] = t * b[ok, 2]
        hit[pix] = True
        return RenderResult(out.reshape(H, W, 3), depth.reshape(H, W), points.astype(np.float64), hit.reshape(H, W))

    def _shade(self, albedo: np.ndarray, normal: np.ndarray, cos: np.ndarray, t: np.ndarray,
               points: np.ndarray) -> np.ndarray:
        """Linear BGR radiance ``(N, 3)``."""
        lit = self.lighting
        rgb = albedo[:, :3]
        if lit.kind == "headlight":
            irradiance = np.float32(lit.intensity) / (t * t + np.float32(lit.soft * lit.soft))
            diffuse = rgb * (cos * irradiance + np.float32(lit.ambient))[:, None]
            if lit.specular > 0:
                lobe = np.power(np.clip(cos, 0, 1), np.float32(lit.shininess))
                spec = lit.specular * albedo[:, 3] ** 2 * lobe * irradiance
                diffuse += spec[:, None].astype(np.float32)
            return diffuse
        irradiance = np.full(len(t), lit.ambient, np.float32)
        for light in lit.lights.astype(np.float32):
            to_light = light - points
            dist = np.linalg.norm(to_light, axis=1)
            lam = np.clip((normal * to_light).sum(axis=1) / dist, 0.0, None)
            irradiance += np.float32(lit.intensity) * lam / (1.0 + (dist / np.float32(lit.falloff)) ** 2)
        return rgb * irradiance[:, None]
