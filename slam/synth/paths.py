"""Smooth camera paths with exact poses at any (fractional) frame time.

Time ``t`` is in frames (frame ``i`` is at ``t = i``; fractional times serve the motion-blur shutter).
Poses are ``T_wc`` (camera-to-world, 4x4 float64) in the OpenCV camera convention: x right, y down,
z forward. Everything random comes from the generator passed in, so a path is a pure function of its seed.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from slam.geometry.se3 import so3_exp
from slam.synth.scene import Centerline


class SmoothNoise:
    """A smooth random scalar function of time: a cubic spline through N(0, 1) knots every ``spacing``."""

    def __init__(self, rng: np.random.Generator, t0: float, t1: float, spacing: float) -> None:
        from scipy.interpolate import CubicSpline

        spacing = max(float(spacing), 1e-3)
        knots = np.arange(t0 - 2 * spacing, t1 + 3 * spacing, spacing)
        self._spline = CubicSpline(knots, rng.normal(0.0, 1.0, len(knots)))

    def __call__(self, t: np.ndarray | float) -> np.ndarray:
        return np.asarray(self._spline(t), np.float64)


def cumulative(rate: Callable[[np.ndarray], np.ndarray], t0: float, t1: float,
               dt: float = 0.02) -> Callable[[np.ndarray], np.ndarray]:
    """``F(t) = integral of rate from t0 to t`` (trapezoid on a fine grid, linear in between)."""
    grid = np.arange(t0, t1 + dt, dt)
    values = rate(grid)
    integral = np.concatenate([[0.0], np.cumsum(0.5 * (values[1:] + values[:-1]) * np.diff(grid))])
    return lambda t: np.interp(t, grid, integral)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def look_rotation(forward: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` camera-to-world rotations looking along ``forward (N, 3)`` with ``up (N, 3)`` on
    screen up (camera -y)."""
    f = forward / np.linalg.norm(forward, axis=-1, keepdims=True)
    right = np.cross(f, up)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(f, right)
    return np.stack([right, down, f], axis=-1)


