"""ByteTrack: multi-object tracking by associating every detection box (Zhang et al., ECCV 2022).

One :class:`ByteTracker` per video source. Each call to :meth:`ByteTracker.update` takes one
frame's detections and returns the confirmed tracks visible in that frame. Per frame:

1. Split the detections by score: *high* (``score >= high_threshold``) and *low*
   (``low_threshold < score < high_threshold``); lower ones are dropped.
2. Predict every track one frame ahead with the Kalman filter (:mod:`.kalman`).
3. First association: confirmed tracks (tracked and lost) with the high detections, cost
   ``1 - IoU`` (``1 - IoU * score`` with ``fuse_score``), optimal assignment; a lost track that
   matches is found again under its old id.
4. Second association: the tracked tracks left over with the low detections, cost ``1 - IoU``.
   This is ByteTrack's point: an occluded or blurred object keeps its track through frames
   where its detection score drops. Tracked tracks still unmatched become *lost*.
5. Unconfirmed tracks (born last frame) with the high detections left over; an unmatched
   unconfirmed track is dropped (it was most likely a one-frame false positive).
6. A high detection still unmatched with ``score >= new_track_threshold`` starts an unconfirmed
   track; it is confirmed (and gets its id) when it matches in the next frame. On the first
   frame new tracks are confirmed at once.
7. A track lost for more than ``track_buffer * frame_rate / 30`` frames is removed; a track
   born while a lost track was away that overlaps it (IoU > ``duplicate_iou``) is dropped as a
   duplicate of it.

Differences from the reference implementation, on purpose: ids are given at confirmation, so
the ids a user sees are 1, 2, 3, ... with no gaps; the assignment is SciPy's
``linear_sum_assignment`` (same optimum as the reference's ``lap.lapjv`` with a cost limit, see
``_assign``); matching is per class by default (a track keeps its class); the Kalman state is
``(cx, cy, w, h)``; a lost track is never dropped as a duplicate of a tracked one (the
reference code drops the younger of the two, which loses ids where objects cross).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from detector.core.boxes import box_iou_numpy, cxcywh_to_xyxy, xyxy_to_cxcywh
from detector.core.tracking.kalman import KalmanBoxFilter

__all__ = ["ByteTracker", "TrackerConfig", "Tracks"]

# the cost of a pair that may not be matched (another class): over any threshold
_FORBIDDEN = 1e6


@dataclass(frozen=True)
class TrackerConfig:
    """ByteTrack settings; the defaults are those of the paper's MOT17 setting.

    Attributes:
        high_threshold: detections at or above this score are *high* (first association and
            new tracks). Paper and reference code: 0.6 (0.5 in the reference demo).
        low_threshold: detections above this score and below ``high_threshold`` are *low*
            (second association only); lower ones are ignored. Reference code: 0.1.
        new_track_threshold: minimum score of an unmatched high detection to start a track;
            above ``high_threshold`` so one-frame false positives start fewer tracks.
            Reference code: ``high_threshold + 0.1``.
        match_threshold: maximum cost (``1 - IoU``, or ``1 - IoU * score`` with
            ``fuse_score``) of the first association (tracks with high detections).
            Reference code: 0.8, i.e. IoU >= 0.2 at score 1.
        low_match_threshold: maximum cost ``1 - IoU`` of the second association (tracked
            tracks with low detections): IoU >= 0.5, stricter since low boxes are less sure.
        unconfirmed_match_threshold: maximum cost of matching a track born last frame:
            IoU (times score) >= 0.3.
        track_buffer: how many frames (at 30 fps) a lost track is kept for re-identification.
        frame_rate: frames per second of the source; the buffer scales by ``frame_rate / 30``
            so that it is the same time (1 s by default) at any frame rate.
        fuse_score: multiply IoU by the detection score in the first and unconfirmed
            associations (the reference code does for MOT17, not for the crowded MOT20).
        class_aware: match tracks only with detections of their own class (a track keeps its
            class); when False, any class matches and a track takes its detection's class.
        duplicate_iou: a track born while a lost track was away and overlapping it by more
            than this IoU is that lost object under a new id, and is dropped so the lost track
            takes the object back. Reference code: 0.85 (see ``ByteTracker._drop_duplicates``).
    """

    high_threshold: float = 0.6
    low_threshold: float = 0.1
    new_track_threshold: float = 0.7
    match_threshold: float = 0.8
    low_match_threshold: float = 0.5
    unconfirmed_match_threshold: float = 0.7
    track_buffer: int = 30
    frame_rate: float = 30.0
    fuse_score: bool = True
    class_aware: bool = True
    duplicate_iou: float = 0.85

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_threshold < self.high_threshold <= 1.0:
            raise ValueError(
                "need 0 <= low_threshold < high_threshold <= 1, got "
                f"{self.low_threshold} and {self.high_threshold}"
            )
        if self.track_buffer < 0 or self.frame_rate <= 0:
            raise ValueError("track_buffer must be >= 0 and frame_rate > 0")

    @property
    def max_frames_lost(self) -> int:
        """Frames a lost track is kept: ``track_buffer`` scaled by ``frame_rate / 30``."""
        return int(round(self.track_buffer * self.frame_rate / 30.0))


@dataclass(frozen=True)
class Tracks:
    """The confirmed tracks matched in one frame, ``M`` of them.

    Attributes:
        boxes: ``[M, 4]`` float32 xyxy, the Kalman-filtered boxes.
        scores: ``[M]`` float32, the score of each track's detection in this frame.
        classes: ``[M]`` int64 class ids.
        track_ids: ``[M]`` int64 ids, >= 1, unique over the tracker's life.
        detection_indices: ``[M]`` int64, the row of :meth:`ByteTracker.update`'s input (its
            ``boxes_xyxy``, ``scores``, ``classes``) that each track was updated with in this
            frame, so a caller gives each of its detections its track id without matching
            boxes again; distinct, and a detection not in it has no track.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    track_ids: np.ndarray
    detection_indices: np.ndarray

    def __len__(self) -> int:
        return len(self.track_ids)


