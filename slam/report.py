"""Run report: one self-contained ``report.html`` (PNG plots embedded as base64) from a run folder.

Reads what ``slam run`` writes (see :mod:`slam.runner`): ``stats.json`` (counts, fps, per-stage mean
milliseconds, the configuration), ``states.txt`` (``index timestamp state tracked_points`` per frame),
``trajectory.txt`` and ``keyframes.txt`` (TUM, camera-to-world), and, when the run had ground truth,
``groundtruth.txt`` and ``eval.json``. The trajectory is re-evaluated from the two TUM files (with the
alignment and association tolerance recorded in ``eval.json``) to draw the top view, the ATE and the
RPE over time. Every section is optional: a missing or unreadable file leaves its section out with a
note, so a run without ground truth (or one stopped half-way) still gets a report.

Plots are drawn with matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``, no pyplot).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slam.errors import DependencyError, EmptyTrajectoryError, InputError, SlamError
from slam.evaluation.trajectory import Trajectory, read_tum, write_text_atomic

log = logging.getLogger(__name__)

STATE_COLOURS = {"initialising": "#f2c14e", "tracking": "#8fd694", "lost": "#f08080"}
_AXES = "xyz"

# eval.json keys shown in the report, with labels and units
_EVAL_ROWS = (
    ("ate_rmse", "ATE RMSE", "m"), ("ate_mean", "ATE mean", "m"), ("ate_median", "ATE median", "m"),
    ("ate_max", "ATE max", "m"), ("ate_percent_of_path", "ATE / path length", "%"),
    ("path_length", "ground-truth path length", "m"), ("rpe_trans_rmse", "RPE translation RMSE (1 frame)", "m"),
    ("rpe_rot_deg_rmse", "RPE rotation RMSE (1 frame)", "deg"),
    ("rpe_dist_trans_percent", "RPE translation per distance", "%"), ("rpe_dist_delta_m", "RPE distance step", "m"),
    ("tracked_fraction", "ground-truth poses tracked", "fraction"), ("scale", "Sim3 scale", ""),
    ("num_matched", "matched poses", ""), ("align", "alignment", ""),
)


@dataclass
class RunFiles:
    """What could be read from a run folder; None for a file that is absent or unreadable."""

    run_dir: Path
    stats: dict | None = None
    evaluation: dict | None = None
    trajectory: Trajectory | None = None
    keyframes: Trajectory | None = None
    groundtruth: Trajectory | None = None
    states: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # index, time, state, points
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- reading
def read_states(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``states.txt`` as ``(index (N,) int64, timestamp (N,) float64, state (N,) str, tracked (N,) int64)``."""
    path = Path(path)
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 4:
            raise InputError(f"{path}:{lineno}: expected 'index timestamp state tracked_points', got {line!r}")
        try:
            rows.append((int(parts[0]), float(parts[1]), parts[2], int(parts[3])))
        except ValueError as exc:
            raise InputError(f"{path}:{lineno}: not a number in {line!r}") from exc
    index = np.array([r[0] for r in rows], dtype=np.int64)
    stamps = np.array([r[1] for r in rows], dtype=np.float64)
    states = np.array([r[2] for r in rows], dtype=str)
    tracked = np.array([r[3] for r in rows], dtype=np.int64)
    return index, stamps, states, tracked


