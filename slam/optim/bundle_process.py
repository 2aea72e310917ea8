"""Bundle adjustment in a child process, so that building the g2o graph (Python, edge by edge) does not hold
the GIL that the tracking thread needs.

:class:`BundleProcess` is called like :func:`slam.optim.bundle_adjust` (arrays in, :class:`BAResult` out)
and runs it in one long-lived ``spawn`` child. The caller's ``threading.Event`` abort is forwarded to the
child while it waits. Should the child die, the call (and every later one) runs in the caller's process
instead, with a warning. ``--sync`` runs never use it: they stay in one thread and deterministic.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import threading
from typing import Any

from slam.optim.bundle import BAResult, bundle_adjust

log = logging.getLogger(__name__)

_POLL_S = 0.005  # how often the waiting caller looks at its abort event


class _ChildError:
    """An exception raised in the child, carried back as text (its type may not unpickle)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _serve(conn: Any, abort: Any) -> None:
    """Child main loop: ``(args, kwargs)`` in, :class:`BAResult` (or :class:`_ChildError`) out; None ends it."""
    import signal
    import traceback

    from threadpoolctl import threadpool_limits

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops us
    with threadpool_limits(1):  # numpy's small products; idle BLAS workers would spin on the cores
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            if job is None:
                return
            args, kwargs = job
            try:
                result: Any = bundle_adjust(*args, abort=abort, **kwargs)
            except Exception:  # reported to the caller, who raises it
                result = _ChildError(traceback.format_exc())
            try:
                conn.send(result)
            except (EOFError, OSError):
                return


class BundleProcess:
    """``bundle_adjust`` run in a child process; one call at a time (calls from several threads queue)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._abort = ctx.Event()
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, self._abort), name="bundle-adjust", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()
        self._broken = False

    @property
    def alive(self) -> bool:
        return not self._broken and self._proc.is_alive()

    def __call__(self, *args: Any, abort: threading.Event | None = None, **kwargs: Any) -> BAResult:
        with self._lock:
            if not self._broken:
                try:
                    if not self._proc.is_alive():
                        raise EOFError(f"the bundle adjustment process exited (code {self._proc.exitcode})")
                    return self._run_in_child(args, kwargs, abort)
                except (EOFError, OSError) as exc:
                    self._broken = True
                    log.warning("bundle adjustment process failed (%s); bundle adjustment runs in this "
                                "process from now on", exc)
        return bundle_adjust(*args, abort=abort, **kwargs)

    def _run_in_child(self, args: tuple, kwargs: dict, abort: threading.Event | None) -> BAResult:
        self._abort.clear()
        if abort is not None and abort.is_set():
            self._abort.set()
        self._conn.send((args, kwargs))
        while not self._conn.poll(_POLL_S):
            if abort is not None and abort.is_set() and not self._abort.is_set():
                self._abort.set()
            if not self._proc.is_alive():
                raise EOFError("the bundle adjustment process exited")
        result = self._conn.recv()
        if isinstance(result, _ChildError):
            raise RuntimeError(f"bundle adjustment failed in its process:\n{result.text}")
        return result

    def close(self, timeout: float = 5.0) -> None:
        """End the child (the job in hand is aborted after its current iteration); kill it after ``timeout`` s."""
        self._abort.set()
        with self._lock:
            if self._proc.is_alive() and not self._broken:
                try:
                    self._conn.send(None)
                except (EOFError, OSError):
                    pass
            self._broken = True
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(1.0)
        self._conn.close()
