#!/usr/bin/env python3
"""Diagnostic: how wrong are the two scale priors across the synthetic rooms' turn in place, over many seeds?

Where a room's turn sweeps past the field of view, no map point links the views before and after it and
the scale after the turn is a prior (README, "Scale across a turn past the field of view"):

    depth   the new view's median scene depth equals the one before the turn
    speed   the camera's cruising speed after the turn equals the one before (upper quartile of the
            distance per frame over the last HISTORY tracked frames that do not turn, against the first
            15 after the turn)

Nothing is rendered: for each seed the room layout and camera path are rebuilt exactly as ``slam synth room``
draws them, and the scene depth comes from rays cast against the room's box and furniture. The error of a
prior is the factor by which the map after the turn would be off. The last lines score the rules that
combine the two (the pipeline uses the depth guess unless the speed disagrees by more than
``tracking.guess_check_ratio``). Example::

    python tools/room_scale_priors.py --seeds 100-400 --history 100
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def _axis_box_hits(origin: np.ndarray, dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray, inside: bool) -> np.ndarray:
    """Ray parameter ``(N,)`` where rays ``origin + t * dirs (N, 3)`` meet an axis-aligned box (inf: miss)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (lo - origin) / dirs, (hi - origin) / dirs
    near = np.nanmax(np.minimum(t1, t2), axis=1)
    far = np.nanmin(np.maximum(t1, t2), axis=1)
    if inside:
        return far
    return np.where((far >= near) & (near > 0), near, np.inf)


def median_depth(T_wc: np.ndarray, layout, rays_c: np.ndarray) -> float:
    """Median depth (along the optical axis) of the room seen from ``T_wc (4, 4)``; ``rays_c (N, 3)``, z = 1."""
    dirs = rays_c @ T_wc[:3, :3].T
    t = _axis_box_hits(T_wc[:3, 3], dirs, np.zeros(3), layout.size, inside=True)
    for lo, hi in layout.boxes:
        t = np.minimum(t, _axis_box_hits(T_wc[:3, 3], dirs, lo, hi, inside=False))
    return float(np.median(t))


def prior_errors(seed: int, history: int, opts, rays_c: np.ndarray) -> tuple[float, float, float]:
    """``(sweep_deg, depth_error, speed_error)`` of one room seed (errors: factors the scale is off by)."""
    from scipy.spatial.transform import Rotation

    from slam.synth.generate import _draws
    from slam.synth.paths import RoomPath
    from slam.synth.scene import make_room_layout

    draws = _draws(opts, seed)
    layout = make_room_layout(np.random.default_rng([seed, 1]), opts.vary)
    path = RoomPath(np.random.default_rng([seed, 3]), -1.5, opts.frames + 0.5, opts.frames, layout.size,
                    draws["speed"], opts.speed_variation, opts.wobble_deg, opts.roll_deg, True)
    T = path.T_wc(np.arange(opts.frames, dtype=np.float64))
    step = np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1)
    turn = np.degrees(Rotation.from_matrix(T[1:, :3, :3] @ np.transpose(T[:-1, :3, :3], (0, 2, 1))).magnitude())
    ta, tb = path.stretch
    before_end, after_start = int(ta) + 15, int(tb) - 3  # where the map's points run out; the guess
    steady = turn <= 1.0  # the pipeline's speed samples skip frames turning faster than 1 degree
    before = step[:before_end][steady[:before_end]][-history:]
    after = step[after_start:][steady[after_start:]][:15]
    speed_error = np.percentile(before, 75) / np.percentile(after, 75)
    depth_error = median_depth(T[before_end], layout, rays_c) / median_depth(T[after_start], layout, rays_c)
    forward = T[:, :3, 2]
    sweep = math.degrees(math.acos(float(np.clip(forward[int(ta)] @ forward[int(tb)], -1.0, 1.0))))
    return sweep, float(depth_error), float(speed_error)


def main() -> None:
    from slam.synth.presets import resolve_options

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="100-400", help="range FIRST-END (END excluded)")
    ap.add_argument("--history", type=int, default=100, help="speed samples before the turn")
    ap.add_argument("--min-sweep", type=float, default=85.0, help="score only turns sweeping more (degrees)")
    args = ap.parse_args()
    first, end = (int(v) for v in args.seeds.split("-"))
    opts = resolve_options("room", frames=300)
    f = (opts.width / 2) / math.tan(math.radians(opts.fov_deg) / 2)
    u, v = np.meshgrid(np.linspace(0, opts.width, 24), np.linspace(0, opts.height, 18))
    rays_c = np.stack([(u - opts.width / 2) / f, (v - opts.height / 2) / f, np.ones_like(u)], -1).reshape(-1, 3)
    rows = np.array([prior_errors(s, args.history, opts, rays_c) for s in range(first, end)])
    rows = rows[rows[:, 0] > args.min_sweep]
    depth, speed = rows[:, 1], rows[:, 2]
    rules = {"depth only": depth, "speed only": speed, "geometric mean": np.sqrt(depth * speed)}
    for ratio in (1.2, 1.4, 1.6, 2.0):
        rules[f"depth, speed beyond {ratio}x"] = np.where(np.abs(np.log(depth / speed)) > np.log(ratio), speed, depth)
    print(f"{len(rows)} of {end - first} seeds sweep more than {args.min_sweep:.0f} degrees; history {args.history}")
    for name, err in rules.items():
        lg = np.abs(np.log(err))
        print(f"{name:28s} within 1.1x {np.mean(lg < np.log(1.1)):.2f}  1.2x {np.mean(lg < np.log(1.2)):.2f}  "
              f"1.35x {np.mean(lg < np.log(1.35)):.2f}  rms log {np.sqrt(np.mean(lg ** 2)):.3f}  "
              f"worst {np.exp(lg.max()):.2f}x")


if __name__ == "__main__":
    main()
