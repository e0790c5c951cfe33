"""aimg.robot: the hardware interfaces (`Arm`, `CameraRig`) and their devices.

Devices live in sub-packages: `sim` (PyBullet cell), `xarm` (xarm-python-sdk), `realsense`
(pyrealsense2). May import the core (`aimg.*`) only. Device dependencies are imported lazily,
so `import aimg.robot` works without any extra installed.
"""

from aimg.robot.interfaces import Arm, ArmError, ArmErrorCode, ArmState, CameraRig, RigFrames

__all__ = ["Arm", "ArmError", "ArmErrorCode", "ArmState", "CameraRig", "RigFrames"]
