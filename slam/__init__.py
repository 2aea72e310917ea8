"""Monocular visual SLAM for endoscopy and ordinary video.

Subpackages: ``sources`` (frame readers), ``features`` (keypoints, matching, masks), ``geometry`` (pure
functions: SE3, two-view initialisation, PnP, triangulation), ``map`` (keyframes, map points, covisibility),
``optim`` (g2o adapter), ``evaluation`` (ATE/RPE), ``synth`` (synthetic sequences), ``viz`` (3D viewer).
"""

__version__ = "0.1.0"
