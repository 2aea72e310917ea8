"""Procedural textures and their mip-mapped lookup.

Textures are ``(rows, cols, 4)`` uint8 images with channels ``B, G, R, wet`` holding linear albedo (0..1 as
0..255) and a specular "wetness" weight. They are built from band-limited spectral noise (periodic in both
axes, so a tube's texture has no seam around its circumference), random branching vessels, and for rooms
posters, tiles and strokes drawn with OpenCV. :class:`MipTexture` samples them with trilinear filtering
(bilinear ``cv2.remap`` on a pyramid) so minified far-away surfaces do not alias.
"""

from __future__ import annotations

import math

import numpy as np

_REMAP_COLS = 1024  # cv2.remap needs both map dimensions below SHRT_MAX


def spectral_noise(
    rng: np.random.Generator, shape: tuple[int, int], wavelengths: tuple[float, float], beta: float = 2.0
) -> np.ndarray:
    """Zero-mean, unit-std ``(rows, cols)`` float32 noise, periodic in both axes.

    The power spectrum falls as ``f**-beta`` between the two wavelengths (in texels, smooth band edges).
    """
    import scipy.fft as sfft

    rows, cols = shape
    lo, hi = sorted(float(w) for w in wavelengths)
    lo = max(lo, 2.0)
    fy = sfft.fftfreq(rows).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(cols).astype(np.float32)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    f_low, f_high = 1.0 / hi, 1.0 / lo
    amp = f ** (-beta / 2.0)
    amp *= 1.0 - np.exp(-((f / f_low) ** 2))  # high-pass above 1/hi
    amp *= np.exp(-((f / f_high) ** 2))  # low-pass below 1/lo
    amp[0, 0] = 0.0
    spec = (rng.standard_normal(amp.shape, dtype=np.float32) + 1j * rng.standard_normal(amp.shape, dtype=np.float32))
    spec *= amp
    out = sfft.irfft2(spec, s=(rows, cols)).astype(np.float32)
    std = float(out.std())
    return out / std if std > 0 else out


def draw_vessels(
    rng: np.random.Generator, shape: tuple[int, int], texel: float, count: int, wrap_cols: bool = True
) -> np.ndarray:
    """``(rows, cols)`` float32 in 0..1: random branching vessel curves (anti-aliased, wrapped in columns).

    ``texel`` is the world size of one texel; vessels are 0.5-3 units long and 0.006-0.03 units wide.
    """
    import cv2

    rows, cols = shape
    canvas = np.zeros((rows, cols), np.uint8)
    step = max(1.5, 0.02 / texel)  # texels per polyline step

    def grow(x: float, y: float, heading: float, length: float, width: float, strength: float, level: int) -> None:
        n = max(2, int(length / (step * texel)))
        pts = [(x, y)]
        turn = 0.0
        for _ in range(n):
            turn = 0.8 * turn + rng.normal(0.0, 0.12)
            heading += turn
            x += step * math.cos(heading)
            y += step * math.sin(heading)
            pts.append((x, y))
            if level < 3 and rng.random() < 0.035:
                side = 1.0 if rng.random() < 0.5 else -1.0
                grow(x, y, heading + side * rng.uniform(0.4, 1.1), length * rng.uniform(0.3, 0.6),
                     width * 0.65, strength * 0.85, level + 1)
        poly = np.asarray(pts, np.float64)
        thick_px = width / texel
        thickness = max(1, int(round(thick_px)))
        value = int(round(255 * strength * min(1.0, thick_px)))
        shifts = (-cols, 0, cols) if wrap_cols else (0,)
        for dx in shifts:
            shifted = np.round((poly + [dx, 0.0]) * 16).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(canvas, [shifted], False, value, thickness, cv2.LINE_AA, shift=4)

    for _ in range(count):
        grow(rng.uniform(0, cols), rng.uniform(0, rows), rng.uniform(0, 2 * math.pi),
             rng.uniform(0.5, 3.0), rng.uniform(0.012, 0.03), rng.uniform(0.5, 1.0), 0)
    out = canvas.astype(np.float32) / 255.0
    return cv2.GaussianBlur(out, (0, 0), max(0.5, 0.004 / texel))


