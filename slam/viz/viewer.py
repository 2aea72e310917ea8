"""The live 3D viewer (pyqtgraph.opengl + Qt) and headless one-shot rendering of a snapshot to PNG.

The GUI runs in the main thread. SLAM threads hand it immutable :class:`ViewerSnapshot` objects through a
:class:`SnapshotChannel` that drops old ones, and the viewer polls the channel with a QTimer, so a slow
viewer never slows tracking. Qt, pyqtgraph and PyOpenGL are imported only when a viewer is built, with a
DependencyError naming the install command when one is missing.

Window: the 3D view (map points coloured from the images, keyframe frustums in blue, the current camera in
green, the trajectory in yellow, the Sim3-aligned ground truth in magenta), a 2D panel with the current
frame (unusable pixels dimmed blue, tracked keypoints green, the others red), a status line, and the
controls pause/resume (Space), step (N), follow camera (F), reset view (R) and screenshot (S).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from pathlib import Path

import numpy as np

from slam.errors import DependencyError, InputError
from slam.viz import scene
from slam.viz.snapshot import PlaybackControl, SnapshotChannel, ViewerSnapshot
from slam.viz.xvfb import APT_HINT, ensure_display, has_display

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install pyqtgraph PySide6-Essentials PyOpenGL  (or: pip install -e '.[viewer]')"


def import_qt():
    """``(pg, gl, QtCore, QtGui, QtWidgets)``; raises DependencyError naming what to install."""
    try:
        import pyqtgraph as pg
        from pyqtgraph.Qt import QtCore, QtGui, QtWidgets
    except ImportError as exc:
        raise DependencyError(f"the 3D viewer needs pyqtgraph and a Qt binding (PySide6): {INSTALL_HINT} ({exc})") from exc
    try:
        import pyqtgraph.opengl as gl
    except ImportError as exc:
        raise DependencyError(f"the 3D viewer needs PyOpenGL for pyqtgraph.opengl: {INSTALL_HINT} ({exc})") from exc
    return pg, gl, QtCore, QtGui, QtWidgets


def get_qapp(title: str = "slam"):
    """The process's QApplication, created once and reused by every viewer and render in the process.

    It is created with shared OpenGL contexts: pyqtgraph compiles each item type's shader once per process,
    so a second window's context must share the first one's objects. Raises DependencyError when there is
    no display to connect to.
    """
    pg, _gl, QtCore, _g, QtWidgets = import_qt()
    app = QtWidgets.QApplication.instance()
    if app is None:
        if not has_display():
            raise DependencyError(
                "no display for the viewer (DISPLAY is unset): run on a desktop, use --snapshot to render "
                f"headless under Xvfb, or install Xvfb: {APT_HINT}"
            )
        QtCore.QCoreApplication.setAttribute(QtCore.Qt.ApplicationAttribute.AA_ShareOpenGLContexts, True)
        app = pg.mkQApp(title)
    elif not app.testAttribute(QtCore.Qt.ApplicationAttribute.AA_ShareOpenGLContexts):
        log.warning("the QApplication was created without AA_ShareOpenGLContexts; a second 3D window in this "
                    "process may draw nothing (create it with slam.viz.viewer.get_qapp())")
    return app


_DARK_STYLE = """
QWidget { background-color: #121217; color: #d8d8de; font-size: 12px; }
QPushButton { background-color: #23232b; border: 1px solid #3a3a46; padding: 4px 10px; border-radius: 3px; }
QPushButton:hover { background-color: #2e2e39; }
QCheckBox { padding: 2px 6px; }
QCheckBox::indicator { width: 12px; height: 12px; border: 1px solid #8a8a96; background-color: #23232b; }
QCheckBox::indicator:checked { background-color: #33ff59; }
QSplitter::handle { background-color: #2a2a33; }
"""


class ViewerWindow:
    """The viewer's widgets and how a snapshot is drawn into them (composition, no Qt subclass).

    Attributes:
        widget: the top-level QWidget.
        view3d: the ``GLViewWidget`` of the map.
    """

    def __init__(self, title: str = "slam", size: tuple[int, int] = (1400, 820), controls: bool = True) -> None:
        pg, gl, QtCore, QtGui, QtWidgets = import_qt()
        self._pg, self._QtGui, self._QtCore = pg, QtGui, QtCore
        self.snapshot: ViewerSnapshot | None = None
        self._extent: tuple[np.ndarray, float] = (np.zeros(3), 1.0)
        self.auto_fit = True
        self.follow = False
        self._view_set_by_us: tuple | None = None

        self.widget = QtWidgets.QWidget()
        self.widget.setWindowTitle(title)
        self.widget.setStyleSheet(_DARK_STYLE)
        self.widget.resize(*size)
        layout = QtWidgets.QVBoxLayout(self.widget)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.setSpacing(4)

        splitter = QtWidgets.QSplitter(QtCore.Qt.Orientation.Horizontal)
        self.view3d = gl.GLViewWidget()
        self.view3d.setBackgroundColor(tuple(int(255 * c) for c in scene.COLOURS["background"][:3]))
        self.view3d.setMinimumSize(200, 150)
        splitter.addWidget(self.view3d)

        self.panel = pg.GraphicsLayoutWidget()
        self.panel.setBackground((18, 18, 23))
        self.panel.setMinimumWidth(160)
        self._vb = self.panel.addViewBox()
        self._vb.setAspectLocked(True)
        self._vb.invertY(True)
        self._vb.setMenuEnabled(False)
        self._img = pg.ImageItem(axisOrder="row-major")
        self._vb.addItem(self._img)
        self._kp_other = pg.ScatterPlotItem(size=4, pen=None, brush=pg.mkBrush(255, 90, 77, 200))
        self._kp_tracked = pg.ScatterPlotItem(size=5, pen=None, brush=pg.mkBrush(51, 255, 89, 230))
        self._vb.addItem(self._kp_other)
        self._vb.addItem(self._kp_tracked)
        splitter.addWidget(self.panel)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 1)
        splitter.setSizes([int(size[0] * 0.72), int(size[0] * 0.28)])
        layout.addWidget(splitter, 1)

        self._items = {  # in drawing order: where lines coincide the estimate wins over the ground truth
            "points": gl.GLScatterPlotItem(pos=np.zeros((1, 3), np.float32), size=3, pxMode=True, glOptions="opaque"),
            "trajectory": gl.GLLinePlotItem(mode="line_strip", width=2.5, antialias=True, glOptions="opaque",
                                            color=scene.COLOURS["trajectory"]),
            "groundtruth": gl.GLLinePlotItem(mode="line_strip", width=2, antialias=True, glOptions="opaque",
                                             color=scene.COLOURS["groundtruth"]),
            "keyframes": gl.GLLinePlotItem(mode="lines", width=1.2, antialias=True, glOptions="opaque",
                                           color=scene.COLOURS["keyframes"]),
            "camera": gl.GLLinePlotItem(mode="lines", width=3, antialias=True, glOptions="opaque",
                                        color=scene.COLOURS["camera"]),
        }
        for item in self._items.values():
            item.setVisible(False)
            self.view3d.addItem(item)

        self.status = QtWidgets.QLabel("waiting for the first frame ...")
        self.status.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.legend = QtWidgets.QLabel(scene.legend_html(False))
        self.legend.setTextFormat(QtCore.Qt.TextFormat.RichText)
        self.legend.setAlignment(QtCore.Qt.AlignmentFlag.AlignRight | QtCore.Qt.AlignmentFlag.AlignVCenter)
        for label in (self.status, self.legend):  # never let the text force a minimum window width
            label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
        info = QtWidgets.QHBoxLayout()
        info.addWidget(self.status, 3)
        info.addWidget(self.legend, 2)
        layout.addLayout(info)

        self.buttons: dict[str, object] = {}
        if controls:
            row = QtWidgets.QHBoxLayout()
            for key, label in (("pause", "Pause"), ("step", "Step"), ("reset", "Reset view"), ("screenshot", "Screenshot")):
                button = QtWidgets.QPushButton(label)
                button.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
                row.addWidget(button)
                self.buttons[key] = button
            follow = QtWidgets.QCheckBox("Follow camera")
            follow.setFocusPolicy(QtCore.Qt.FocusPolicy.NoFocus)
            follow.toggled.connect(self.set_follow)
            row.addWidget(follow)
            self.buttons["follow"] = follow
            self.message = QtWidgets.QLabel("")
            self.message.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
            row.addWidget(self.message, 1)
            layout.addLayout(row)
            self.buttons["reset"].clicked.connect(self.reset_view)
        else:
            self.message = None

    # ------------------------------------------------------------------------------------------ view
    def _camera_opts(self) -> tuple:
        o = self.view3d.opts
        c = o["center"]
        return (round(c.x(), 9), round(c.y(), 9), round(c.z(), 9), round(o["distance"], 9),
                round(o.get("elevation", 0.0), 6), round(o.get("azimuth", 0.0), 6))

    def _user_moved_view(self) -> bool:
        return self._view_set_by_us is not None and self._camera_opts() != self._view_set_by_us

    def fit_view(self) -> None:
        """Point the 3D view at the whole scene (oblique, from behind and above the first camera)."""
        if self.snapshot is None:
            return
        centre, radius = self._extent
        c = scene.to_display(centre)[0]
        self.view3d.setCameraPosition(pos=self._QtGui.QVector3D(float(c[0]), float(c[1]), float(c[2])),
                                      distance=2.3 * radius, elevation=28, azimuth=-62)
        self._view_set_by_us = self._camera_opts()

    def reset_view(self) -> None:
        """Fit the view to the scene and keep fitting it as the map grows (until the user moves it)."""
        self.auto_fit = True
        self.fit_view()

    def set_follow(self, on: bool) -> None:
        """Keep the current camera at the centre of the 3D view."""
        self.follow = bool(on)
        if self.snapshot is not None:
            self._apply_view()

    def _apply_view(self) -> None:
        snap = self.snapshot
        if self.auto_fit and self._user_moved_view():
            self.auto_fit = False  # the user took over; "Reset view" gives it back
        if self.follow and snap is not None and snap.T_wc is not None:
            c = scene.to_display(snap.T_wc[:3, 3])[0]
            self.view3d.setCameraPosition(pos=self._QtGui.QVector3D(float(c[0]), float(c[1]), float(c[2])))
            if self.auto_fit:
                self.view3d.setCameraPosition(distance=1.2 * self._extent[1])
            self._view_set_by_us = self._camera_opts()
        elif self.auto_fit:
            self.fit_view()

    # ------------------------------------------------------------------------------------------ draw
    def draw(self, snap: ViewerSnapshot, paused: bool = False) -> None:
        """Show ``snap`` in the 3D view, the 2D panel and the status line."""
        self.snapshot = snap
        self._extent = scene.scene_extent(snap)
        items = self._items
        if len(snap.points_xyz):
            finite = np.all(np.isfinite(snap.points_xyz), axis=1)
            pts = scene.to_display(snap.points_xyz[finite])
            size = 3.0 if len(pts) > 3000 else 4.0
            items["points"].setData(pos=pts, color=scene.point_colours(snap.points_rgb[finite]), size=size)
            items["points"].setVisible(len(pts) > 0)
        else:
            items["points"].setVisible(False)
        self._set_line("trajectory", snap.trajectory_xyz, strip=True)
        self._set_line("groundtruth", snap.gt_xyz, strip=True)
        aspect = 4.0 / 3.0
        if snap.image is not None and snap.image.shape[0] > 0:
            aspect = snap.image.shape[1] / snap.image.shape[0]
        fscale = scene.frustum_scale(snap, self._extent[1])
        self._set_line("keyframes", scene.frustum_segments(snap.keyframe_T_wc, fscale, aspect), strip=False)
        cam = scene.frustum_segments(snap.T_wc, 1.6 * fscale, aspect) if snap.T_wc is not None else None
        self._set_line("camera", cam, strip=False)
        self._draw_panel(snap)
        self.status.setText(scene.status_text(snap, paused))
        self.legend.setText(scene.legend_html(snap.gt_xyz is not None and len(snap.gt_xyz) >= 2))
        self._apply_view()

    def _set_line(self, name: str, xyz: np.ndarray | None, strip: bool) -> None:
        item = self._items[name]
        if xyz is None or len(xyz) < 2:
            item.setVisible(False)
            return
        xyz = np.asarray(xyz)
        finite = np.all(np.isfinite(xyz), axis=1)
        if strip:
            xyz = xyz[finite]
        elif not finite.all():
            pair_ok = finite.reshape(-1, 2).all(axis=1)
            xyz = xyz.reshape(-1, 2, 3)[pair_ok].reshape(-1, 3)
        if len(xyz) < 2:
            item.setVisible(False)
            return
        item.setData(pos=scene.to_display(xyz))
        item.setVisible(True)

    def _draw_panel(self, snap: ViewerSnapshot) -> None:
        rgb = scene.panel_image(snap.image, snap.mask)
        self.panel.setVisible(rgb is not None or len(snap.keypoints) > 0)  # a replay has no frame: 3D only
        if rgb is None:
            self._img.clear()
            self._img.setVisible(False)
        else:
            self._img.setImage(rgb, autoLevels=False, levels=(0, 255))
            self._img.setVisible(True)
        kp = np.asarray(snap.keypoints, np.float64) + 0.5  # pixel centres at integers -> image item cells
        tracked = np.asarray(snap.tracked, bool)
        self._kp_tracked.setData(pos=kp[tracked])
        self._kp_other.setData(pos=kp[~tracked])
        if rgb is not None:
            self._vb.setRange(xRange=(0, rgb.shape[1]), yRange=(0, rgb.shape[0]), padding=0.02)

    # ------------------------------------------------------------------------------------------ output
    def save(self, path: str | Path, also_3d: bool = True) -> Path:
        """Save the whole window to ``path`` (PNG) and, with ``also_3d``, the 3D view to ``<stem>_3d.png``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        app = self._QtGui.QGuiApplication.instance()
        if app is not None:
            app.processEvents()
        pixmap = self.widget.grab()
        if pixmap.isNull() or not pixmap.save(str(path)):
            raise InputError(f"{path}: could not write the viewer image (is the folder writable?)")
        if also_3d:
            frame = self.view3d.grabFramebuffer()
            path3d = path.with_name(f"{path.stem}_3d{path.suffix or '.png'}")
            if frame.isNull() or not frame.save(str(path3d)):
                raise InputError(f"{path3d}: could not write the 3D view image")
        log.info("viewer image written to %s", path)
        return path

    def show_message(self, text: str) -> None:
        if self.message is not None:
            self.message.setText(text)

    def close(self) -> None:
        self.widget.close()
        self.widget.deleteLater()


def render_snapshot(snapshot: ViewerSnapshot, path: str | Path, size: tuple[int, int] = (1280, 720),
                    title: str = "slam") -> Path:
    """Render one snapshot headlessly to a PNG (the window without controls) and return its path.

    Starts Xvfb for the duration when there is no display and no Qt application yet. The window is never
    mapped on screen (``WA_DontShowOnScreen``), so this also works quietly on a desktop. The 3D view alone is
    saved beside it as ``<stem>_3d.png``.
    """
    pg, gl, QtCore, QtGui, QtWidgets = import_qt()
    needs_display = QtWidgets.QApplication.instance() is None
    with ensure_display() if needs_display else contextlib.nullcontext():
        app = get_qapp(title)
        window = ViewerWindow(title, size, controls=False)
        window.widget.setAttribute(QtCore.Qt.WidgetAttribute.WA_DontShowOnScreen, True)
        window.widget.resize(*size)
        window.widget.show()
        app.processEvents()
        window.draw(snapshot)
        for _ in range(3):
            app.processEvents()
        try:
            return window.save(path)
        finally:
            window.close()
            app.processEvents()


class _LiveViewer:
    """The polling logic of :func:`run_viewer`: controls, snapshot intake, final save."""

    def __init__(self, window: ViewerWindow, channel: SnapshotChannel, stop_event: threading.Event,
                 control: PlaybackControl | None, snapshot_path, exit_when_stopped: bool, screenshot_dir,
                 quit_loop) -> None:
        self.window = window
        self.channel = channel
        self.stop_event = stop_event
        self.control = control
        self.snapshot_path = Path(snapshot_path) if snapshot_path else None
        self.exit_when_stopped = exit_when_stopped
        self.screenshot_dir = Path(screenshot_dir) if screenshot_dir else (
            self.snapshot_path.parent if self.snapshot_path else Path.cwd())
        self.quit_loop = quit_loop
        self.paused = False
        self.step_pending = False
        self.finished = False
        self.saved: Path | None = None
        self.shown = False
        b = window.buttons
        if b:
            b["pause"].clicked.connect(self.toggle_pause)
            b["step"].clicked.connect(self.step)
            b["screenshot"].clicked.connect(self.screenshot)

    def toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.control is not None:
            self.control.pause() if self.paused else self.control.resume()
        if self.window.buttons:
            self.window.buttons["pause"].setText("Resume" if self.paused else "Pause")
        if self.window.snapshot is not None:
            self.window.status.setText(scene.status_text(self.window.snapshot, self.paused))

    def step(self) -> None:
        if not self.paused:
            self.toggle_pause()
        if self.control is not None:
            self.control.step()
        self.step_pending = True

    def screenshot(self) -> None:
        frame = self.window.snapshot.frame_index if self.window.snapshot is not None else 0
        path = self.screenshot_dir / f"slam_frame{frame:06d}.png"
        try:
            self.window.save(path, also_3d=False)
            self.window.show_message(f"saved {path}")
        except InputError as exc:
            log.error("%s", exc)
            self.window.show_message(str(exc))

    def tick(self) -> None:
        """One poll: draw the newest snapshot (unless paused), finish when the producer is done."""
        if self.shown and not self.window.widget.isVisible():
            log.info("viewer window closed")
            self.quit_loop()
            return
        stopping = self.stop_event.is_set()  # read before taking snapshots: all puts before set() are seen
        if stopping or not self.paused or self.step_pending or self.control is not None:
            snap = self.channel.get_latest(0)
            if snap is not None:
                self.window.draw(snap, self.paused)
                self.step_pending = False
        if stopping and not self.finished:
            self.finished = True
            self.finish()

    def finish(self) -> None:
        if self.window.snapshot is None:
            log.warning("the run ended before the viewer received any snapshot")
        if self.snapshot_path is not None:
            try:
                self.saved = self.window.save(self.snapshot_path)
            except InputError as exc:
                log.error("%s", exc)
        if self.exit_when_stopped:
            self.quit_loop()
        else:
            self.window.show_message("run finished; close the window to exit")


def run_viewer(channel: SnapshotChannel, stop_event: threading.Event, snapshot_path: str | Path | None = None,
               title: str = "slam", exit_when_stopped: bool = True, *, control: PlaybackControl | None = None,
               size: tuple[int, int] = (1400, 820), screenshot_dir: str | Path | None = None,
               poll_ms: int = 30, timeout_s: float | None = None) -> None:
    """Run the viewer's Qt event loop in the main thread until the run ends or the window is closed.

    Args:
        channel: where the SLAM threads put snapshots.
        stop_event: set by the producer after its final ``put``; the viewer then draws the final snapshot,
            writes ``snapshot_path`` (whole window; the 3D view alone as ``<stem>_3d.png``) and, with
            ``exit_when_stopped``, closes; otherwise it stays open until the user closes it.
        control: when given, Pause/Step pause and step the producer (it calls ``control.wait_turn()`` per
            frame); otherwise they freeze the display only. Closing the window resumes a paused producer.
        screenshot_dir: where the Screenshot button writes (default: beside ``snapshot_path``, else cwd).
        poll_ms: channel polling period.
        timeout_s: safety limit; the viewer saves what it shows and returns after this many seconds.

    Ctrl-C in the terminal closes the viewer, cancels ``control`` and raises KeyboardInterrupt.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("run_viewer must be called from the main thread (Qt's GUI thread)")
    pg, gl, QtCore, QtGui, QtWidgets = import_qt()
    app = get_qapp(title)
    window = ViewerWindow(title, size, controls=True)
    loop = QtCore.QEventLoop()
    live = _LiveViewer(window, channel, stop_event, control, snapshot_path, exit_when_stopped, screenshot_dir, loop.quit)
    shortcuts = []
    for key, slot in (("Space", live.toggle_pause), ("N", live.step), ("R", window.reset_view),
                      ("S", live.screenshot), ("F", lambda: window.buttons["follow"].toggle())):
        sc = QtGui.QShortcut(QtGui.QKeySequence(key), window.widget)
        sc.activated.connect(slot)
        shortcuts.append(sc)

    started = time.monotonic()

    def tick() -> None:
        if timeout_s is not None and time.monotonic() - started > timeout_s and not live.finished:
            log.warning("viewer: no end of run after %.0f s, closing", timeout_s)
            live.finished = True
            live.exit_when_stopped = True
            live.finish()
            return
        live.tick()

    interrupted = []

    def on_sigint(_signum, _frame) -> None:
        interrupted.append(True)
        loop.quit()

    timer = QtCore.QTimer()
    timer.setInterval(max(int(poll_ms), 1))
    timer.timeout.connect(tick)
    old_handler = signal.signal(signal.SIGINT, on_sigint)
    try:
        window.widget.show()
        live.shown = True
        timer.start()
        QtCore.QTimer.singleShot(0, tick)
        loop.exec()
    finally:
        timer.stop()
        signal.signal(signal.SIGINT, old_handler)
        if control is not None:
            if interrupted:
                control.cancel()
            else:
                control.resume()
        window.close()
        app.processEvents()
    if interrupted:
        raise KeyboardInterrupt
