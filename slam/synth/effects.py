"""Image-formation effects applied to rendered linear radiance: motion blur, bubbles/fluid, defocus,
vignetting, sensor noise and tone mapping to 8-bit BGR.

All images are ``(H, W, 3)`` float32 linear BGR unless said otherwise; randomness comes from generators
passed in (one per frame), so effects are deterministic per seed.
"""

from __future__ import annotations

import math

import numpy as np

from slam.camera import Camera


def vignette(camera: Camera, radius_px: float, strength: float) -> np.ndarray:
    """``(H, W)`` float32 gain ``1 - strength * (r / radius_px)**2`` about the principal point (>= 0.05)."""
    v, u = np.mgrid[0:camera.height, 0:camera.width].astype(np.float32)
    r2 = ((u - camera.cx) ** 2 + (v - camera.cy) ** 2) / (radius_px * radius_px)
    return np.maximum(1.0 - strength * r2, 0.05).astype(np.float32)


def motion_blur(image: np.ndarray, camera: Camera, hit: np.ndarray, points_w: np.ndarray,
                T_wc_open: np.ndarray, T_wc_close: np.ndarray, samples: int) -> np.ndarray:
    """Blur along each pixel's exact image motion over the shutter.

    ``hit (H, W)`` marks the pixels whose world points ``points_w (P, 3)`` (row-major order) were rendered
    at the mid-shutter pose; ``T_wc_open`` / ``T_wc_close`` are the poses when the shutter opens/closes.
    Each output pixel averages ``samples`` samples of ``image`` along the segment of its point's motion
    (brightness constancy over the shutter; disocclusions are ignored).
    """
    import cv2

    H, W = hit.shape
    v, u = np.nonzero(hit)
    here = np.stack([u, v], axis=1).astype(np.float64)
    ends = []
    for T_wc in (T_wc_open, T_wc_close):
        T_cw = np.linalg.inv(T_wc)
        pc = points_w @ T_cw[:3, :3].T + T_cw[:3, 3]
        uv = camera.project(pc)
        flow = uv - here
        flow[~np.isfinite(flow).all(axis=1)] = 0.0
        full = np.zeros((H, W, 2), np.float32)
        full[v, u] = flow
        ends.append(full)
    grid_u, grid_v = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    acc = np.zeros_like(image)
    for k in range(samples):
        a = k / (samples - 1) if samples > 1 else 0.5
        flow = (1.0 - a) * ends[0] + a * ends[1]
        acc += cv2.remap(image, grid_u - flow[..., 0], grid_v - flow[..., 1], cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE)
    return acc / float(samples)


