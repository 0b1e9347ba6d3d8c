"""Label assignment: which anchors learn which ground-truth box."""

from detector.assign.simota import Assignment, simota_assign

__all__ = ["Assignment", "simota_assign"]