def load_run(run_dir: str | Path) -> RunFiles:
    """Read every report input of ``run_dir``; InputError when it is not a run folder at all."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: run folder not found")
    run = RunFiles(run_dir)

    def attempt(name: str, reader):
        path = run_dir / name
        if not path.is_file():
            return None
        try:
            return reader(path)
        except (SlamError, ValueError, OSError) as exc:
            if isinstance(exc, EmptyTrajectoryError) and name in ("trajectory.txt", "keyframes.txt"):
                run.notes.append(f"{name} holds no poses (nothing was tracked)")  # a normal outcome, not an error
                return None
            run.notes.append(f"{name} could not be read: {exc}")
            log.warning("report: %s could not be read: %s", path, exc)
            return None

    def read_json(path: Path):
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        return data

    run.stats = attempt("stats.json", read_json)
    run.evaluation = attempt("eval.json", read_json)
    run.trajectory = attempt("trajectory.txt", read_tum)
    run.keyframes = attempt("keyframes.txt", read_tum)
    run.groundtruth = attempt("groundtruth.txt", read_tum)
    run.states = attempt("states.txt", read_states)
    if run.stats is None and run.trajectory is None and run.states is None:
        raise InputError(
            f"{run_dir}: not a run folder (no readable stats.json, trajectory.txt or states.txt; "
            "write one with `slam run PATH --out DIR`)"
        )
    return run


# ---------------------------------------------------------------------------------------------- plots
def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - matplotlib is a core dependency
        raise DependencyError("the run report needs matplotlib: pip install matplotlib") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _top_axes(positions: np.ndarray) -> tuple[int, int]:
    from slam.evaluation.plot import top_view_axes

    return top_view_axes(positions)


def plot_trajectory(est: Trajectory, gt: Trajectory | None, keyframes: Trajectory | None, label: str) -> bytes:
    """Top view (the two axes of largest spread) of the estimate, its keyframes and ground truth."""
    stacks = [est.positions] + ([gt.positions] if gt is not None else [])
    a, b = _top_axes(np.vstack(stacks))
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    if gt is not None:
        ax.plot(gt.positions[:, a], gt.positions[:, b], "-", color="0.35", lw=1.6, label="ground truth")
    ax.plot(est.positions[:, a], est.positions[:, b], "-", color="tab:blue", lw=1.0, label=label)
    ax.plot(est.positions[:1, a], est.positions[:1, b], "o", color="tab:blue", ms=5, label="start")
    if keyframes is not None and len(keyframes):
        ax.plot(keyframes.positions[:, a], keyframes.positions[:, b], ".", color="tab:orange", ms=5, label="keyframes")
    ax.set_xlabel(f"{_AXES[a]}")
    ax.set_ylabel(f"{_AXES[b]}")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("trajectory, top view")
    return _png(fig)


def plot_errors_over_time(t_ate: np.ndarray, ate: np.ndarray, t_rpe: np.ndarray, rpe: np.ndarray) -> bytes:
    """ATE of each matched pose and the frame-to-frame RPE (translation) against time."""
    fig = _figure(9, 5)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    ax1.plot(t_ate, ate, "-", color="tab:red", lw=1.0)
    if len(ate):
        rmse = float(np.sqrt(np.mean(ate ** 2)))
        ax1.axhline(rmse, color="k", ls="--", lw=0.8, label=f"RMSE {rmse:.4g} m")
        ax1.legend(loc="best", fontsize=8)
    ax1.set_ylabel("ATE [m]")
    ax1.set_ylim(bottom=0)
    ax1.grid(True, alpha=0.3)
    ax1.set_title("absolute trajectory error (after alignment)")
    ax2.plot(t_rpe, rpe, "-", color="tab:purple", lw=0.8)
    ax2.set_ylabel("RPE translation [m]")
    ax2.set_xlabel("time since first matched pose [s]")
    ax2.set_ylim(bottom=0)
    ax2.grid(True, alpha=0.3)
    ax2.set_title("relative pose error between consecutive matched poses")
    return _png(fig)


def plot_tracked_points(index: np.ndarray, states: np.ndarray, tracked: np.ndarray) -> bytes:
    """Tracked points per frame over colour bands of the tracker state."""
    fig = _figure(9, 3.6)
    ax = fig.add_subplot(1, 1, 1)
    names = np.where(np.isin(states, list(STATE_COLOURS)), states, "other")
    change = np.flatnonzero(names[1:] != names[:-1]) + 1
    starts = np.concatenate([[0], change]).astype(int)
    ends = np.concatenate([change, [len(names)]]).astype(int) - 1
    for name, colour in list(STATE_COLOURS.items()) + [("other", "#cccccc")]:
        runs = [(index[a] - 0.5, index[b] - index[a] + 1.0) for a, b in zip(starts, ends) if names[a] == name]
        if runs:
            ax.broken_barh(runs, (0, 1), facecolors=colour, alpha=0.55, lw=0,
                           transform=ax.get_xaxis_transform(), label=name)
    ax.plot(index, tracked, "-", color="k", lw=0.9, label="tracked points")
    ax.set_xlabel("frame index")
    ax.set_ylabel("tracked points")
    ax.set_ylim(bottom=0)
    if len(index):
        ax.set_xlim(index.min() - 0.5, index.max() + 0.5)
    ax.grid(True, alpha=0.3, axis="y")
    ax.legend(loc="upper right", fontsize=8, ncol=4)
    ax.set_title("tracked points per frame and tracker state")
    return _png(fig)


def plot_stage_times(stage_ms: dict[str, float]) -> bytes:
    """Horizontal bars of the mean milliseconds per call of each stage, slowest on top."""
    items = sorted(stage_ms.items(), key=lambda kv: kv[1])
    fig = _figure(7, 0.8 + 0.32 * max(len(items), 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh([k for k, _ in items], [v for _, v in items], color="tab:cyan")
    for y, (_, v) in enumerate(items):
        ax.text(v, y, f" {v:.3g}", va="center", fontsize=8)
    ax.set_xlabel("mean time per call [ms]")
    ax.grid(True, alpha=0.3, axis="x")
    ax.set_title("per-stage timing")
    return _png(fig)


# ---------------------------------------------------------------------------------------------- html
def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return str(value)


def _table(rows: list[tuple[str, str]], header: tuple[str, ...] | None = None) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.5em; }
h2 { font-size: 1.2em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .25em .7em; }
td:nth-child(2) { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f4f4f4; }
img { max-width: 100%; display: block; margin: .6em 0; } pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
.note { color: #a15c00; }
"""


