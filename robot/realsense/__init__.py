"""aimg.robot.realsense: Intel RealSense cameras (pyrealsense2, the `robot` extra) as a `CameraRig`.

`rig` (`RealSenseRig`: several cameras by serial, timestamps, intrinsics, option locks, drop /
stale detection, reconnect), `sources` (where pipelines come from: connected cameras, a
recording; `list_devices`), `recording` (`record` and the recording manifest), `cli`
(`aimg realsense list | record`). pyrealsense2 is imported lazily, so importing this package
works without it. May import the core and `aimg.robot.interfaces`.
"""

from aimg.robot.realsense.rig import (
    CalibrationMissingError,
    CameraDisconnectedError,
    CameraStats,
    Intrinsics,
    OptionLockError,
    RealSenseCamera,
    RealSenseError,
    RealSenseRig,
    RecordingEndedError,
    StaleFrameError,
)
from aimg.robot.realsense.sources import DeviceSource, LiveSource, RecordingSource, list_devices

__all__ = [
    "CalibrationMissingError",
    "CameraDisconnectedError",
    "CameraStats",
    "DeviceSource",
    "Intrinsics",
    "LiveSource",
    "OptionLockError",
    "RealSenseCamera",
    "RealSenseError",
    "RealSenseRig",
    "RecordingEndedError",
    "RecordingSource",
    "StaleFrameError",
    "list_devices",
]
