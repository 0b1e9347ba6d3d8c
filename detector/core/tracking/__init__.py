"""Multi-object tracking over a detector's per-frame output, torch-free (numpy and SciPy).

- :mod:`.kalman`: a constant-velocity Kalman filter for boxes, batched over tracks.
- :mod:`.bytetrack`: ByteTrack (:class:`ByteTracker`, :class:`TrackerConfig`,
  :class:`Tracks`), one tracker per video source.
- :mod:`.zones`: polygons and counting lines from a small YAML; per-class counts of tracks
  inside each zone and of line crossings per direction (:class:`ZoneCounter`).
"""

from detector.core.tracking.bytetrack import ByteTracker, TrackerConfig, Tracks
from detector.core.tracking.kalman import KalmanBoxFilter
from detector.core.tracking.zones import CountingLine, Zone, ZoneCounter, ZoneCounts, load_zones

__all__ = [
    "ByteTracker",
    "CountingLine",
    "KalmanBoxFilter",
    "TrackerConfig",
    "Tracks",
    "Zone",
    "ZoneCounter",
    "ZoneCounts",
    "load_zones",
]
