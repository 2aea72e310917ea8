"""Evaluation plot: top view of the aligned estimate over ground truth, and ATE over time (PNG).

matplotlib is imported lazily and drawn through its Agg canvas directly (no pyplot, no global backend
switch), so it works headless and leaves any interactive backend of the host process alone.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from slam.errors import DependencyError, InputError
from slam.evaluation.trajectory import write_bytes_atomic

log = logging.getLogger(__name__)

_AXIS_NAMES = "xyz"


def top_view_axes(positions: np.ndarray) -> tuple[int, int]:
    """Indices ``(a, b)``, ``a < b``, of the two axes of largest spread (max - min) of ``positions (N, 3)``."""
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    spread = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
    a, b = sorted(np.argsort(-spread, kind="stable")[:2].tolist())
    return int(a), int(b)


def save_eval_plot(result, path: str | Path, title: str | None = None, dpi: int = 110) -> Path:
    """Write a two-panel PNG for an :class:`~slam.evaluation.metrics.EvalResult`.

    Left: ground truth and the aligned estimate seen along the axis of least spread. Right: the ATE
    of each matched pose against time since the first matched pose. Returns the written path.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise DependencyError("plotting needs matplotlib: pip install matplotlib") from exc
    if result.gt is None or result.est_aligned is None:
        raise InputError("this evaluation result carries no trajectories to plot")

    path = Path(path)
    gt_pos = result.gt.positions
    est_pos = result.est_aligned.positions
    a, b = top_view_axes(np.vstack([gt_pos, est_pos]))

    fig = Figure(figsize=(12, 5.2), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_top, ax_err = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})

    ax_top.plot(gt_pos[:, a], gt_pos[:, b], "-", color="0.35", lw=1.5, label="ground truth")
    ax_top.plot(est_pos[:, a], est_pos[:, b], "-", color="tab:blue", lw=1.0, label=f"estimate ({result.align})")
    ax_top.plot(gt_pos[:1, a], gt_pos[:1, b], "o", color="0.35", ms=5)
    ax_top.plot(est_pos[:1, a], est_pos[:1, b], "o", color="tab:blue", ms=4)
    ax_top.set_xlabel(f"{_AXIS_NAMES[a]} [m]")
    ax_top.set_ylabel(f"{_AXIS_NAMES[b]} [m]")
    ax_top.set_aspect("equal", adjustable="datalim")
    ax_top.grid(True, alpha=0.3)
    ax_top.legend(loc="best", fontsize=8)
    ax_top.set_title("top view after alignment")

    t = result.gt.timestamps[result.gt_idx]
    t = t - t[0] if len(t) else t
    ax_err.plot(t, result.ate_errors, "-", color="tab:red", lw=1.0)
    ax_err.axhline(result.ate["rmse"], color="k", ls="--", lw=0.8, label=f"RMSE {result.ate['rmse']:.4g} m")
    ax_err.set_xlabel("time since first matched pose [s]")
    ax_err.set_ylabel("ATE [m]")
    ax_err.set_ylim(bottom=0.0)
    ax_err.grid(True, alpha=0.3)
    ax_err.legend(loc="best", fontsize=8)
    ax_err.set_title("absolute trajectory error")

    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    try:
        write_bytes_atomic(path, buffer.getvalue())  # a kill never leaves half a PNG
    except OSError as exc:
        raise InputError(f"{path}: cannot write plot ({exc})") from exc
    log.info("wrote evaluation plot %s", path)
    return path
