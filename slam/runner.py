"""``slam run``: source -> field-of-view mask -> System -> outputs (and evaluation with ground truth).

Outputs in ``out_dir`` (DESIGN.md): ``trajectory.txt`` (TUM, camera-to-world, every tracked frame),
``keyframes.txt``, ``map.ply``, ``stats.json``; with ground truth ``eval.json`` and ``eval.png``. Every
file is written atomically, and written also when the run stops half-way (Ctrl-C, an error).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from slam.config import Config
from slam.errors import InputError
from slam.evaluation.trajectory import Trajectory, write_tum, write_text_atomic
from slam.sources.base import FrameData, FrameSource
from slam.system import RunResult, System, run_frames

log = logging.getLogger(__name__)


OUTPUT_FILES = (
    "trajectory.txt", "keyframes.txt", "map.ply", "map.npz", "stats.json", "states.txt", "eval.json", "eval.png",
    "groundtruth.txt", "report.html", "mask_used.png",
)


def clear_previous_outputs(out: Path) -> None:
    """Remove a previous run's outputs, so that a run killed early never leaves files that look complete."""
    for name in OUTPUT_FILES:
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise InputError(f"{out / name}: cannot replace the previous run's output ({exc.strerror or exc})") from exc


def check_output_dir(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and make sure it is writable (InputError otherwise)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out}: output folder is not writable ({exc.strerror or exc})") from exc
    return out


def resolve_mask(cfg: Config, source: FrameSource, frames: Iterator[FrameData]) -> tuple[np.ndarray | None, Iterator[FrameData], dict]:
    """The static mask for the run and the frame iterator (frames peeked for estimation are put back)."""
    info: dict = {"fov": cfg.masks.fov}
    if cfg.source.mask:
        from slam.features.masks import load_mask

        mask = load_mask(cfg.source.mask, (source.camera.height, source.camera.width))
        info["mask_file"] = cfg.source.mask
        return mask, frames, info
    mode = cfg.masks.fov
    if mode == "none":
        return None, frames, info
    if mode == "file" or (mode == "auto" and source.mask is not None):
        info["mask_file"] = "from source" if source.mask is not None else None
        return source.mask, frames, info  # a given mask file always wins over detection
    if mode != "auto":
        from slam.errors import ConfigError

        raise ConfigError(f"masks.fov must be file, auto or none, got {mode!r}")
    from slam.features.masks import estimate_fov_mask

    head = list(itertools.islice(frames, max(int(cfg.masks.fov_frames), 1)))
    if not head:
        return None, iter(()), info
    fov = estimate_fov_mask([fd.image for fd in head], margin_px=0)
    info.update({"shape": fov.shape, "confidence": round(float(fov.confidence), 3)})
    log.info("field of view: %s (confidence %.2f)", fov.shape, fov.confidence)
    mask = None if fov.shape == "full" else fov.mask
    return mask, itertools.chain(head, frames), info


def write_outputs(out_dir: Path, result: RunResult, cfg: Config, groundtruth: Trajectory | None,
                  mask: np.ndarray | None = None) -> dict | None:
    """Write every output file of a run; returns the evaluation dict when there is ground truth."""
    from slam.viz.ply import write_ply

    write_tum(out_dir / "trajectory.txt", result.trajectory)
    write_tum(out_dir / "keyframes.txt", result.keyframes)
    tmp = out_dir / ".map.ply.tmp"
    write_ply(tmp, result.points_xyz, result.points_rgb)
    os.replace(tmp, out_dir / "map.ply")
    if mask is not None:
        import cv2

        from slam.evaluation.trajectory import write_bytes_atomic

        ok, png = cv2.imencode(".png", mask)
        if ok:
            write_bytes_atomic(out_dir / "mask_used.png", png.tobytes())
    if groundtruth is not None:
        write_tum(out_dir / "groundtruth.txt", groundtruth)  # for `slam view` and the report
    stats = dict(result.stats)
    stats["config"] = cfg.to_dict()
    evaluation = None
    if groundtruth is not None and len(result.trajectory) >= 3:
        evaluation = evaluate_run(out_dir, result.trajectory, groundtruth)
        if evaluation is not None:
            stats["ate_rmse"] = evaluation.get("ate_rmse")
            stats["ate_percent_of_path"] = evaluation.get("ate_percent_of_path")
    write_text_atomic(out_dir / "stats.json", json.dumps(stats, indent=2, default=_json_default) + "\n")
    states = "\n".join(f"{i} {t:.6f} {s} {n}" for i, t, s, n in result.states)
    write_text_atomic(out_dir / "states.txt", "# index timestamp state tracked_points\n" + states + "\n")
    if cfg.system.report:
        try:
            from slam.report import write_report

            write_report(out_dir)
        except Exception as exc:  # a report is a nicety; never lose a run over it
            log.warning("could not write report.html: %s", exc)
    return evaluation


