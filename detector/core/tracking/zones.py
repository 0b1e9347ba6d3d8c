"""Zones and counting lines over tracks: who is inside each polygon now, and how many tracks
crossed each line, per direction and per class.

A small YAML names them (pixels of the source frame)::

    anchor: bottom_center        # the point of a box that counts: bottom_center | center
    zones:
      - name: platform
        polygon: [[100, 400], [600, 400], [600, 700], [100, 700]]
    lines:
      - name: gate
        points: [[800, 0], [800, 720]]

A track is inside a zone when its anchor point is (ray casting; a point on an edge may fall
either way). A line crossing is counted when the anchor of a track moves from one side of the line
(where it was last reported off the line) to the other through the segment itself (not its
extension). Directions are as seen on the image (y down) walking from the
line's first point to its second: ``left_to_right`` or ``right_to_left``; for the vertical
``gate`` above (top to bottom), left is the image's right half, so a track moving leftwards
crosses ``left_to_right``. A track that jitters across a line counts each crossing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from detector.core.tracking.bytetrack import Tracks

__all__ = ["CountingLine", "Zone", "ZoneCounter", "ZoneCounts", "load_zones"]

ANCHORS = ("bottom_center", "center")
DIRECTIONS = ("left_to_right", "right_to_left")


@dataclass(frozen=True)
class Zone:
    """A named polygon: ``polygon`` is ``[K, 2]`` (x, y) vertices, ``K >= 3``."""

    name: str
    polygon: np.ndarray

    def contains(self, points: np.ndarray) -> np.ndarray:
        """``[M, 2]`` points -> ``[M]`` bool, inside the polygon (even-odd ray casting)."""
        x, y = points[:, 0:1], points[:, 1:2]  # [M, 1]
        x1, y1 = self.polygon[:, 0], self.polygon[:, 1]  # [K]
        x2, y2 = np.roll(x1, -1), np.roll(y1, -1)
        straddles = (y1 > y) != (y2 > y)  # [M, K]: the edge spans the point's row
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        return np.count_nonzero(straddles & (x < x_cross), axis=1) % 2 == 1


@dataclass(frozen=True)
class CountingLine:
    """A named segment from ``start`` to ``end``, each ``[2]`` (x, y)."""

    name: str
    start: np.ndarray
    end: np.ndarray

    def side(self, points: np.ndarray) -> np.ndarray:
        """``[M, 2]`` points -> ``[M]`` -1 (left on the image, walking start -> end), +1
        (right) or 0 (on the line)."""
        d = self.end - self.start
        rel = points - self.start
        return np.sign(d[0] * rel[:, 1] - d[1] * rel[:, 0]).astype(np.int64)

    def crosses(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Whether the moves ``a [M, 2] -> b [M, 2]`` cross the segment: the move's ends lie on
        opposite sides of the line and the segment's ends on opposite sides of the move."""
        opposite = self.side(a) * self.side(b) < 0
        move = b - a
        s0 = np.sign(
            move[:, 0] * (self.start[1] - a[:, 1]) - move[:, 1] * (self.start[0] - a[:, 0])
        )
        s1 = np.sign(move[:, 0] * (self.end[1] - a[:, 1]) - move[:, 1] * (self.end[0] - a[:, 0]))
        return opposite & (s0 * s1 <= 0)


@dataclass
class ZoneCounts:
    """Counts after one frame.

    Attributes:
        inside: zone name -> class id -> tracks inside the zone in this frame.
        crossings: line name -> direction -> class id -> crossings since the counter started.
    """

    inside: dict[str, dict[int, int]] = field(default_factory=dict)
    crossings: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)


def _points(value: object, what: str, minimum: int) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) < minimum or not np.isfinite(arr).all():
        raise ValueError(f"{what}: need at least {minimum} finite [x, y] points, got {value!r}")
    return arr


