"""Bundle adjustment in a child process, so that building the g2o graph (Python, edge by edge) does not hold
the GIL that the tracking thread needs.

:class:`BundleProcess` is called like :func:`slam.optim.bundle_adjust` (arrays in, :class:`BAResult` out)
and runs it in one long-lived child Python (``python -c``, so the caller's ``__main__`` is never imported
there, guarded or not). Jobs and results travel pickled over pipes; the caller's ``threading.Event`` abort is
forwarded over a third pipe while it waits. Should the child die, the call (and every later one) runs in the
caller's process instead, with a warning. ``--sync`` runs never use it: they stay in one thread.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from slam.optim.bundle import BAResult, bundle_adjust

log = logging.getLogger(__name__)

_POLL_S = 0.005  # how often the waiting caller looks at its abort event
_TOKEN = struct.Struct("<q")  # an abort names the job it is for


class _ChildError:
    """An exception raised in the child, carried back as text (its type may not unpickle)."""

    def __init__(self, text: str) -> None:
        self.text = text


class _AbortChannel:
    """Child side of the abort pipe, with the ``is_set`` / ``wait`` of a ``threading.Event``.

    Set once the parent has written the number of the job in hand (or has gone away).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = b""
        self._aborted: set[int] = set()
        self._parent_gone = False
        self.job = -1

    def _drain(self, timeout: float) -> None:
        while not self._parent_gone and select.select([self._fd], [], [], timeout)[0]:
            data = os.read(self._fd, 4096)
            if not data:
                self._parent_gone = True
                break
            self._buf += data
            n = len(self._buf) // _TOKEN.size * _TOKEN.size
            self._aborted.update(t for (t,) in _TOKEN.iter_unpack(self._buf[:n]))
            self._buf = self._buf[n:]
            timeout = 0.0

    def start(self, job: int) -> None:
        """The child takes job number ``job``; aborts of earlier jobs are forgotten."""
        self.job = job
        self._aborted = {t for t in self._aborted if t >= job}

    def is_set(self) -> bool:
        self._drain(0.0)
        return self._parent_gone or self.job in self._aborted

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = 0.05 if end is None else end - time.monotonic()
            if left <= 0:
                return False
            self._drain(left)
        return True


def _serve(job_fd: int, result_fd: int, abort_fd: int) -> None:
    """Child main loop: ``(number, args, kwargs)`` in, :class:`BAResult` (or :class:`_ChildError`) out."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends us
    abort = _AbortChannel(abort_fd)
    with os.fdopen(job_fd, "rb") as jobs, os.fdopen(result_fd, "wb") as results:
        while True:
            try:
                number, args, kwargs = pickle.load(jobs)
            except (EOFError, OSError, pickle.UnpicklingError):
                return  # the parent closed the pipe, or is gone
            abort.start(number)
            try:
                result: Any = bundle_adjust(*args, abort=abort, **kwargs)
            except Exception:  # reported to the caller, who raises it
                result = _ChildError(traceback.format_exc())
            try:
                pickle.dump(result, results, protocol=pickle.HIGHEST_PROTOCOL)
                results.flush()
            except OSError:
                return


def _child_env() -> dict[str, str]:
    """The caller's environment, with this package importable and numpy's BLAS on one thread."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"  # the child's small products; idle BLAS workers would spin on the cores
    return env


class BundleProcess:
    """``bundle_adjust`` run in a child process; one call at a time (calls from several threads queue)."""

    def __init__(self) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        abort_r, abort_w = os.pipe()
        code = f"from slam.optim.bundle_process import _serve; _serve({job_r}, {res_w}, {abort_r})"
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(job_r, res_w, abort_r),
                                          env=_child_env(), stdin=subprocess.DEVNULL)
        except BaseException:
            for fd in (job_w, res_r, abort_w):
                os.close(fd)
            raise
        finally:
            for fd in (job_r, res_w, abort_r):
                os.close(fd)
        self._jobs = os.fdopen(job_w, "wb")
        self._results = os.fdopen(res_r, "rb")
        self._abort_fd = abort_w
        self._number = 0
        self._lock = threading.Lock()
        self._broken = False

    @property
    def alive(self) -> bool:
        return not self._broken and self._proc.poll() is None

    def __call__(self, *args: Any, abort: threading.Event | None = None, **kwargs: Any) -> BAResult:
        with self._lock:
            if not self._broken:
                try:
                    if self._proc.poll() is not None:
                        raise EOFError(f"the bundle adjustment process exited (code {self._proc.returncode})")
                    return self._run_in_child(args, kwargs, abort)
                except (EOFError, OSError, pickle.UnpicklingError) as exc:
                    self._broken = True
                    log.warning("bundle adjustment process failed (%s); bundle adjustment runs in this "
                                "process from now on", exc)
        return bundle_adjust(*args, abort=abort, **kwargs)

    def _run_in_child(self, args: tuple, kwargs: dict, abort: threading.Event | None) -> BAResult:
        self._number += 1
        sent_abort = False
        if abort is not None and abort.is_set():
            os.write(self._abort_fd, _TOKEN.pack(self._number))
            sent_abort = True
        pickle.dump((self._number, args, kwargs), self._jobs, protocol=pickle.HIGHEST_PROTOCOL)
        self._jobs.flush()
        while not select.select([self._results], [], [], _POLL_S)[0]:
            if not sent_abort and abort is not None and abort.is_set():
                os.write(self._abort_fd, _TOKEN.pack(self._number))
                sent_abort = True
            if self._proc.poll() is not None:
                raise EOFError(f"the bundle adjustment process exited (code {self._proc.returncode})")
        result = pickle.load(self._results)
        if isinstance(result, _ChildError):
            raise RuntimeError(f"bundle adjustment failed in its process:\n{result.text}")
        return result

    def close(self, timeout: float = 5.0) -> None:
        """End the child (the job in hand is aborted after its current iteration); kill it after ``timeout`` s."""
        try:
            os.write(self._abort_fd, _TOKEN.pack(self._number))
        except OSError:
            pass
        with self._lock:
            self._broken = True
            for f in (self._jobs, self._results):
                try:
                    f.close()
                except OSError:
                    pass
            try:
                os.close(self._abort_fd)
            except OSError:
                pass
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(1.0)