class FluidOverlay:
    """Short stretches of frames covered by bubbles and bright fluid (large textureless bright areas).

    ``intervals`` lists ``(first, last)`` frame numbers; outside them :meth:`apply` changes nothing.
    """

    def __init__(self, rng: np.random.Generator, frames: int, width: int, height: int) -> None:
        n = max(1, int(round(frames / 120)))
        self.width, self.height = width, height
        self.intervals: list[tuple[int, int]] = []
        start_min = min(frames - 4, max(8, int(0.25 * frames)))
        slots = np.linspace(start_min, frames, n + 1)
        self._params = []
        for k in range(n):
            length = int(rng.integers(6, 15))
            lo, hi = int(slots[k]), int(slots[k + 1]) - length
            first = int(rng.integers(lo, max(lo + 1, hi)))
            last = min(frames - 1, first + length - 1)
            self.intervals.append((first, last))
            small = (max(8, height // 8), max(8, width // 8))
            field = rng.standard_normal(small).astype(np.float32)
            import cv2

            field = cv2.GaussianBlur(field, (0, 0), max(1.0, small[1] / 10))
            field = (field - field.mean()) / (field.std() + 1e-9)
            bubbles = [(rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.02, 0.09) * width,
                        rng.uniform(-1, 1) * 0.01 * width, rng.uniform(-1, 1) * 0.01 * width)
                       for _ in range(int(rng.integers(5, 16)))]
            drift = rng.uniform(-1, 1, 2) * 0.015 * np.array([width, height])
            self._params.append((field, bubbles, drift, rng.uniform(0.3, 0.6)))

    def active(self, frame: int) -> bool:
        return any(a <= frame <= b for a, b in self.intervals)

    def apply(self, image: np.ndarray, frame: int) -> np.ndarray:
        """Composite bubbles/fluid over ``image`` (linear BGR) at ``frame``."""
        import cv2

        for (first, last), (field, bubbles, drift, coverage) in zip(self.intervals, self._params):
            if not first <= frame <= last:
                continue
            H, W = self.height, self.width
            phase = (frame - first + 0.5) / (last - first + 1)
            envelope = math.sin(math.pi * phase) ** 0.5
            big = cv2.resize(field, (W, H), interpolation=cv2.INTER_CUBIC)
            shift = np.float32([[1, 0, drift[0] * (frame - first)], [0, 1, drift[1] * (frame - first)]])
            big = cv2.warpAffine(big, shift, (W, H), borderMode=cv2.BORDER_REFLECT_101)
            threshold = np.quantile(big, 1.0 - coverage * envelope)
            alpha = 1.0 / (1.0 + np.exp(-(big - threshold) / 0.08))
            alpha = (0.93 * alpha).astype(np.float32)
            fluid = np.array([0.80, 0.88, 0.92], np.float32) * (0.97 + 0.03 * np.tanh(big))[..., None]
            out = image * (1.0 - alpha[..., None]) + fluid * alpha[..., None]
            ring = np.zeros((H, W), np.uint8)
            fill = np.zeros((H, W), np.uint8)
            dt = frame - first
            for x, y, r, vx, vy in bubbles:
                rr = r * (0.6 + 0.4 * envelope)
                c = (int(round((x + vx * dt) * 16)), int(round((y + vy * dt) * 16)))
                cv2.circle(fill, c, int(rr * 16), 90, -1, cv2.LINE_AA, shift=4)
                cv2.circle(ring, c, int(rr * 16), 255, max(1, int(rr * 0.12)), cv2.LINE_AA, shift=4)
                glint = (c[0] - int(rr * 0.4 * 16), c[1] - int(rr * 0.4 * 16))
                cv2.circle(ring, glint, int(max(1.0, rr * 0.15) * 16), 255, -1, cv2.LINE_AA, shift=4)
            a = (np.maximum(ring, fill).astype(np.float32) / 255.0 * envelope)[..., None]
            image = out * (1.0 - a) + np.float32(1.1) * a
        return image


def defocus(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian defocus blur of ``sigma`` pixels (no-op for sigma < 0.2)."""
    import cv2

    if sigma < 0.2:
        return image
    return cv2.GaussianBlur(image, (0, 0), sigma)


def sensor(image: np.ndarray, rng: np.random.Generator, noise: float, usable: np.ndarray | None) -> np.ndarray:
    """Shot + read noise on linear values, clipping, gamma 1/2.2 and 8-bit quantisation.

    Returns ``(H, W, 3)`` uint8 BGR; pixels outside ``usable (H, W)`` are a black border with faint noise (0-4).
    """
    x = np.clip(image, 0.0, None)
    if noise > 0:
        sigma = noise * np.sqrt(2.5e-5 + 4e-4 * x)
        x = x + sigma * rng.standard_normal(x.shape, dtype=np.float32)
    x = np.clip(x, 0.0, 1.0) ** (1.0 / 2.2)
    out = (x * 255.0 + 0.5).astype(np.uint8)
    if usable is not None:
        border = ~usable
        out[border] = np.minimum(rng.poisson(0.3 * max(noise, 0.0), (int(border.sum()), 3)), 4).astype(np.uint8)
    return out
