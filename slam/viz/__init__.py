"""The 3D viewer and headless snapshots.

Qt-free modules (safe to import anywhere): ``snapshot`` (the :class:`ViewerSnapshot` contract, the
drop-old :class:`SnapshotChannel`, :class:`PlaybackControl`), ``ply`` (PLY read/write), ``scene`` (what is
drawn, as arrays), ``groundtruth`` (Sim3 alignment for display), ``replay`` (load a saved run), ``xvfb``
(a virtual display for headless rendering), ``live`` (SLAM thread + viewer wiring) and ``command``
(``slam view``). Only ``viewer`` imports pyqtgraph / Qt / PyOpenGL, when a window is built.
"""
