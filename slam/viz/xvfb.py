"""A display for Qt's OpenGL widgets on a headless machine: start Xvfb when there is no X display.

Qt's ``offscreen`` platform renders OpenGL widgets blank, so headless snapshots need a virtual X server.
:func:`ensure_display` starts ``Xvfb`` on a free display number (Xvfb picks it: ``-displayfd``), points
``DISPLAY`` at it and selects Qt's ``xcb`` platform for the duration of the ``with`` block.

Lifetime: Qt keeps its X connection until the process exits and aborts the process when the server dies
under it. So when a Qt application exists at the end of the block the server is left running; it is
started with ``-terminate`` (it exits when its last client, Qt, disconnects at process exit) and, from the
main thread, with a parent-death signal as a backstop. Otherwise the server is stopped at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Iterator

from slam.errors import DependencyError

log = logging.getLogger(__name__)

APT_HINT = "sudo apt-get install xvfb libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libxcb-cursor0"


def has_display() -> bool:
    """True when a GUI can open here: an X or Wayland display is set, or the platform is not X11-based."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _qt_app_exists() -> bool:
    """Whether this process already has a Qt application (checked without importing Qt)."""
    for name in ("PySide6.QtWidgets", "PyQt6.QtWidgets", "PySide2.QtWidgets", "PyQt5.QtWidgets"):
        mod = sys.modules.get(name)
        if mod is not None and mod.QApplication.instance() is not None:
            return True
    return False


def _parent_death_signal() -> None:  # runs in the child between fork and exec
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def start_xvfb(screen: str = "1920x1080x24", timeout: float = 10.0) -> tuple[subprocess.Popen, str]:
    """Start ``Xvfb`` on a free display; returns the process and the display name (``':N'``).

    Raises DependencyError when the binary is missing or the server does not come up within ``timeout``.
    """
    binary = shutil.which("Xvfb")
    if binary is None:
        raise DependencyError(f"Xvfb is not installed and there is no X display (DISPLAY is unset): {APT_HINT}")
    read_fd, write_fd = os.pipe()
    errlog = tempfile.TemporaryFile()  # a file, not a pipe: Xvfb must never block or die writing to stderr
    in_main = threading.current_thread() is threading.main_thread() and sys.platform.startswith("linux")
    try:
        proc = subprocess.Popen(
            [binary, "-displayfd", str(write_fd), "-screen", "0", screen, "-nolisten", "tcp", "-terminate"],
            pass_fds=(write_fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errlog,
            preexec_fn=_parent_death_signal if in_main else None,
        )
    finally:
        os.close(write_fd)
    buf = b""
    deadline = time.monotonic() + timeout
    try:
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([read_fd], [], [], max(left, 0.0))
            if not ready:
                break
            chunk = os.read(read_fd, 32)
            if not chunk:
                break
            buf += chunk
    finally:
        os.close(read_fd)
    if not buf.strip().isdigit():
        proc.kill()
        proc.wait(timeout=5)
        errlog.seek(0)
        tail = errlog.read().decode(errors="replace").strip().splitlines()[-3:]
        errlog.close()
        raise DependencyError(f"Xvfb did not start within {timeout:.0f} s: {' | '.join(tail) or 'no output'}")
    errlog.close()  # the child keeps its own descriptor
    display = ":" + buf.decode().strip()
    log.info("started Xvfb on display %s (pid %d)", display, proc.pid)
    return proc, display


@contextlib.contextmanager
def ensure_display(force_xvfb: bool = False, screen: str = "1920x1080x24") -> Iterator[str | None]:
    """Make sure Qt can open OpenGL windows inside the block; yields the display name (None off X11).

    Uses the existing display when there is one (unless ``force_xvfb``), else starts Xvfb and sets
    ``DISPLAY`` and ``QT_QPA_PLATFORM=xcb`` until the block ends. Raises DependencyError with the install
    command when there is neither a display nor Xvfb.
    """
    if not force_xvfb and has_display():
        yield os.environ.get("DISPLAY")
        return
    if not sys.platform.startswith("linux"):
        yield None
        return
    if _qt_app_exists():
        log.warning("a Qt application already exists; it keeps its display, a new Xvfb would not be used")
    proc, display = start_xvfb(screen)
    saved = {k: os.environ.get(k) for k in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    os.environ["DISPLAY"] = display
    os.environ["QT_QPA_PLATFORM"] = "xcb"
    os.environ.pop("WAYLAND_DISPLAY", None)
    try:
        yield display
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if _qt_app_exists():
            log.debug("Qt is connected to %s: Xvfb (pid %d) exits with this process", display, proc.pid)
        else:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