class _State(enum.Enum):
    TRACKED = 1
    LOST = 2
    REMOVED = 3


@dataclass(eq=False)
class _Track:
    mean: np.ndarray  # [8] Kalman state (cx, cy, w, h, vcx, vcy, vw, vh)
    covariance: np.ndarray  # [8, 8]
    score: float
    cls: int
    start_frame: int
    last_frame: int  # the last frame it matched a detection
    detection: int  # the input row it was last updated with (born from)
    confirmed: bool = False
    track_id: int = 0  # 0 until confirmed
    state: _State = field(default=_State.TRACKED)

    def box_xyxy(self) -> np.ndarray:
        """``[4]`` the box of the current state."""
        return cxcywh_to_xyxy(self.mean[:4])


def _boxes_of(tracks: list[_Track]) -> np.ndarray:
    """``[T, 4]`` xyxy boxes of ``tracks``."""
    if not tracks:
        return np.zeros((0, 4))
    return cxcywh_to_xyxy(np.stack([t.mean[:4] for t in tracks]))


def _assign(cost: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Optimal partial matching on ``cost [T, D]``: only pairs with cost <= ``threshold``.

    Returns ``matches [K, 2]`` (row, column) and the unmatched rows and columns (sorted).

    A pair is worth making only if it costs less than leaving its row and its column unmatched
    at ``threshold / 2`` each (the formulation of the reference code's ``lap.lapjv`` with
    ``cost_limit``). Up to a constant that total is the sum of ``cost - threshold`` over the
    matched pairs, so SciPy's rectangular assignment on ``min(cost - threshold, 0)`` solves it:
    a pair over the threshold gains nothing and is left out. (Maximising the number of pairs
    first instead forces poor pairs in crowds: a third more identity switches at 100 objects.)
    """
    rows, cols = cost.shape
    if rows == 0 or cols == 0:
        return np.zeros((0, 2), dtype=np.int64), np.arange(rows), np.arange(cols)
    allowed = cost <= threshold
    r, c = linear_sum_assignment(np.where(allowed, cost - threshold, 0.0))
    keep = allowed[r, c]
    matches = np.stack([r[keep], c[keep]], axis=1).astype(np.int64)
    unmatched_rows = np.setdiff1d(np.arange(rows), matches[:, 0])
    unmatched_cols = np.setdiff1d(np.arange(cols), matches[:, 1])
    return matches, unmatched_rows, unmatched_cols


class ByteTracker:
    """ByteTrack over the detections of one video source (see the module docstring).

    Args:
        config: tracker settings; the defaults when omitted.
        kalman: the motion model; a :class:`KalmanBoxFilter` with its defaults when omitted.
    """

    def __init__(
        self, config: TrackerConfig | None = None, kalman: KalmanBoxFilter | None = None
    ) -> None:
        self.config = config or TrackerConfig()
        self.kalman = kalman or KalmanBoxFilter()
        self.frame_id = 0
        self._next_id = 1
        self._tracked: list[_Track] = []  # state TRACKED, confirmed or not
        self._lost: list[_Track] = []  # state LOST, all confirmed

    def reset(self) -> None:
        """Forget every track and restart ids at 1 (a new video on the same source)."""
        self.frame_id = 0
        self._next_id = 1
        self._tracked = []
        self._lost = []

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _validate(
        boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The valid detections' ``boxes [K, 4]``, ``scores [K]``, ``classes [K]`` and their
        rows in the input, ``[K]``."""
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        scores_a = np.asarray(scores, dtype=np.float64).reshape(-1)
        classes_a = np.asarray(classes).reshape(-1)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes_xyxy must be [N, 4], got shape {boxes.shape}")
        if not len(boxes) == len(scores_a) == len(classes_a):
            raise ValueError(
                f"boxes, scores and classes differ in length: {len(boxes)}, {len(scores_a)}, "
                f"{len(classes_a)}"
            )
        if not (np.isfinite(boxes).all() and np.isfinite(scores_a).all()):
            raise ValueError("boxes_xyxy and scores must be finite (found NaN or inf)")
        if classes_a.size and not np.issubdtype(classes_a.dtype, np.integer):
            if not np.all(np.isfinite(classes_a)) or np.any(classes_a != np.round(classes_a)):
                raise ValueError("classes must be integers")
        classes_a = classes_a.astype(np.int64)
        # a box with no area carries no position to track (and would zero the Kalman noise)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return boxes[valid], scores_a[valid], classes_a[valid], np.flatnonzero(valid)

    # ------------------------------------------------------------------ association

    def _cost(
        self,
        tracks: list[_Track],
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        fuse: bool,
    ) -> np.ndarray:
        """``[T, D]`` association cost of ``tracks`` with ``D`` detections."""
        if not tracks or len(boxes) == 0:
            return np.zeros((len(tracks), len(boxes)))
        similarity = box_iou_numpy(_boxes_of(tracks), boxes)
        if fuse:
            similarity = similarity * scores[None, :]
        cost = 1.0 - similarity
        if self.config.class_aware:
            track_classes = np.array([t.cls for t in tracks])
            cost[track_classes[:, None] != classes[None, :]] = _FORBIDDEN
        return cost

    def _apply_matches(
        self,
        tracks: list[_Track],
        matches: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        classes: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        """Kalman-update ``tracks[matches[k, 0]]`` with detection ``matches[k, 1]`` of
        ``boxes [D, 4]`` (xyxy), ``scores [D]``, ``classes [D]`` and input ``rows [D]``;
        ``matches`` is ``[K, 2]``."""
        if len(matches) == 0:
            return
        tracks = [tracks[i] for i in matches[:, 0]]
        d = matches[:, 1]
        boxes, scores, classes, rows = boxes[d], scores[d], classes[d], rows[d]
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.covariance for t in tracks])
        mean, cov = self.kalman.update(mean, cov, xyxy_to_cxcywh(boxes))
        for i, t in enumerate(tracks):
            t.mean, t.covariance = mean[i], cov[i]
            t.score = float(scores[i])
            t.detection = int(rows[i])
            if not self.config.class_aware:
                t.cls = int(classes[i])
            t.last_frame = self.frame_id
            t.state = _State.TRACKED
            if not t.confirmed:
                self._confirm(t)

    def _confirm(self, track: _Track) -> None:
        track.confirmed = True
        track.track_id = self._next_id
        self._next_id += 1

    def _predict(self, tracks: list[_Track]) -> None:
        """Advance ``tracks`` one frame; a lost track keeps its size (its w, h velocity is 0)."""
        if not tracks:
            return
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.covariance for t in tracks])
        lost = np.array([t.state is _State.LOST for t in tracks])
        mean[lost, 6:] = 0.0
        mean, cov = self.kalman.predict(mean, cov)
        for i, t in enumerate(tracks):
            t.mean, t.covariance = mean[i], cov[i]

    # ------------------------------------------------------------------ the frame

    def update(self, boxes_xyxy: np.ndarray, scores: np.ndarray, classes: np.ndarray) -> Tracks:
        """Track one frame's detections.

        Args:
            boxes_xyxy: ``[N, 4]`` detection boxes, xyxy pixels (``N`` may be 0); boxes with no
                area are ignored.
            scores: ``[N]`` detection scores in [0, 1].
            classes: ``[N]`` integer class ids.

        Returns:
            The confirmed tracks matched in this frame (:class:`Tracks`, ``M <= N`` rows), each
            with the input row of its detection (``Tracks.detection_indices``); lost tracks are not
            reported.

        Raises:
            ValueError: on mismatched shapes, NaN or infinite boxes or scores, or non-integer
                classes. The tracker's state is unchanged then (the frame is not counted).
        """
        boxes, scores_a, classes_a, rows = self._validate(boxes_xyxy, scores, classes)
        cfg = self.config
        self.frame_id += 1

        high = scores_a >= cfg.high_threshold
        low = (scores_a > cfg.low_threshold) & ~high
        hb, hs, hc, hr = boxes[high], scores_a[high], classes_a[high], rows[high]
        lb, ls, lc, lr = boxes[low], scores_a[low], classes_a[low], rows[low]

        confirmed = [t for t in self._tracked if t.confirmed]
        unconfirmed = [t for t in self._tracked if not t.confirmed]
        pool = confirmed + self._lost
        self._predict(pool + unconfirmed)

        # first association: confirmed tracks (tracked and lost) with the high detections
        cost = self._cost(pool, hb, hs, hc, cfg.fuse_score)
        matches, free_tracks, free_high = _assign(cost, cfg.match_threshold)
        self._apply_matches(pool, matches, hb, hs, hc, hr)

        # second association: tracks still tracked last frame with the low detections
        remaining = [pool[i] for i in free_tracks if pool[i].state is _State.TRACKED]
        cost = self._cost(remaining, lb, ls, lc, fuse=False)
        matches, still_free, _ = _assign(cost, cfg.low_match_threshold)
        self._apply_matches(remaining, matches, lb, ls, lc, lr)
        for i in still_free:
            remaining[i].state = _State.LOST

        # tracks born last frame with the high detections left over
        hb, hs, hc, hr = hb[free_high], hs[free_high], hc[free_high], hr[free_high]
        cost = self._cost(unconfirmed, hb, hs, hc, cfg.fuse_score)
        matches, dead, free_high = _assign(cost, cfg.unconfirmed_match_threshold)
        self._apply_matches(unconfirmed, matches, hb, hs, hc, hr)
        for i in dead:
            unconfirmed[i].state = _State.REMOVED

        # new tracks from the confident high detections nobody claimed
        born: list[_Track] = []
        new = free_high[hs[free_high] >= cfg.new_track_threshold]
        if len(new):
            mean, cov = self.kalman.initiate(xyxy_to_cxcywh(hb[new]))
            for k, j in enumerate(new):
                track = _Track(
                    mean=mean[k],
                    covariance=cov[k],
                    score=float(hs[j]),
                    cls=int(hc[j]),
                    start_frame=self.frame_id,
                    last_frame=self.frame_id,
                    detection=int(hr[j]),
                )
                if self.frame_id == 1:
                    self._confirm(track)
                born.append(track)

        # bookkeeping: lost tracks expire after the buffer; duplicates are dropped
        everyone = self._tracked + self._lost + born
        for t in everyone:
            if t.state is _State.LOST and self.frame_id - t.last_frame > cfg.max_frames_lost:
                t.state = _State.REMOVED
        tracked = [t for t in everyone if t.state is _State.TRACKED]
        lost = [t for t in everyone if t.state is _State.LOST]
        self._tracked, self._lost = self._drop_duplicates(tracked, lost)

        shown = [t for t in self._tracked if t.confirmed and t.last_frame == self.frame_id]
        return Tracks(
            boxes=_boxes_of(shown).astype(np.float32).reshape(-1, 4),
            scores=np.array([t.score for t in shown], dtype=np.float32),
            classes=np.array([t.cls for t in shown], dtype=np.int64),
            track_ids=np.array([t.track_id for t in shown], dtype=np.int64),
            detection_indices=np.array([t.detection for t in shown], dtype=np.int64),
        )

    def _drop_duplicates(
        self, tracked: list[_Track], lost: list[_Track]
    ) -> tuple[list[_Track], list[_Track]]:
        """Drop a tracked track born while a lost track was away when the two overlap by more
        than ``duplicate_iou``: it is the lost object seen again under a new id, and without
        it the lost track takes the object back (first association) next frame.

        The reference code also drops the younger of any overlapping tracked/lost pair; that
        removes an occluded object's lost track as soon as its occluder covers it (or the
        occluder itself when it is the younger), which swaps or loses ids at every crossing,
        so a lost track is never dropped here.
        """
        if not tracked or not lost:
            return tracked, lost
        iou = box_iou_numpy(_boxes_of(tracked), _boxes_of(lost))
        drop = {
            int(p)
            for p, q in zip(*np.nonzero(iou > self.config.duplicate_iou))
            if tracked[p].start_frame > lost[q].last_frame
        }
        return [t for i, t in enumerate(tracked) if i not in drop], lost