def mucosa_texture(
    rng: np.random.Generator,
    shape: tuple[int, int],
    texel: float,
    contrast: float = 1.0,
    vessel_density: float = 1.0,
    hue: float = 0.0,
) -> np.ndarray:
    """Endoscopy-like mucosa: ``(rows, cols, 4)`` uint8 (B, G, R albedo, wetness), periodic in columns.

    Pinkish-orange albedo with blotches (0.3-3 units), fine pits and grain (2 texels - 0.08 units), and dark
    red vessels. ``hue`` in -1..1 shifts the base colour between paler/yellower and redder.
    """
    rows, cols = shape
    coarse = spectral_noise(rng, shape, (0.3 / texel, 3.0 / texel), beta=2.0)
    medium = spectral_noise(rng, shape, (0.04 / texel, 0.3 / texel), beta=1.5)
    fine = spectral_noise(rng, shape, (2.0, 0.06 / texel), beta=0.8)
    tint = spectral_noise(rng, shape, (0.5 / texel, 4.0 / texel), beta=2.0)
    pits = np.tanh(1.6 * fine)
    shade = 1.0 + contrast * (0.20 * np.tanh(coarse) + 0.12 * medium + 0.10 * pits)
    base = np.array([0.08 + 0.03 * hue, 0.13 + 0.04 * hue, 0.50 - 0.06 * hue], np.float32)  # B, G, R linear
    albedo = base[None, None, :] * shade[..., None]
    albedo[..., 2] *= 1.0 + 0.10 * contrast * tint
    albedo[..., 1] *= 1.0 - 0.12 * contrast * tint + 0.08 * contrast * medium
    area = rows * cols * texel * texel
    n_vessels = int(round(vessel_density * area / 1.5))
    if n_vessels > 0:
        vessels = draw_vessels(rng, shape, texel, n_vessels) * min(1.0, 0.5 + 0.5 * contrast)
        albedo *= 1.0 - vessels[..., None] * np.array([0.5, 0.65, 0.45], np.float32)[None, None, :]
    wet = 0.5 + 0.5 * np.tanh(1.5 * spectral_noise(rng, shape, (0.05 / texel, 0.6 / texel), beta=1.5) + 0.3 * medium)
    out = np.empty((rows, cols, 4), np.uint8)
    out[..., :3] = np.clip(albedo * 255.0 + 0.5, 0, 255).astype(np.uint8)
    out[..., 3] = np.clip(wet * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def room_texture(rng: np.random.Generator, shape: tuple[int, int], texel: float, kind: str) -> np.ndarray:
    """A room surface: ``(rows, cols, 4)`` uint8 (B, G, R albedo, 0).

    ``kind``: ``"wall"`` (paint with posters and scribbles), ``"floor"`` (tiles or planks), ``"ceiling"``
    (panels) or ``"wood"`` (furniture).
    """
    import cv2

    rows, cols = shape
    grain = spectral_noise(rng, shape, (2.0, 0.05 / texel), beta=0.7)
    blotch = spectral_noise(rng, shape, (0.2 / texel, 2.0 / texel), beta=2.0)
    color = rng.uniform(0.35, 0.8, 3).astype(np.float32)
    plaster = spectral_noise(rng, shape, (0.015 / texel, 0.2 / texel), beta=1.0)
    img = color[None, None, :] * (1.0 + 0.10 * blotch + 0.08 * grain + 0.10 * plaster)[..., None]
    cell = 0.0
    if kind == "floor":
        cell = rng.uniform(0.3, 0.6) / texel
        tile_r = np.floor(np.arange(rows) / cell).astype(int)
        tile_c = np.floor(np.arange(cols) / cell).astype(int)
        tone = rng.uniform(0.75, 1.2, (tile_r.max() + 1, tile_c.max() + 1)).astype(np.float32)
        img *= tone[tile_r][:, tile_c][..., None]
    elif kind == "ceiling":
        cell = rng.uniform(0.5, 1.0) / texel
    elif kind == "wood":
        stripes = np.sin(np.arange(cols, dtype=np.float32)[None, :] * texel * rng.uniform(15, 40)
                         + 3.0 * blotch)
        img = np.array([0.15, 0.28, 0.45], np.float32)[None, None, :] * (1.0 + 0.25 * stripes + 0.12 * grain)[..., None]
    if cell > 0:
        line = max(1, int(round(0.015 / texel)))
        for r in np.arange(cell, rows, cell):
            img[int(r):int(r) + line] *= 0.55
        for c in np.arange(cell, cols, cell):
            img[:, int(c):int(c) + line] *= 0.55
    if kind in ("wall", "wood"):
        n_posters = int(rng.integers(2, 5)) if kind == "wall" else int(rng.integers(0, 2))
        n_posters = max(n_posters, int(round(rows * cols * texel * texel / 1.2)))
        for _ in range(n_posters):
            h = int(rng.uniform(0.25, 0.7) / texel)
            w = int(rng.uniform(0.25, 0.9) / texel)
            h, w = min(h, rows - 2), min(w, cols - 2)
            if h < 8 or w < 8:
                continue
            r0 = int(rng.integers(0, rows - h))
            c0 = int(rng.integers(0, cols - w))
            img[r0:r0 + h, c0:c0 + w] = _poster(rng, (h, w), texel)
    canvas = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    n_strokes = 0
    if kind in ("wall", "wood"):
        n_strokes = int(rng.integers(10, 30) * max(1.0, rows * cols * texel * texel / 10.0))
    for _ in range(n_strokes):
        pts = np.cumsum(rng.normal(0, 0.05 / texel, (int(rng.integers(4, 12)), 2)), axis=0)
        pts += [rng.uniform(0, cols), rng.uniform(0, rows)]
        ink = tuple(int(v) for v in rng.integers(10, 120, 3))
        cv2.polylines(canvas, [np.round(pts).astype(np.int32).reshape(-1, 1, 2)], False, ink,
                      max(1, int(round(0.01 / texel))), cv2.LINE_AA)
    out = np.zeros((rows, cols, 4), np.uint8)
    out[..., :3] = canvas
    return out


def _poster(rng: np.random.Generator, shape: tuple[int, int], texel: float) -> np.ndarray:
    """A feature-rich rectangle: high-contrast coloured noise, shapes or a checker pattern."""
    import cv2

    h, w = shape
    style = int(rng.integers(0, 3))
    if style == 0:
        n = spectral_noise(rng, shape, (2.0, 0.15 / texel), beta=1.2)
        a, b = rng.uniform(0.05, 0.9, 3), rng.uniform(0.05, 0.9, 3)
        t = (0.5 + 0.5 * np.tanh(n))[..., None]
        return (a * t + b * (1 - t)).astype(np.float32)
    img = np.full((h, w, 3), 255 * rng.uniform(0.5, 0.95), np.uint8)
    if style == 1:
        for _ in range(int(rng.integers(10, 30))):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            if rng.random() < 0.5:
                cv2.circle(img, center, int(rng.integers(3, max(4, min(h, w) // 4))), c, -1, cv2.LINE_AA)
            else:
                size = (int(rng.integers(3, max(4, w // 3))), int(rng.integers(3, max(4, h // 3))))
                cv2.rectangle(img, center, (center[0] + size[0], center[1] + size[1]), c, -1)
    else:
        sq = max(2, int(rng.uniform(0.03, 0.1) / texel))
        yy, xx = np.mgrid[0:h, 0:w]
        checker = ((yy // sq + xx // sq) % 2).astype(np.float32)
        jitter = rng.uniform(0.0, 1.0, (h // sq + 1, w // sq + 1))[yy // sq, xx // sq]
        img = (255 * (0.15 + 0.7 * checker * jitter))[..., None].repeat(3, axis=2).astype(np.uint8)
        img = (img * rng.uniform(0.5, 1.0, 3)).astype(np.uint8)
    return img.astype(np.float32) / 255.0


class MipTexture:
    """A texture with a mip pyramid, sampled trilinearly at level-0 texel coordinates.

    Args:
        image: ``(rows, cols, C)`` uint8, C <= 4.
        wrap: wrap coordinates (periodic texture) instead of clamping at the border.
    """

    def __init__(self, image: np.ndarray, wrap: bool = False, max_levels: int = 8) -> None:
        import cv2

        self.wrap = wrap
        self.levels = [np.ascontiguousarray(image)]
        while len(self.levels) < max_levels and min(self.levels[-1].shape[:2]) >= 16:
            prev = self.levels[-1]
            h, w = prev.shape[:2]
            self.levels.append(cv2.resize(prev, (max(1, w // 2), max(1, h // 2)), interpolation=cv2.INTER_AREA))
        self.channels = image.shape[2]

    def _fetch(self, level: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        import cv2

        img = self.levels[level]
        h0, w0 = self.levels[0].shape[:2]
        h, w = img.shape[:2]
        n = len(u)
        cols = min(_REMAP_COLS, max(1, n))
        rows = -(-n // cols)
        mx = np.zeros(rows * cols, np.float32)
        my = np.zeros(rows * cols, np.float32)
        mx[:n] = (u + 0.5) * (w / w0) - 0.5
        my[:n] = (v + 0.5) * (h / h0) - 0.5
        border = cv2.BORDER_WRAP if self.wrap else cv2.BORDER_REFLECT_101
        out = cv2.remap(img, mx.reshape(rows, cols), my.reshape(rows, cols), cv2.INTER_LINEAR, borderMode=border)
        return out.reshape(rows * cols, self.channels)[:n].astype(np.float32) * (1.0 / 255.0)

    def sample(self, u: np.ndarray, v: np.ndarray, lod: np.ndarray) -> np.ndarray:
        """``(N, C)`` float32 in 0..1 at texel coordinates ``u`` (column), ``v`` (row), level of detail ``lod``."""
        n = len(u)
        out = np.empty((n, self.channels), np.float32)
        if n == 0:
            return out
        top = len(self.levels) - 1
        lod = np.clip(np.asarray(lod, np.float32), 0.0, float(top))
        base = np.minimum(np.floor(lod).astype(np.int32), top)
        frac = (lod - base)[:, None]
        for level in np.unique(base):
            idx = np.nonzero(base == level)[0]
            a = self._fetch(int(level), u[idx], v[idx])
            if level < top:
                b = self._fetch(int(level) + 1, u[idx], v[idx])
                a += (b - a) * frac[idx]
            out[idx] = a
        return out
