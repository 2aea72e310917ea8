"""One benchmark job (a sequence run with a configuration) and the ways to run many of them.

- :func:`run_job` runs a :class:`Job` in the current process and returns its row (a flat dict of
  accuracy, speed and memory figures); an error of the run gives a ``failed`` row, not an exception.
- :func:`execute_isolated` runs a job in a fresh Python process (``python -m slam.bench.jobs JOB.json``),
  so peak memory is the run's own and a crash (segfault, out of memory, timeout) becomes a failed row.
- :func:`run_local` runs jobs on N local worker processes; :func:`run_ray` sends the same
  :func:`execute_isolated` to a Ray cluster as remote tasks (sequence paths must be visible to the nodes).

Memory: ``peak_rss_mb`` is the process' high-water mark (``getrusage``), ``run_peak_rss_mb`` the highest
RSS sampled (psutil, every ``rss_interval_s``) while the sequence ran, ``rss_before_mb`` the RSS after
imports and before the first frame; ``gpu_peak_mb`` is ``torch.cuda.max_memory_allocated`` when the run
used CUDA.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

ROW_FILE = "row.json"
JOB_FILE = "job.json"
LOG_FILE = "worker.log"
STATUSES = ("ok", "failed", "timeout")


@dataclass
class Job:
    """Everything a worker needs to run one sequence with one configuration (JSON-serialisable).

    ``overrides`` are applied in order on top of ``config`` (the sequence's own, the variant's, then the
    command line's). ``sample_every`` > 0 records memory and map size every that many frames (soak).
    """

    id: str
    suite: str
    sequence: str
    path: str
    variant: str
    out_dir: str
    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    calib: str | None = None
    repeat: int = 0
    timeout_s: float | None = None
    threads: int | None = None
    sample_every: int = 0
    rss_interval_s: float = 0.05

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Job":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class MemorySampler:
    """A daemon thread that samples this process' RSS every ``interval_s`` and keeps the peak (MiB)."""

    def __init__(self, interval_s: float = 0.05) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = max(float(interval_s), 0.001)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.peak_mb = self.current_mb()

    def current_mb(self) -> float:
        return self._proc.memory_info().rss / 2**20

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, self.current_mb())

    def __enter__(self) -> "MemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())


def base_row(job: Job) -> dict:
    """The identifying part of a job's row."""
    return {
        "id": job.id, "suite": job.suite, "sequence": job.sequence, "config": job.variant,
        "repeat": job.repeat, "status": "failed", "error": None, "path": job.path,
        "base_config": job.config, "overrides": list(job.overrides), "out_dir": job.out_dir,
        "host": platform.node(),
    }


def failed_row(job: Job, status: str, error: str) -> dict:
    row = base_row(job)
    row.update(status=status, error=error)
    return row


def _peak_rss_mb() -> float | None:
    try:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20
    except (ImportError, OSError):
        return None


