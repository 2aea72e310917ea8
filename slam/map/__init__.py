"""Frame, KeyFrame, MapPoint, Map (covisibility graph) and Atlas (several maps).

See :mod:`slam.map.map` for the lock discipline shared by the tracking and mapping threads.
"""

from slam.map.frame import Frame
from slam.map.map import KeyFrame, Map, MapPoint

__all__ = ["Frame", "KeyFrame", "Map", "MapPoint"]