def _summary_rows(stats: dict) -> list[tuple[str, str]]:
    frames = stats.get("frames")
    tracked = stats.get("tracked")
    frac = stats.get("tracked_fraction")
    if frac is None and frames:
        frac = (tracked or 0) / frames
    rows = [
        ("source", _fmt(stats.get("source"))),
        ("frames", _fmt(frames)),
        ("tracked frames", f"{_fmt(tracked)} ({100 * frac:.1f} %)" if frac is not None else _fmt(tracked)),
        ("lost frames", _fmt(stats.get("lost"))),
        ("initialising frames", _fmt(stats.get("initialising"))),
        ("keyframes", _fmt(stats.get("keyframes"))),
        ("keyframes culled", _fmt(stats.get("keyframes_culled"))),
        ("keyframes re-localised after local BA", _fmt(stats.get("keyframes_relocated"))),
        ("map points", _fmt(stats.get("map_points"))),
        ("maps", _fmt(stats.get("maps"))),
        ("tracking resets", _fmt(stats.get("resets"))),
        ("wall time [s]", _fmt(stats.get("wall_s"))),
        ("frames per second", _fmt(stats.get("fps"))),
        ("features / front end", f"{_fmt(stats.get('features'))} / {_fmt(stats.get('frontend'))}"),
        ("device", _fmt(stats.get("device"))),
        ("synchronous", _fmt(stats.get("sync"))),
        ("interrupted", _fmt(stats.get("interrupted"))),
    ]
    if stats.get("error"):
        rows.append(("error", str(stats["error"])))
    return [r for r in rows if r[1] != "n/a" or r[0] in ("frames", "keyframes", "map points")]


def _config_yaml(config) -> str:
    try:
        import yaml

        return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    except Exception:  # not YAML-safe or no pyyaml: JSON is YAML too
        return json.dumps(config, indent=2, default=str)


def _evaluate(run: RunFiles):
    """Re-evaluate ``trajectory.txt`` against ``groundtruth.txt``; None (with a note) when impossible."""
    if run.trajectory is None or run.groundtruth is None:
        return None
    from slam.evaluation.metrics import evaluate

    ev = run.evaluation or {}
    align = ev.get("align") or "sim3"
    max_diff = ev.get("max_diff") or 0.02
    try:
        return evaluate(run.trajectory, run.groundtruth, align=align, max_diff=float(max_diff))
    except SlamError as exc:
        run.notes.append(f"trajectory could not be evaluated against groundtruth.txt: {exc}")
        return None


