"""The g2o adapter: motion-only BA, bundle adjustment and Sim3 pose-graph optimisation on plain arrays.

No map objects come in here: the SLAM core passes poses (``T_cw``, world-to-camera, 4x4 float64), points,
and observations as undistorted pixel coordinates of the ideal pinhole camera ``(fx, fy, cx, cy)``
(``slam.camera.Camera.undistort_points``), weighted by ``inv_sigma2 = 1 / scale_factor**(2 * octave)``.
:mod:`slam.optim._g2o` is the one place that owns g2o vertex ids, robust kernels and information
matrices. g2o's ``optimize`` releases the GIL, so a tracking thread keeps running during local BA.
"""

from slam.optim.bundle import BAResult, bundle_adjust
from slam.optim.graph import PoseGraphResult, optimize_pose_graph
from slam.optim.pose import PoseResult, optimize_pose

__all__ = [
    "BAResult",
    "PoseGraphResult",
    "PoseResult",
    "bundle_adjust",
    "optimize_pose",
    "optimize_pose_graph",
]
