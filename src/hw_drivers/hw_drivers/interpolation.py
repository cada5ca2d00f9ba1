"""Time interpolation of chunk knots and the C1 splice correction (pure numpy).

``KnotTrajectory`` samples position and velocity between knots. It never extrapolates: outside
its knots it holds the nearest end knot with zero velocity (the executor lets a chunk take over
only once its first action has come). ``HermiteCorrection`` is the offset that carries
position *and* velocity of the previous command into a new trajectory and fades to zero over a
window, so a splice has no jump in either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

INTERPOLATIONS = ("linear", "cubic")


def knot_slopes(times: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Slope at each knot, exact for quadratics (3-point formulas), shape like ``positions``.

    Interior knots use the weighted average of the neighbouring secants; end knots use the
    second-order one-sided formula, so a quadratic trajectory is reproduced exactly by the
    cubic Hermite interpolant.
    """
    n = positions.shape[0]
    slopes = np.zeros_like(positions, dtype=float)
    if n < 2:
        return slopes
    h = np.diff(times)[:, None]
    secant = np.diff(positions, axis=0) / h
    if n == 2:
        slopes[:] = secant[0]
        return slopes
    h0, h1 = h[:-1], h[1:]
    slopes[1:-1] = (h1 * secant[:-1] + h0 * secant[1:]) / (h0 + h1)
    slopes[0] = ((2 * h[0] + h[1]) * secant[0] - h[0] * secant[1]) / (h[0] + h[1])
    slopes[-1] = ((2 * h[-1] + h[-2]) * secant[-1] - h[-1] * secant[-2]) / (h[-1] + h[-2])
    return slopes


class KnotTrajectory:
    """Piecewise linear or cubic-Hermite trajectory through timed knots."""

    def __init__(self, times: np.ndarray, positions: np.ndarray, method: str = "cubic") -> None:
        if method not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {method!r}")
        self.times = np.asarray(times, dtype=float)
        self.positions = np.asarray(positions, dtype=float)
        if self.positions.ndim != 2 or self.positions.shape[0] != self.times.shape[0]:
            raise ValueError(
                f"knots: {self.times.shape[0]} times for positions of shape "
                f"{self.positions.shape}"
            )
        if self.times.shape[0] == 0:
            raise ValueError("knots: empty trajectory")
        if np.any(np.diff(self.times) <= 0):
            raise ValueError("knots: times must increase strictly")
        self.method = method
        self._slopes = knot_slopes(self.times, self.positions) if method == "cubic" else None

    @property
    def start(self) -> float:
        return float(self.times[0])

    @property
    def end(self) -> float:
        return float(self.times[-1])

    def covers(self, t: float) -> bool:
        return self.start <= t <= self.end

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) at time ``t``; held at the end knots outside the range.

        No extrapolation either way: before the first knot a line through the first segment
        can run anywhere (a chunk stamped 10 s ahead would be sampled 10 s down that line).
        """
        if self.times.shape[0] == 1 or t < self.times[0]:
            return self.positions[0].copy(), np.zeros(self.positions.shape[1])
        if t > self.times[-1]:
            return self.positions[-1].copy(), np.zeros(self.positions.shape[1])
        i = min(int(np.searchsorted(self.times, t, side="right")) - 1, self.times.shape[0] - 2)
        t0, t1 = self.times[i], self.times[i + 1]
        h = t1 - t0
        s = (t - t0) / h
        p0, p1 = self.positions[i], self.positions[i + 1]
        if self._slopes is None:
            return p0 + s * (p1 - p0), (p1 - p0) / h
        m0, m1 = self._slopes[i] * h, self._slopes[i + 1] * h
        s2, s3 = s * s, s * s * s
        pos = (
            (2 * s3 - 3 * s2 + 1) * p0
            + (s3 - 2 * s2 + s) * m0
            + (-2 * s3 + 3 * s2) * p1
            + (s3 - s2) * m1
        )
        vel = (
            (6 * s2 - 6 * s) * p0
            + (3 * s2 - 4 * s + 1) * m0
            + (-6 * s2 + 6 * s) * p1
            + (3 * s2 - 2 * s) * m1
        ) / h
        return pos, vel


@dataclass(frozen=True)
class HermiteCorrection:
    """Offset that starts at (``delta_position``, ``delta_velocity``) at ``t0`` and reaches
    (0, 0) at ``t0 + window`` along a cubic; zero afterwards.

    Added to a new trajectory it makes the command continue the previous command's position and
    velocity at ``t0``. Its largest second derivative is at most
    ``6 |dp| / window**2 + 4 |dv| / window``, which bounds the extra acceleration a splice adds.
    """

    t0: float
    window: float
    delta_position: np.ndarray
    delta_velocity: np.ndarray

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        zero = np.zeros_like(self.delta_position)
        if self.window <= 0 or t >= self.t0 + self.window:
            return zero, zero.copy()
        s = max(0.0, (t - self.t0) / self.window)
        s2, s3 = s * s, s * s * s
        dp, dv, w = self.delta_position, self.delta_velocity, self.window
        pos = dp * (2 * s3 - 3 * s2 + 1) + dv * w * (s3 - 2 * s2 + s)
        vel = dp * (6 * s2 - 6 * s) / w + dv * (3 * s2 - 4 * s + 1)
        return pos, vel

    def active(self, t: float) -> bool:
        return self.window > 0 and t < self.t0 + self.window
