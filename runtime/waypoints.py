"""`Waypoints`: a timed tool trajectory in the base frame, what the planner hands the servo loop.

Times are `time.monotonic_ns()` of the robot computer (CLOCK_MONOTONIC is shared by every
process on Linux, so the planner, the camera process and the servo process agree on it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aimg.geometry import euler_xyz_to_matrix, matrix_to_euler_xyz

#: s: how long the servo loop ramps the gripper before the waypoint that changes it, if the
#: frames are further apart. About the hand's travel from open to shut (the sim's: 0.34 s), so
#: the hand shuts at the bottom of a descent rather than half-way down it (docs/runtime.md,
#: "The hand shuts at the bottom"). A light module, so the CLI and the cell config share it.
GRIPPER_RAMP_S = 0.35


@dataclass(frozen=True)
class Waypoints:
    """K timed tool poses with gripper openness and the planner's confidence in each.

    times_ns: [K] int64, strictly increasing, monotonic clock; positions: [K, 3] float64 metres
    (TCP in the base frame); rotations: [K, 3, 3] float64 (TCP-to-base); gripper: [K] in [0, 1]
    (1 = open); confidence: [K] in [0, 1]. `plan_id` numbers plans (0 = not from a planner);
    `source` says who made them ("model", "expert", "hold", ...).
    """

    times_ns: np.ndarray
    positions: np.ndarray
    rotations: np.ndarray
    gripper: np.ndarray
    confidence: np.ndarray
    plan_id: int = 0
    source: str = "model"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        k = len(self.times_ns)
        shapes = {
            "positions": (self.positions.shape, (k, 3)),
            "rotations": (self.rotations.shape, (k, 3, 3)),
            "gripper": (self.gripper.shape, (k,)),
            "confidence": (self.confidence.shape, (k,)),
        }
        for name, (shape, expected) in shapes.items():
            if tuple(shape) != expected:
                raise ValueError(f"Waypoints.{name} must be {expected}, got {tuple(shape)}")
        if k and np.any(np.diff(self.times_ns) <= 0):
            raise ValueError("Waypoints.times_ns must be strictly increasing")

    def __len__(self) -> int:
        return len(self.times_ns)

    @property
    def finite(self) -> np.ndarray:
        """[K] bool: waypoints whose pose and gripper are all finite."""
        return (
            np.isfinite(self.positions).all(axis=1)
            & np.isfinite(self.rotations).all(axis=(1, 2))
            & np.isfinite(self.gripper)
        )

    @property
    def actions(self) -> np.ndarray:
        """[K, 7] action vectors [x, y, z, rx, ry, rz, g] (extrinsic-xyz Euler)."""
        out = np.full((len(self), 7), np.nan)
        ok = self.finite
        out[:, :3] = self.positions
        out[:, 6] = self.gripper
        if ok.any():
            out[ok, 3:6] = matrix_to_euler_xyz(self.rotations[ok])
        return out

    @classmethod
    def from_actions(
        cls,
        actions: np.ndarray,
        times_ns: np.ndarray,
        confidence: np.ndarray | None = None,
        plan_id: int = 0,
        source: str = "model",
        meta: dict | None = None,
    ) -> Waypoints:
        """From [K, 7] action vectors (NaN rows stay NaN: the safety filter rejects them)."""
        actions = np.asarray(actions, dtype=np.float64).reshape(-1, 7)
        rotations = np.full((len(actions), 3, 3), np.nan)
        ok = np.isfinite(actions[:, 3:6]).all(axis=1)
        if ok.any():
            rotations[ok] = euler_xyz_to_matrix(actions[ok, 3:6])
        conf = np.ones(len(actions)) if confidence is None else np.asarray(confidence, float)
        return cls(
            times_ns=np.asarray(times_ns, dtype=np.int64),
            positions=actions[:, :3].copy(),
            rotations=rotations,
            gripper=actions[:, 6].copy(),
            confidence=conf,
            plan_id=plan_id,
            source=source,
            meta=dict(meta or {}),
        )

    def after(self, t_ns: int) -> Waypoints:
        """Only the waypoints strictly after `t_ns`."""
        keep = self.times_ns > t_ns
        return Waypoints(
            self.times_ns[keep],
            self.positions[keep],
            self.rotations[keep],
            self.gripper[keep],
            self.confidence[keep],
            self.plan_id,
            self.source,
            self.meta,
        )