def load_zones(source: str | Path) -> tuple[list[Zone], list[CountingLine], str]:
    """Read zones, lines and the anchor from a YAML file (a :class:`~pathlib.Path`) or YAML
    text (a ``str``). Raises ``ValueError`` on a malformed entry or a repeated name."""
    text = source.read_text() if isinstance(source, Path) else source
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError("the zones YAML must be a mapping with 'zones' and/or 'lines'")
    anchor = data.get("anchor", "bottom_center")
    if anchor not in ANCHORS:
        raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
    zones = [
        Zone(str(z["name"]), _points(z.get("polygon"), f"zone {z.get('name')!r}", 3))
        for z in data.get("zones") or []
    ]
    lines = []
    for item in data.get("lines") or []:
        pts = _points(item.get("points"), f"line {item.get('name')!r}", 2)
        if len(pts) != 2 or np.allclose(pts[0], pts[1]):
            raise ValueError(f"line {item.get('name')!r}: need two distinct points")
        lines.append(CountingLine(str(item["name"]), pts[0], pts[1]))
    names = [z.name for z in zones] + [ln.name for ln in lines]
    if len(set(names)) != len(names):
        raise ValueError(f"zone and line names must be unique, got {names}")
    return zones, lines, anchor


class ZoneCounter:
    """Counts tracks in zones and across lines, frame after frame, for one source.

    Args:
        zones: the polygons.
        lines: the counting lines.
        anchor: the point of a box that counts, ``bottom_center`` (feet, wheels: where an object
            touches the ground) or ``center``.
        forget_after: frames after which a track not reported off a line is forgotten there
            (its last position no longer links to a later one).
    """

    def __init__(
        self,
        zones: list[Zone],
        lines: list[CountingLine],
        anchor: str = "bottom_center",
        forget_after: int = 300,
    ) -> None:
        if anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {anchor!r}")
        self.zones = zones
        self.lines = lines
        self.anchor = anchor
        self.forget_after = forget_after
        self.frame = 0
        # per line: track id -> (frame, side, anchor [2]) where it was last seen off the line
        self._last: dict[str, dict[int, tuple[int, int, np.ndarray]]] = {
            ln.name: {} for ln in lines
        }
        self._crossings: dict[str, dict[str, dict[int, int]]] = {
            ln.name: {d: defaultdict(int) for d in DIRECTIONS} for ln in lines
        }

    def _anchors(self, boxes: np.ndarray) -> np.ndarray:
        """``[M, 4]`` xyxy -> ``[M, 2]`` anchor points."""
        x = (boxes[:, 0] + boxes[:, 2]) / 2
        y = boxes[:, 3] if self.anchor == "bottom_center" else (boxes[:, 1] + boxes[:, 3]) / 2
        return np.stack([x, y], axis=1).astype(np.float64)

    def update(self, tracks: Tracks) -> ZoneCounts:
        """Count one frame's tracks (a :class:`~detector.core.tracking.Tracks`)."""
        self.frame += 1
        points = self._anchors(np.asarray(tracks.boxes).reshape(-1, 4))
        ids = np.asarray(tracks.track_ids).reshape(-1).tolist()
        class_ids = np.asarray(tracks.classes, dtype=np.int64).reshape(-1)
        classes = class_ids.tolist()

        inside = {}
        for zone in self.zones:
            found, counts = np.unique(class_ids[zone.contains(points)], return_counts=True)
            inside[zone.name] = dict(zip(found.tolist(), counts.tolist()))

        for line in self.lines:
            memory = self._last[line.name]
            sides = line.side(points)
            for i in np.nonzero(sides)[0]:  # a point on the line keeps the side before it
                tid = ids[i]
                if tid in memory:
                    _, side, before = memory[tid]
                    if side != sides[i] and line.crosses(before[None], points[i : i + 1])[0]:
                        direction = DIRECTIONS[0] if sides[i] > 0 else DIRECTIONS[1]
                        self._crossings[line.name][direction][int(classes[i])] += 1
                memory[tid] = (self.frame, int(sides[i]), points[i])
            for tid in [t for t, (f, _, _) in memory.items() if self.frame - f > self.forget_after]:
                del memory[tid]
        return ZoneCounts(
            inside=inside,
            crossings={
                name: {d: dict(c) for d, c in by_dir.items()}
                for name, by_dir in self._crossings.items()
            },
        )