def _euler_cam(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``(N, 3, 3)`` rotations in the camera frame: roll about z, then pan about y, then tilt about x."""
    out = np.empty((len(yaw), 3, 3))
    for i, (a, b, c) in enumerate(zip(yaw, pitch, roll)):
        out[i] = so3_exp([0.0, 0.0, c]) @ so3_exp([0.0, a, 0.0]) @ so3_exp([b, 0.0, 0.0])
    return out


class TubePath:
    """Camera moving along a tube's centreline (forwards, or backwards for withdrawal) looking down the
    lumen, with a smooth lateral offset, pan/tilt wobble and roll.

    Build it, ask :meth:`s_range` for the centreline extent it needs, then :meth:`attach` the centreline.
    """

    def __init__(self, rng: np.random.Generator, t0: float, t1: float, radius: float, speed: float,
                 speed_variation: float, lateral: float, wobble_deg: float, roll_deg: float) -> None:
        self.radius = radius
        self.sign = -1.0 if speed < 0 else 1.0
        var = SmoothNoise(rng, t0, t1, 30.0)
        self._travel = cumulative(lambda t: abs(speed) * (1.0 + speed_variation * np.tanh(var(t))), t0, t1)
        self.t0, self.t1 = t0, t1
        self.total = float(self._travel(t1))
        self._lat = (SmoothNoise(rng, t0, t1, 45.0), SmoothNoise(rng, t0, t1, 45.0))
        self._lateral = lateral * radius
        self._wobble = (SmoothNoise(rng, t0, t1, 22.0), SmoothNoise(rng, t0, t1, 22.0))
        self._wobble_amp = math.radians(wobble_deg)
        self._roll = SmoothNoise(rng, t0, t1, 70.0)
        self._roll_amp = math.radians(roll_deg)
        self._roll_drift = rng.uniform(-1.0, 1.0) * math.radians(roll_deg) / 150.0
        self.centerline: Centerline | None = None

    def s_range(self) -> tuple[float, float]:
        """Arc-length range the centreline must cover (3 radii behind, 12 radii ahead of the camera)."""
        return -3.0 * self.radius, self.total + 12.0 * self.radius

    def attach(self, centerline: Centerline) -> None:
        self.centerline = centerline

    def s_at(self, t: np.ndarray) -> np.ndarray:
        travel = self._travel(t)
        return travel if self.sign > 0 else self.total - travel

    def T_wc(self, t: np.ndarray | float) -> np.ndarray:
        """``(N, 4, 4)`` camera-to-world poses at frame times ``t (N,)``."""
        if self.centerline is None:
            raise RuntimeError("TubePath.attach(centerline) must be called first")
        t = np.atleast_1d(np.asarray(t, np.float64))
        s = self.s_at(t)
        p, _, n, b = self.centerline.at(s)
        a1 = self._lateral * np.tanh(self._lat[0](t))
        a2 = self._lateral * np.tanh(self._lat[1](t))
        center = p + a1[:, None] * n + a2[:, None] * b
        ahead, *_ = self.centerline.at(s + 1.5 * self.radius)
        R_base = look_rotation(ahead - center, -n)
        roll = self._roll_amp * self._roll(t) + self._roll_drift * t
        yaw = self._wobble_amp * np.tanh(self._wobble[0](t))
        pitch = self._wobble_amp * np.tanh(self._wobble[1](t))
        T = np.tile(np.eye(4), (len(t), 1, 1))
        T[:, :3, :3] = R_base @ _euler_cam(yaw, pitch, roll)
        T[:, :3, 3] = center
        return T


class RoomPath:
    """Camera walking a loop in a room (y up), looking outward at the walls: it translates sideways,
    pans and tilts, and in a stretch of the sequence nearly stops and rotates in place."""

    def __init__(self, rng: np.random.Generator, t0: float, t1: float, frames: int, size: np.ndarray,
                 speed: float, speed_variation: float, wobble_deg: float, roll_deg: float,
                 rotation_stretch: bool) -> None:
        self.size = np.asarray(size, np.float64)
        self.center = self.size / 2.0
        self.rx = max(0.6, self.size[0] / 2.0 - 1.8)
        self.rz = max(0.6, self.size[2] / 2.0 - 1.8)
        self.height = rng.uniform(1.3, 1.7)
        self.alpha0 = rng.uniform(0, 2 * math.pi)
        direction = 1.0 if rng.random() < 0.5 else -1.0
        var = SmoothNoise(rng, t0, t1, 30.0)
        if rotation_stretch:
            ta = 0.45 * frames
            tb = ta + max(0.17 * frames, min(15.0, 0.3 * frames))
            ramp = min(max(1.5, 0.03 * frames), 0.25 * (tb - ta))
        else:
            ta = tb = ramp = 0.0

        def stop(t: np.ndarray) -> np.ndarray:
            """1 inside the rotate-in-place stretch, 0 outside, smooth ramps."""
            if not rotation_stretch:
                return np.zeros_like(np.asarray(t, np.float64))
            return smoothstep((t - ta) / ramp) * (1.0 - smoothstep((t - tb + ramp) / ramp))

        def rate(t: np.ndarray) -> np.ndarray:
            return direction * abs(speed) * (1.0 + speed_variation * np.tanh(var(t))) * (1.0 - 0.98 * stop(t))

        self._travel = cumulative(rate, t0, t1)
        self._progress = cumulative(lambda t: 1.0 - 0.98 * stop(t), t0, t1)  # frozen while rotating in place
        self._r_mean = 0.5 * (self.rx + self.rz)
        self._wobble = (SmoothNoise(rng, t0, t1, 35.0), SmoothNoise(rng, t0, t1, 25.0))
        self._wobble_amp = math.radians(wobble_deg)
        self._roll = SmoothNoise(rng, t0, t1, 40.0)
        self._roll_amp = math.radians(roll_deg)
        self._jitter = tuple(SmoothNoise(rng, t0, t1, 40.0) for _ in range(3))
        sweep = math.radians(rng.uniform(60.0, 100.0)) * (1.0 if rng.random() < 0.5 else -1.0)
        turn = max(tb - ta - 2 * ramp, 1.0)
        sweep = math.copysign(min(abs(sweep), math.radians(3.0) * turn), sweep)  # at most ~4.5 deg/frame
        self._sweep_angle = sweep if rotation_stretch else 0.0
        self._sweep_start, self._sweep_turn = ta + ramp, turn
        self.stretch = (ta, tb)

    def T_wc(self, t: np.ndarray | float) -> np.ndarray:
        """``(N, 4, 4)`` camera-to-world poses at frame times ``t (N,)``."""
        t = np.atleast_1d(np.asarray(t, np.float64))
        alpha = self.alpha0 + self._travel(t) / self._r_mean
        tp = self._progress(t)
        center = np.stack([
            self.center[0] + self.rx * np.cos(alpha) + 0.15 * np.tanh(self._jitter[0](tp)),
            self.height + 0.1 * np.tanh(self._jitter[1](tp)),
            self.center[2] + self.rz * np.sin(alpha) + 0.15 * np.tanh(self._jitter[2](tp)),
        ], axis=1)
        # pan follows the walk around the loop (damped), with slow wobble and the in-place sweep
        sweep = self._sweep_angle * smoothstep((t - self._sweep_start) / self._sweep_turn)
        yaw = self.alpha0 + 0.4 * (alpha - self.alpha0) + sweep
        yaw = yaw + 3.0 * self._wobble_amp * np.tanh(self._wobble[0](t))
        pitch = -0.1 + self._wobble_amp * np.tanh(self._wobble[1](t))
        forward = np.stack([np.cos(yaw) * np.cos(pitch), np.sin(pitch), np.sin(yaw) * np.cos(pitch)], axis=1)
        up = np.tile([0.0, 1.0, 0.0], (len(t), 1))
        roll = self._roll_amp * np.tanh(self._roll(t))
        R = look_rotation(forward, up) @ _euler_cam(np.zeros_like(t), np.zeros_like(t), roll)
        T = np.tile(np.eye(4), (len(t), 1, 1))
        T[:, :3, :3] = R
        T[:, :3, 3] = center
        return T
