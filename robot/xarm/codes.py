"""xArm controller error and warning codes: their `ArmErrorCode` and what they mean to a user.

The titles and hints paraphrase the SDK's own tables (`xarm/core/config/x_code.py`); they are
what the daemon shows next to a safe stop, so each says what to do next. Codes that aimg has no
`ArmErrorCode` member for are still reported (as their number) with their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

from aimg.robot.interfaces import ArmErrorCode


@dataclass(frozen=True)
class ErrorInfo:
    """One controller code: its `ArmErrorCode` when aimg names it, a title and what to do."""

    code: int
    arm_code: ArmErrorCode | None
    title: str
    hint: str

    @property
    def meaning(self) -> str:
        return f"C{self.code} {self.title}: {self.hint}"


_ERRORS: dict[int, tuple[ArmErrorCode | None, str, str]] = {
    1: (
        ArmErrorCode.EMERGENCY_STOP,
        "emergency stop button on the control box is pushed in",
        "release the button, then clear the error and enable the arm",
    ),
    2: (
        ArmErrorCode.EMERGENCY_IO,
        "emergency IO of the control box is triggered",
        "check the emergency-stop wiring (the 2 EI inputs must be closed), then clear and enable",
    ),
    3: (
        ArmErrorCode.THREE_STATE_SWITCH,
        "emergency stop of the three-state switch is pressed",
        "release the switch, then clear the error and enable the arm",
    ),
    19: (None, "end effector communication error", "check the tool cable and the gripper"),
    21: (
        ArmErrorCode.KINEMATICS,
        "kinematic error (no inverse kinematics solution)",
        "re-plan: the target is out of reach or near a singularity",
    ),
    22: (
        ArmErrorCode.SELF_COLLISION,
        "self-collision",
        "re-plan; drag the arm back in manual mode if it is stuck",
    ),
    23: (
        ArmErrorCode.JOINT_LIMIT,
        "joint angle exceeds its limit",
        "re-plan; move the joint back inside its range in manual mode",
    ),
    24: (
        ArmErrorCode.SPEED_LIMIT,
        "speed exceeds the limit",
        "the servo targets moved too far or too fast: lower the speed limits or the step size",
    ),
    25: (None, "planning error", "re-plan the motion"),
    28: (None, "end module communication error", "check the tool cable"),
    30: (None, "feedback speed exceeds the limit", "lower speed and acceleration"),
    31: (
        ArmErrorCode.COLLISION,
        "collision caused abnormal current",
        "check for obstacles, the payload settings (TCP load) and the collision sensitivity",
    ),
    35: (
        ArmErrorCode.BOUNDARY,
        "safety boundary limit",
        "the target left the reduced-mode TCP boundary: move back inside it in manual mode",
    ),
    1000: (
        ArmErrorCode.CONNECTION_LOST,
        "connection to the controller lost",
        "check the network cable and the control box; the arm holds its last servo target",
    ),
    1001: (
        ArmErrorCode.REPORT_STALE,
        "the controller's state report stopped arriving",
        "check the network; motion is held until fresh reports arrive",
    ),
}

_WARNINGS: dict[int, str] = {
    11: "command buffer full",
    12: "parameter error",
    13: "command does not exist",
    14: "no solution",
    15: "Modbus command buffer full",
}


def error_info(code: int) -> ErrorInfo:
    """What controller (or driver) error `code` means; unknown codes say so."""
    try:
        arm_code, title, hint = _ERRORS[code]
    except KeyError:
        arm_code, title, hint = None, "controller error", "see the xArm manual's error code table"
    if code == 0:
        arm_code, title, hint = ArmErrorCode.NONE, "no error", "nothing to do"
    if 10 <= code <= 17:
        title = "servo motor error" if code == 10 else f"servo motor error on joint {code - 10}"
        hint = "power-cycle the arm; contact UFACTORY if it persists"
    return ErrorInfo(code, arm_code, title, hint)


def error_meaning(code: int) -> str:
    """One line for a status page: `C31 collision caused abnormal current: check ...`."""
    return error_info(code).meaning


def warning_meaning(code: int) -> str:
    return f"W{code} {_WARNINGS.get(code, 'controller warning')}"


#: Controller codes that aimg maps onto its own `ArmErrorCode` (what the tests cover).
MAPPED_ERROR_CODES: tuple[int, ...] = tuple(
    code for code, entry in _ERRORS.items() if entry[0] is not None and code < 256
)
