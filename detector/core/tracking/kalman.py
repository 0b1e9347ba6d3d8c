"""A constant-velocity Kalman filter for boxes in image space, batched over tracks.

State, per track: ``(cx, cy, w, h, vcx, vcy, vw, vh)`` -- the box centre, width and height in
pixels and their per-frame velocities; the measurement is the box ``(cx, cy, w, h)``.

Why width and height rather than the ``(cx, cy, aspect, h)`` of SORT/DeepSORT/ByteTrack: that
state was tuned for pedestrians, whose aspect ratio barely changes, and it gives the aspect an
absolute, tiny noise (so it is nearly frozen). Our detector tracks every COCO class; a car that
turns or a person who sits down changes width and height independently, and with ``w`` and ``h``
each one has a noise proportional to its own size, so the filter scales the same way for a
small or a large object on both axes (the choice BoT-SORT made for the same reason).

Noise model (the usual one for box trackers): the standard deviations of process and measurement
noise are fractions of the current box size (``std_weight_position`` of ``w`` or ``h`` for a
position, ``std_weight_velocity`` for a velocity), so a box twice as large may move twice as far.

Every method takes a batch: ``mean [N, 8]``, ``covariance [N, 8, 8]``, ``measurement [N, 4]``;
``N`` may be 0. All arrays are float64.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KalmanBoxFilter"]

_NDIM = 4
# which size (w = column 2, h = column 3) scales the noise of each of the 4 measured quantities
_SIZE_INDEX = np.array([2, 3, 2, 3])


class KalmanBoxFilter:
    """Constant-velocity Kalman filter over ``(cx, cy, w, h)``, one step = one frame.

    Args:
        std_weight_position: standard deviation of a position (and of the measurement noise) as a
            fraction of the box size, per frame.
        std_weight_velocity: standard deviation of a velocity as a fraction of the box size.
    """

    def __init__(
        self, std_weight_position: float = 1.0 / 20, std_weight_velocity: float = 1.0 / 160
    ) -> None:
        self.std_weight_position = std_weight_position
        self.std_weight_velocity = std_weight_velocity
        # x_{t+1} = F x_t: positions advance by their velocities (dt = 1 frame)
        self.motion = np.eye(2 * _NDIM)
        self.motion[:_NDIM, _NDIM:] = np.eye(_NDIM)
        # z = H x: we observe the first four components
        self.observation = np.eye(_NDIM, 2 * _NDIM)

    def _sizes(self, mean: np.ndarray) -> np.ndarray:
        """``[N, 8]`` state -> ``[N, 4]`` the size (w or h) that scales each measured quantity."""
        return np.maximum(mean[:, _SIZE_INDEX], 1e-3)

    def initiate(self, measurement: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Start tracks at ``[N, 4]`` boxes ``(cx, cy, w, h)`` with zero velocity.

        Returns ``mean [N, 8]`` and ``covariance [N, 8, 8]``; the velocity is unknown, so its
        variance starts large (ten times the per-frame velocity noise).
        """
        z = np.asarray(measurement, dtype=np.float64).reshape(-1, _NDIM)
        mean = np.concatenate([z, np.zeros_like(z)], axis=1)
        size = self._sizes(mean)
        std = np.concatenate(
            [2 * self.std_weight_position * size, 10 * self.std_weight_velocity * size], axis=1
        )
        covariance = np.einsum("ni,ij->nij", np.square(std), np.eye(2 * _NDIM))
        return mean, covariance

    def predict(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance ``mean [N, 8]`` and ``covariance [N, 8, 8]`` by one frame."""
        size = self._sizes(mean)
        std = np.concatenate(
            [self.std_weight_position * size, self.std_weight_velocity * size], axis=1
        )
        process_noise = np.einsum("ni,ij->nij", np.square(std), np.eye(2 * _NDIM))
        new_mean = mean @ self.motion.T
        new_cov = self.motion @ covariance @ self.motion.T + process_noise
        return new_mean, new_cov

    def project(self, mean: np.ndarray, covariance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """State ``[N, 8]`` / ``[N, 8, 8]`` -> measurement space ``[N, 4]`` / ``[N, 4, 4]``,
        measurement noise included."""
        std = self.std_weight_position * self._sizes(mean)
        measurement_noise = np.einsum("ni,ij->nij", np.square(std), np.eye(_NDIM))
        h = self.observation
        return mean @ h.T, h @ covariance @ h.T + measurement_noise

    def update(
        self, mean: np.ndarray, covariance: np.ndarray, measurement: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Correct ``mean [N, 8]`` / ``covariance [N, 8, 8]`` with ``[N, 4]`` measured boxes."""
        z = np.asarray(measurement, dtype=np.float64).reshape(-1, _NDIM)
        if len(z) == 0:
            return mean.copy(), covariance.copy()
        projected_mean, projected_cov = self.project(mean, covariance)
        cross = covariance @ self.observation.T  # [N, 8, 4] = P H^T
        # gain K = P H^T S^-1, from S K^T = (P H^T)^T; S is symmetric positive definite
        gain = np.linalg.solve(projected_cov, cross.transpose(0, 2, 1)).transpose(0, 2, 1)
        innovation = z - projected_mean
        new_mean = mean + np.einsum("nij,nj->ni", gain, innovation)
        new_cov = covariance - gain @ projected_cov @ gain.transpose(0, 2, 1)
        return new_mean, new_cov