def _section(title: str, body: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{body}\n"


def _plot_or_note(run: RunFiles, what: str, draw) -> str:
    """``draw()``'s PNG as an image, or a note when drawing failed (a report never dies on a plot)."""
    try:
        return _img(draw(), what)
    except DependencyError:
        raise
    except Exception as exc:
        log.warning("report: %s plot failed: %s", what, exc)
        run.notes.append(f"{what} plot failed: {exc}")
        return ""


def build_report_html(run: RunFiles) -> str:
    """The report page of ``run`` as an HTML string (images inlined)."""
    parts: list[str] = []
    stats = run.stats or {}
    title = f"SLAM run report: {run.run_dir.name or run.run_dir}"

    parts.append(_section("Summary", _table(_summary_rows(stats), ("quantity", "value")) if stats
                          else '<p class="note">no stats.json in this folder</p>'))

    # evaluation
    result = _evaluate(run)
    ev = result.to_dict() if result is not None else (run.evaluation or None)
    if ev is not None:
        rows = [(label, _fmt(ev.get(key)), unit) for key, label, unit in _EVAL_ROWS if key in ev]
        body = _table(rows, ("metric", "value", "unit"))
        if result is None:
            body += '<p class="note">numbers from eval.json; the trajectories could not be re-read for plots</p>'
        parts.append(_section("Accuracy against ground truth", body))
    elif run.groundtruth is None:
        parts.append(_section("Accuracy against ground truth", "<p>no ground truth for this run</p>"))

    # trajectory
    if run.trajectory is not None and len(run.trajectory):
        if result is not None:
            from slam.geometry.alignment import transform_trajectory

            kfs = (transform_trajectory(run.keyframes, result.R, result.t, result.scale)
                   if run.keyframes is not None else None)
            body = _plot_or_note(run, "trajectory", lambda: plot_trajectory(
                result.est_aligned, result.gt, kfs, f"estimate ({result.align}-aligned)"))
            gt_t = result.gt.timestamps[result.gt_idx]
            t0 = gt_t[0] if len(gt_t) else 0.0
            from slam.evaluation.metrics import pairs_by_frames, relative_pose_errors

            est_m = result.est_aligned.T_wc[result.est_idx]
            pairs = pairs_by_frames(len(est_m), 1)
            rpe_t, _ = relative_pose_errors(result.gt.T_wc[result.gt_idx], est_m, pairs)
            body += _plot_or_note(run, "ATE and RPE over time", lambda: plot_errors_over_time(
                gt_t - t0, result.ate_errors, gt_t[pairs[:, 1]] - t0, rpe_t))
        else:
            body = _plot_or_note(run, "trajectory", lambda: plot_trajectory(
                run.trajectory, None, run.keyframes, "estimate (own scale and frame)"))
        parts.append(_section("Trajectory", body))

    # tracking
    if run.states is not None and len(run.states[0]):
        index, _, states, tracked = run.states
        counts = {s: int(np.count_nonzero(states == s)) for s in dict.fromkeys(states.tolist())}
        rows = [(s, str(c), f"{100 * c / len(states):.1f} %") for s, c in counts.items()]
        body = _plot_or_note(run, "tracked points", lambda: plot_tracked_points(index, states, tracked))
        body += _table(rows, ("state", "frames", "share"))
        body += (f"<p>tracked points per frame: median {np.median(tracked):.0f}, "
                 f"min {tracked.min()}, max {tracked.max()}</p>")
        parts.append(_section("Tracking", body))

    # timings
    stage_ms = stats.get("stage_ms") or {}
    if stage_ms:
        calls = stats.get("stage_calls") or {}
        rows = [(k, f"{v:.3f}", _fmt(calls.get(k)), f"{v * calls[k] / 1000:.2f}" if k in calls else "n/a")
                for k, v in sorted(stage_ms.items(), key=lambda kv: -kv[1])]
        body = _table(rows, ("stage", "mean [ms]", "calls", "total [s]"))
        body += _plot_or_note(run, "stage timing", lambda: plot_stage_times(stage_ms))
        parts.append(_section("Per-stage timing", body))

    # configuration
    if stats.get("config") is not None:
        parts.append(_section("Configuration", f"<pre>{html.escape(_config_yaml(stats['config']))}</pre>"))

    if run.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
        parts.append(_section("Notes", f'<ul class="note">{items}</ul>'))

    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1><p>folder <code>{html.escape(str(run.run_dir.resolve()))}</code>, "
        f"report written {stamp}</p>\n" + "".join(parts) + "</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the files of a run folder and return its path.

    Raises InputError when ``run_dir`` is missing or holds none of stats.json, trajectory.txt, states.txt.
    """
    run = load_run(run_dir)
    page = build_report_html(run)
    out = run.run_dir / "report.html"
    try:
        write_text_atomic(out, page)
    except OSError as exc:
        raise InputError(f"{out}: cannot write the report ({exc.strerror or exc})") from exc
    log.info("wrote run report %s", out)
    return out
