#!/usr/bin/env python3
"""Diagnostic: run SLAM with its optical-flow tracks replaced by ground truth plus a chosen error model.

Which track errors make the map drift? Every frame, each track's position becomes the exact projection of
its ground-truth 3D point (lifted from the sequence's depth image where the track started) plus an error:

    exact                  no error
    iid SIGMA              fresh N(0, SIGMA) px per frame and axis
    walk SIGMA             an error that accumulates N(0, SIGMA) px per frame (a random walk)
    lk-across / lk-along   Lucas-Kanade's own error, keeping only its component across / along the direction
                           of the translational flow (the epipolar direction)
    drift-across RATE      an error growing RATE px per frame of track age, across the translational flow,
    drift-along RATE       ... or along it (random sign per track)

The sequence needs depth: ``slam synth tube DIR --seed 1 -o depth=true``. Arguments after the four below
go to ``slam run``. ``FlowTracker`` is patched for that one run (``_carry``, ``_reset_tracks_from_keyframe``)
and restored afterwards; nothing in the library changes. ``OUT/eval.json`` holds the ATE. Example::

    python tools/oracle_tracks.py /tmp/tube1 runs/oracle_exact exact 0 --sync
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MODES = ("exact", "iid", "walk", "lk-across", "lk-along", "drift-across", "drift-along")


class TrackOracle:
    """Ground-truth positions for flow tracks, with an error model; state per track id."""

    def __init__(self, seq: Path, mode: str, amount: float, seed: int = 0) -> None:
        import cv2

        from slam.evaluation.trajectory import read_tum
        from slam.sources.calib import load_calibration

        images = sorted((seq / "rgb").glob("*.png"))
        first = cv2.imread(str(images[0])) if images else None
        if first is None or not (seq / "depth").is_dir():
            raise SystemExit(f"{seq}: needs rgb/ and depth/ (synthesise it with -o depth=true)")
        h, w = first.shape[:2]
        self.seq, self.mode, self.amount = seq, mode, amount
        self.T_wc = read_tum(seq / "groundtruth.txt").T_wc
        self.camera = load_calibration(seq / "calib.txt", w, h)
        self.rng = np.random.default_rng(seed)
        self.points: dict[int, np.ndarray | None] = {}  # track id -> world point (None: no depth there)
        self.walk: dict[int, np.ndarray] = {}
        self.age: dict[int, int] = {}
        self.sign: dict[int, float] = {}

    def _lift(self, uv: np.ndarray, index: int) -> tuple[np.ndarray, np.ndarray]:
        import cv2

        depth = cv2.imread(str(self.seq / "depth" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED).astype(np.float32)
        z = cv2.remap(depth / 1000.0, uv[:, 0].reshape(-1, 1).astype(np.float32),
                      uv[:, 1].reshape(-1, 1).astype(np.float32), cv2.INTER_NEAREST).ravel()
        ray = self.camera.unproject(uv.astype(np.float64))
        X_c = ray / ray[:, 2:3] * z[:, None]
        T = self.T_wc[index]
        return X_c @ T[:3, :3].T + T[:3, 3], z > 0

    def positions(self, tids: np.ndarray, prev_uv: np.ndarray, prev_index: int, lk_uv: np.ndarray,
                  index: int) -> tuple[np.ndarray, np.ndarray]:
        """New pixels ``(N, 2)`` of tracks ``tids`` in frame ``index`` and a ``(N,)`` bool of valid ones."""
        new = [k for k, t in enumerate(tids.tolist()) if t not in self.points]
        if new:
            X, ok = self._lift(prev_uv[new], prev_index)
            for k, x, good in zip(new, X, ok):
                self.points[int(tids[k])] = x if good else None
        T_cw = np.linalg.inv(self.T_wc[index])
        X_w = np.array([np.full(3, np.nan) if (x := self.points[t]) is None else x for t in tids.tolist()])
        X_c = X_w.reshape(-1, 3) @ T_cw[:3, :3].T + T_cw[:3, 3]
        with np.errstate(invalid="ignore"):
            ahead = X_c[:, 2] > 0.05  # False where the point has no depth (NaN)
        q = np.full((len(tids), 2), np.nan)
        q[ahead] = self.camera.project(X_c[ahead])
        # direction of the translational flow: where the ray would go under the rotation alone
        R_rel = T_cw[:3, :3] @ self.T_wc[prev_index][:3, :3]
        q_rot = self.camera.project(self.camera.unproject(prev_uv.astype(np.float64)) @ R_rel.T)
        along = q - q_rot
        along /= np.maximum(np.linalg.norm(along, axis=1, keepdims=True), 1e-9)
        across = np.stack([-along[:, 1], along[:, 0]], axis=1)
        m, a = self.mode, self.amount
        if m == "iid":
            q = q + self.rng.normal(0.0, a, q.shape)
        elif m == "walk":
            for k, t in enumerate(tids.tolist()):
                self.walk[t] = self.walk.get(t, np.zeros(2)) + self.rng.normal(0.0, a, 2)
                q[k] += self.walk[t]
        elif m.startswith("lk-"):
            err = lk_uv - q
            par = np.sum(err * along, axis=1, keepdims=True) * along
            q = q + (err - par if m == "lk-across" else par)
        elif m.startswith("drift-"):
            direction = across if m == "drift-across" else along
            for k, t in enumerate(tids.tolist()):
                self.age[t] = self.age.get(t, 0) + 1
                self.sign.setdefault(t, float(self.rng.choice([-1.0, 1.0])))
                q[k] += a * self.age[t] * self.sign[t] * direction[k]
        return q, np.isfinite(q).all(axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sequence", type=Path, help="synthetic sequence with depth/")
    parser.add_argument("out", help="output folder (as slam run --out)")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("amount", type=float, help="SIGMA or RATE in pixels (ignored by exact and lk-*)")
    args, run_args = parser.parse_known_args(argv)

    import slam.flow_tracking as flow
    from slam.cli import main as slam_main

    oracle = TrackOracle(args.sequence, args.mode, args.amount)
    carry = flow.FlowTracker._carry
    reset = flow.FlowTracker._reset_tracks_from_keyframe
    last_index: dict[int, int] = {}  # id(tracker) -> frame index of the tracks' current positions

    def oracle_carry(self, frame, mask, guess=None):
        prev_uv, tids, prev_index = self._pts.copy(), self._tids.copy(), last_index.get(id(self))
        good = carry(self, frame, mask, guess)
        last_index[id(self)] = frame.index
        if prev_index is None or len(tids) == 0:
            return good
        q, valid = oracle.positions(tids, prev_uv, prev_index, self._pts, frame.index)
        self._pts = np.where(valid[:, None], q, self._pts).astype(np.float32)
        h, w = frame.gray.shape[:2]
        inside = (self._pts[:, 0] >= 0) & (self._pts[:, 1] >= 0) & (self._pts[:, 0] <= w - 1) & (self._pts[:, 1] <= h - 1)
        return good & valid & inside

    def oracle_reset(self, frame):
        reset(self, frame)
        last_index[id(self)] = frame.index

    flow.FlowTracker._carry = oracle_carry
    flow.FlowTracker._reset_tracks_from_keyframe = oracle_reset
    try:
        return slam_main(["run", str(args.sequence), "--out", args.out, *run_args])
    finally:  # restore the tracker: main() may be called again in the same process (the tests do)
        flow.FlowTracker._carry = carry
        flow.FlowTracker._reset_tracks_from_keyframe = reset


if __name__ == "__main__":
    sys.exit(main())