def _gpu_figures() -> dict:
    """Peak CUDA memory of this process when torch ran on CUDA (no torch import otherwise)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    try:
        if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
            return {}
        return {"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
                "gpu_name": torch.cuda.get_device_name()}
    except Exception:  # a broken CUDA setup must not lose the row
        return {}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _num(x, digits: int = 4):
    if x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return round(x, digits) if x == x and abs(x) != float("inf") else None


def fill_metrics(row: dict, stats: dict | None, evaluation: dict | None) -> dict:
    """Copy the figures of ``stats.json`` and ``eval.json`` (either may be None) into ``row``."""
    from slam.bench.profile import per_frame_ms

    if stats:
        for key in ("frames", "tracked", "lost", "keyframes", "keyframes_culled", "map_points", "maps",
                    "resets", "device", "features", "frontend", "sync"):
            row[key] = stats.get(key)
        row["tracked_pct"] = _num(100.0 * float(stats.get("tracked_fraction") or 0.0), 2)
        row["fps"] = _num(stats.get("fps"), 3)
        row["wall_s"] = _num(stats.get("wall_s"), 3)
        stage = {k: round(v, 3) for k, (v, _) in per_frame_ms(stats).items()}
        row["stage_ms"] = stage
        frames = int(stats.get("frames") or 0)
        row["ms_per_frame"] = _num(1000.0 * float(stats.get("wall_s") or 0.0) / frames, 3) if frames else None
    ev = evaluation or {}
    row["ate_rmse"] = _num(ev.get("ate_rmse"), 6)
    row["ate_pct"] = _num(ev.get("ate_percent_of_path"), 4)
    row["rpe_trans_rmse"] = _num(ev.get("rpe_trans_rmse"), 6)
    row["rpe_rot_deg_rmse"] = _num(ev.get("rpe_rot_deg_rmse"), 4)
    tf = ev.get("tracked_fraction")
    row["gt_tracked_pct"] = _num(100.0 * tf, 2) if tf is not None else None
    row["scale"] = _num(ev.get("scale"), 6)
    return row


def run_job(job: Job) -> dict:
    """Run ``job`` in this process; the row (``status`` ok or failed, never raises for a run's error)."""
    from slam.config import load_config
    from slam.runner import run_source
    from slam.sources import open_source

    row = base_row(job)
    row["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    out = Path(job.out_dir)
    t0 = time.perf_counter()
    samples: list[dict] = []
    sampler = MemorySampler(job.rss_interval_s)
    row["rss_before_mb"] = round(sampler.current_mb(), 1)
    stats = evaluation = None
    try:
        cfg = load_config(job.config, job.overrides)
        source = open_source(job.path, cfg.source, calib=job.calib)
        on_frame = _soak_sampler(job.sample_every, sampler, samples) if job.sample_every > 0 else None
        with sampler:
            outcome = run_source(source, cfg, out, on_frame=on_frame, progress=False)
        stats, evaluation = outcome.result.stats, outcome.evaluation
        if outcome.result.interrupted:
            row["error"] = f"interrupted after {stats.get('frames')} frames"
        else:
            row["status"] = "ok"
    except Exception as exc:  # the row records it; the bench goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["traceback"] = traceback.format_exc(limit=8)
        stats = _read_json(out / "stats.json")
        evaluation = _read_json(out / "eval.json")
    fill_metrics(row, stats, evaluation)
    row["run_peak_rss_mb"] = round(sampler.peak_mb, 1)
    row["peak_rss_mb"] = _num(_peak_rss_mb(), 1)
    row.update(_gpu_figures())
    row["job_s"] = round(time.perf_counter() - t0, 3)
    if samples:
        row["samples"] = samples
    return row


def _soak_sampler(every: int, sampler: MemorySampler, samples: list[dict]) -> Callable:
    """An ``on_frame(system, fd, result)`` that records RSS and map size every ``every`` frames.

    ``keyframes``/``map_points``: all maps of the atlas; ``map_keyframes``/``map_map_points``: the current
    (newest) map, the one ``mapping.max_keyframes`` bounds.
    """
    t0 = time.perf_counter()

    def on_frame(system, fd, result) -> None:
        n = system.num_frames
        if n % every and n != 1:
            return
        maps = list(system.maps)
        current = maps[-1] if maps else None
        samples.append({
            "frame": n, "t_s": round(time.perf_counter() - t0, 3), "rss_mb": round(sampler.current_mb(), 2),
            "keyframes": sum(len(m.keyframes) for m in maps), "map_points": sum(len(m.points) for m in maps),
            "maps": sum(1 for m in maps if m.keyframes), "state": result.state,
            "map_keyframes": len(current.keyframes) if current is not None else 0,
            "map_map_points": len(current.points) if current is not None else 0,
        })

    return on_frame


# ---------------------------------------------------------------------------------------------- isolation
def execute_isolated(job: Job | dict, cancel: threading.Event | None = None) -> dict:
    """Run ``job`` in a fresh Python process and return its row; crashes and timeouts give failed rows.

    The worker reads ``out_dir/job.json`` and writes ``out_dir/row.json``; its log goes to
    ``out_dir/worker.log``. This is the function Ray runs remotely, too. Setting ``cancel`` interrupts the
    worker (SIGINT: it writes what it has, then stops) and returns a ``failed`` row.
    """
    from slam.evaluation.trajectory import write_text_atomic

    if isinstance(job, dict):
        job = Job.from_dict(job)
    out = Path(job.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / ROW_FILE).unlink(missing_ok=True)
    write_text_atomic(out / JOB_FILE, json.dumps(job.to_dict(), indent=2) + "\n")
    env = dict(os.environ)
    if job.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[var] = str(job.threads)
    cmd = [sys.executable, "-m", "slam.bench.jobs", str(out / JOB_FILE)]
    t0 = time.perf_counter()
    with open(out / LOG_FILE, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)
        deadline = None if job.timeout_s is None else t0 + float(job.timeout_s)
        try:
            while True:
                step = None if cancel is None else 0.5
                if deadline is not None:
                    left = max(deadline - time.perf_counter(), 0.0)
                    step = left if step is None else min(step, left)
                try:
                    code = proc.wait(timeout=step)
                    break
                except subprocess.TimeoutExpired:
                    if deadline is not None and time.perf_counter() >= deadline:
                        _stop(proc, graceful=False)
                        return _with_time(failed_row(job, "timeout", f"timed out after {job.timeout_s:g} s"), t0)
                    if cancel is not None and cancel.is_set():
                        _stop(proc, graceful=True)
                        return _with_time(failed_row(job, "failed", "cancelled (the bench was interrupted)"), t0)
        except BaseException:  # Ctrl-C here, or the pool shutting down: never leave an orphan worker
            _stop(proc, graceful=False)
            raise
    row = _read_json(out / ROW_FILE)
    if row is None:
        tail = _log_tail(out / LOG_FILE)
        reason = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return _with_time(failed_row(job, "failed", f"worker {reason} without a result{tail}"), t0)
    return row


def _stop(proc: subprocess.Popen, graceful: bool) -> None:
    """End a worker: SIGINT first when ``graceful`` (it writes its outputs), SIGKILL after 10 s or at once."""
    import signal

    if graceful:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10.0)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.kill()
    proc.wait()


def _with_time(row: dict, t0: float) -> dict:
    row["job_s"] = round(time.perf_counter() - t0, 3)
    return row


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return (": " + " | ".join(text[-lines:])) if text else ""


# ---------------------------------------------------------------------------------------------- executors
def run_local(jobs: Iterable[Job], workers: int = 1, on_row: Callable[[dict], None] | None = None) -> list[dict]:
    """Run ``jobs`` on ``workers`` local worker processes (one fresh process per job); rows in job order."""
    jobs = list(jobs)
    rows: list[dict | None] = [None] * len(jobs)
    cancel = threading.Event()
    with ThreadPoolExecutor(max_workers=max(int(workers), 1), thread_name_prefix="bench") as pool:
        futures = {pool.submit(execute_isolated, job, cancel): i for i, job in enumerate(jobs)}
        pending = set(futures)
        try:
            while pending:
                # a timed wait keeps the main thread responsive to Ctrl-C
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = futures[fut]
                    try:
                        rows[i] = fut.result()
                    except Exception as exc:  # a bug in the harness itself: keep the other rows
                        rows[i] = failed_row(jobs[i], "failed", f"harness error: {type(exc).__name__}: {exc}")
                    if on_row is not None:
                        on_row(rows[i])
        except BaseException:
            cancel.set()  # running workers are interrupted, queued jobs never start
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return [r for r in rows if r is not None]


def run_ray(jobs: Iterable[Job], address: str | None = "local", on_row: Callable[[dict], None] | None = None,
            num_cpus: int | None = None) -> list[dict]:
    """Run ``jobs`` as Ray tasks (one CPU each) on the cluster at ``address``; rows in job order.

    ``address``: ``"local"`` (or None) starts a local Ray instance (``num_cpus`` CPUs) for this call;
    ``"auto"`` or ``"ray://host:port"`` / ``"host:port"`` joins an existing cluster. When Ray is already
    initialised in this process that instance is used as it is and left running.
    """
    from slam.errors import DependencyError

    try:
        import ray
    except ImportError as exc:
        raise DependencyError("--ray needs Ray: pip install 'slam[bench-ray]' (or: pip install ray)") from exc
    jobs = list(jobs)
    started = False
    if not ray.is_initialized():
        kwargs: dict = {"log_to_driver": False}
        if address in (None, "local"):
            kwargs["num_cpus"] = num_cpus
        else:
            kwargs["address"] = address
        ray.init(**kwargs)
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(execute_isolated)
        refs = {task.remote(job.to_dict()): i for i, job in enumerate(jobs)}
        rows: list[dict | None] = [None] * len(jobs)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                i = refs[ref]
                try:
                    rows[i] = ray.get(ref)
                except Exception as exc:  # the node died, the task was cancelled ...
                    rows[i] = failed_row(jobs[i], "failed", f"ray task failed: {type(exc).__name__}: {exc}")
                if on_row is not None:
                    on_row(rows[i])
    finally:
        if started:
            ray.shutdown()
    return [r for r in rows if r is not None]


# ---------------------------------------------------------------------------------------------- worker entry
def main(argv: list[str] | None = None) -> int:
    """``python -m slam.bench.jobs JOB.json``: run the job, write ``row.json`` beside it."""
    from slam.evaluation.trajectory import write_text_atomic

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m slam.bench.jobs JOB.json\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job = Job.from_dict(json.loads(Path(argv[0]).read_text(encoding="utf-8")))
    if job.threads:
        import cv2

        cv2.setNumThreads(int(job.threads))
    row = run_job(job)
    write_text_atomic(Path(job.out_dir) / ROW_FILE, json.dumps(row, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