def evaluate_run(out_dir: Path, estimate: Trajectory, groundtruth: Trajectory) -> dict | None:
    """ATE/RPE of ``estimate`` against ``groundtruth`` (Sim3 alignment), written to eval.json and eval.png."""
    from slam.errors import SlamError
    from slam.evaluation.metrics import evaluate

    try:
        res = evaluate(estimate, groundtruth, align="sim3")
    except SlamError as exc:
        log.warning("evaluation skipped: %s", exc)
        return None
    data = res.to_dict()
    write_text_atomic(out_dir / "eval.json", json.dumps(data, indent=2, default=_json_default) + "\n")
    try:
        from slam.evaluation.plot import save_eval_plot

        save_eval_plot(res, out_dir / "eval.png")
    except Exception as exc:  # a plot is a nicety; never lose a run over it
        log.warning("could not write eval.png: %s", exc)
    return data


def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


@dataclass
class RunOutcome:
    result: RunResult
    evaluation: dict | None
    out_dir: Path


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS limited to one thread while the block runs (restored after it).

    The products the pipeline hands to BLAS are small (N x 3 by 3 x 3), and OpenBLAS's idle workers
    spin between them: on a 2-core machine they took a quarter of the CPU of a threaded run (ORB tube:
    36 s of CPU instead of 28 s for the same 300 frames), time the tracking and mapping threads need.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def run_source(
    source: FrameSource,
    cfg: Config,
    out_dir: str | Path,
    on_frame: Callable | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> RunOutcome:
    """Run SLAM over ``source`` and write the outputs; re-raises an error of the run after writing them."""
    out = check_output_dir(out_dir)
    clear_previous_outputs(out)
    np.random.seed(cfg.system.seed)
    import cv2

    cv2.setRNGSeed(cfg.system.seed)
    if cfg.system.sync:
        cv2.setNumThreads(1)
    frames: Iterator[FrameData] = iter(source)
    mask, frames, mask_info = resolve_mask(cfg, source, frames)
    system = System(cfg, source.camera, mask)
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(source) or None
        bar = tqdm(total=total, unit="frame", dynamic_ncols=True, leave=True)

    def _on_frame(fd, res):
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"{res.state} {res.num_tracked} pts", refresh=False)
        if on_frame is not None:
            on_frame(system, fd, res)

    try:
        with single_threaded_blas():
            result = run_frames(system, frames, _on_frame, should_stop)
    finally:
        if bar is not None:
            bar.close()
        source.close()
    result.stats["mask"] = mask_info
    result.stats["source"] = getattr(source, "name", type(source).__name__)
    evaluation = write_outputs(out, result, cfg, source.groundtruth, mask)
    if cfg.system.save_map:
        from slam.map.persistence import save_maps

        try:
            save_maps(out / "map.npz", system.maps, system.camera, cfg.to_dict())
        except Exception as exc:  # the trajectory and stats are already written
            log.error("could not save map.npz: %s", exc)
            if result.error is None:
                result.error = exc
    if result.error is not None:
        raise result.error
    return RunOutcome(result, evaluation, out)
