"""The two hardware interfaces, `Arm` and `CameraRig`, and the records they return.

Runtime and calibration touch hardware only through these. Devices (`aimg.robot.sim`, later
`xarm` and `realsense`) implement them; `aimg.robot.remote` makes an `Arm` usable from another
process. Units and frames follow DESIGN.md: metres, radians, seconds; poses are 4x4
tool-to-base transforms of the tool centre point (TCP); gripper openness is in [0, 1], 1 = open.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from aimg.geometry import Camera, action_to_matrix, matrix_to_action


class ArmErrorCode(enum.IntEnum):
    """Controller error codes, numbered as the xArm firmware numbers them (C1, C22, ...).

    Codes >= 1000 are never sent by a controller (its report carries one byte): a driver raises
    them itself when it can no longer trust what it knows of the arm.
    """

    NONE = 0
    EMERGENCY_STOP = 1
    EMERGENCY_IO = 2
    THREE_STATE_SWITCH = 3
    KINEMATICS = 21
    SELF_COLLISION = 22
    JOINT_LIMIT = 23
    SPEED_LIMIT = 24
    COLLISION = 31
    BOUNDARY = 35
    CONNECTION_LOST = 1000
    REPORT_STALE = 1001


class ArmError(RuntimeError):
    """A command the arm cannot accept in its current state (not connected, in error, ...)."""


@dataclass(frozen=True)
class ArmState:
    """One reading of the arm.

    tool_pose: [4, 4] TCP-to-base transform (metres); joints: [N] joint angles (rad);
    gripper: openness in [0, 1], 1 = open; error_code / warning_code: controller codes
    (`ArmErrorCode`, 0 = none); timestamp_ns: when the state was measured, on the device's clock
    (`time.monotonic_ns()` for real arms, simulated time for the simulator).
    """

    tool_pose: np.ndarray
    joints: np.ndarray
    gripper: float
    error_code: int
    warning_code: int
    timestamp_ns: int
    enabled: bool = True

    @property
    def action(self) -> np.ndarray:
        """The state as an action 7-vector `[x, y, z, rx, ry, rz, g]` (extrinsic-xyz Euler)."""
        return matrix_to_action(self.tool_pose, self.gripper)

    @property
    def ok(self) -> bool:
        return self.error_code == ArmErrorCode.NONE and self.enabled


class Arm(ABC):
    """A robot arm with a gripper, commanded by TCP pose targets (servo mode).

    Use as a context manager: `with arm: ...` connects and always disconnects. After any error
    the arm holds still and ignores motion commands until `clear_errors()` and `enable()`, the
    same recovery sequence a real xArm needs.
    """

    @abstractmethod
    def connect(self) -> None:
        """Open the connection (idempotent)."""

    @abstractmethod
    def disconnect(self) -> None:
        """Stop motion and close the connection (idempotent)."""

    @property
    @abstractmethod
    def is_connected(self) -> bool: ...

    @abstractmethod
    def enable(self) -> None:
        """Enable the motors and enter servo mode; raises ArmError while an error is active."""

    @abstractmethod
    def read_state(self) -> ArmState: ...

    @abstractmethod
    def servo(self, tool_pose: np.ndarray) -> None:
        """Set the latest TCP target [4, 4]; the arm moves towards it within its speed limits.

        Unsafe targets (outside the workspace boundary, unreachable, a jump too large) put the
        arm in error instead of moving it; read the code with `read_state()`.
        """

    @abstractmethod
    def set_gripper(self, openness: float) -> None:
        """Set the gripper target openness in [0, 1] (1 = fully open)."""

    @abstractmethod
    def stop(self) -> None:
        """Hold the current pose (a soft stop; the arm stays enabled)."""

    @abstractmethod
    def emergency_stop(self) -> None:
        """Stop at once and disable the motors (error code 1 until cleared)."""

    @abstractmethod
    def clear_errors(self) -> None:
        """Clear the error code; the arm then still needs `enable()`."""

    def servo_action(self, action: np.ndarray) -> None:
        """Servo to an action 7-vector: pose from its first six entries, gripper from the last."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(
                f"an action is a 7-vector [x, y, z, rx, ry, rz, g], got {action.shape}"
            )
        self.servo(action_to_matrix(action))
        self.set_gripper(float(action[6]))

    def __enter__(self) -> Arm:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()


@dataclass(frozen=True)
class RigFrames:
    """Synchronised frames of all cameras of a rig.

    images: view name -> [H, W, 3] uint8 RGB; device_timestamps_ns: view name -> exposure time on
    the camera's clock; host_timestamps_ns: view name -> `time.monotonic_ns()` at receipt.
    """

    images: Mapping[str, np.ndarray]
    device_timestamps_ns: Mapping[str, int]
    host_timestamps_ns: Mapping[str, int]
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)


class CameraRig(ABC):
    """A set of named, calibrated cameras read together. Use as a context manager."""

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def disconnect(self) -> None: ...

    @property
    @abstractmethod
    def view_names(self) -> tuple[str, ...]: ...

    @property
    @abstractmethod
    def cameras(self) -> dict[str, Camera]:
        """View name -> calibration (`Camera` at the size of the images `read()` returns)."""

    @abstractmethod
    def read(self) -> RigFrames:
        """The next synchronised set of frames."""

    def __enter__(self) -> CameraRig:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disconnect()
