"""Scripted expert trajectories: timed waypoints joined by minimum-jerk segments.

Minimum-jerk (10t^3 - 15t^4 + 6t^5) starts and ends every segment at rest with zero
acceleration, which is how a person teleoperating an arm moves and what keeps the servo targets
within the arm's speed limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


@dataclass(frozen=True)
class Waypoint:
    """Arrive at TCP `pose` [4, 4] at `time_s` (relative to the plan's start), gripper openness."""

    time_s: float
    pose: np.ndarray
    gripper: float


def min_jerk(s: np.ndarray | float) -> np.ndarray:
    """Minimum-jerk time scaling of s in [0, 1] (clipped)."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    return s**3 * (10.0 - 15.0 * s + 6.0 * s**2)


class Trajectory:
    """A waypoint plan sampled at any time: `pose(t)` [4, 4] and `gripper(t)`.

    The gripper command switches at a waypoint's start time (the gripper's own speed limit makes
    the motion continuous); the pose moves from one waypoint to the next with minimum jerk.
    """

    def __init__(self, waypoints: Sequence[Waypoint]) -> None:
        if len(waypoints) < 1:
            raise ValueError("a trajectory needs at least one waypoint")
        times = np.array([w.time_s for w in waypoints])
        if np.any(np.diff(times) <= 0):
            raise ValueError(f"waypoint times must strictly increase, got {times.tolist()}")
        self.waypoints = tuple(waypoints)
        self.times = times

    @property
    def duration_s(self) -> float:
        return float(self.times[-1])

    def _segment(self, t: float) -> tuple[int, float]:
        index = int(np.searchsorted(self.times, t, side="right"))
        if index == 0:
            return 0, 1.0
        if index >= len(self.times):
            return len(self.times) - 1, 1.0
        t0, t1 = self.times[index - 1], self.times[index]
        return index, float(min_jerk((t - t0) / (t1 - t0)))

    def pose(self, t: float) -> np.ndarray:
        index, s = self._segment(t)
        end = self.waypoints[index].pose
        if s >= 1.0:
            return end.copy()
        start = self.waypoints[index - 1].pose
        out = np.eye(4)
        out[:3, 3] = (1.0 - s) * start[:3, 3] + s * end[:3, 3]
        rotations = Rotation.from_matrix(np.stack([start[:3, :3], end[:3, :3]]))
        out[:3, :3] = Slerp([0.0, 1.0], rotations)(s).as_matrix()
        return out

    def gripper(self, t: float) -> float:
        index = int(np.searchsorted(self.times, t, side="right"))
        index = min(max(index, 0), len(self.waypoints) - 1)
        return float(self.waypoints[index].gripper)


def segment_duration(distance_m: float, speed_m_s: float, minimum_s: float = 0.6) -> float:
    """Duration of a minimum-jerk move: peak speed is 1.875x the mean, so plan on the mean."""
    return max(minimum_s, distance_m / speed_m_s)
