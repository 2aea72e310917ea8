"""Frame sources: every input (image folder, video, TUM, EuRoC, KITTI, C3VD, EndoSLAM, Hamlyn, live camera)
behind the one :class:`FrameSource` interface, opened by :func:`open_source` from a path it inspects.

Layers: a reader per layout (``folder``, ``video``, ``tum``, ``euroc``, ``kitti``, ``endoscopy``, ``live``)
produces native frames; :class:`~slam.sources.configured.ConfiguredSource` applies the options of
:class:`~slam.config.SourceConfig` (start, stride, max_frames, resize, max_width, fps, mask) for all of them.
"""

from slam.sources.base import FrameData, FrameSource
from slam.sources.detect import LAYOUTS, detect_layout, open_source

__all__ = ["FrameData", "FrameSource", "LAYOUTS", "detect_layout", "open_source"]
