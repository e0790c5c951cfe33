"""A real cell's devices as tests can have them: two software RealSense cameras recorded with
`aimg realsense record`, and a calibration placing them where the sim rig's first two cameras
stand. Shared by the daemon and the calibration commands' real-cell tests."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from aimg.calib.calibration_file import CalibrationFile, CameraCalibration, write_calibration
from aimg.robot.sim.cameras import default_camera_specs

sys.path.insert(0, str(Path(__file__).resolve().parent / "robot" / "realsense"))


def record_cameras(out: Path, size: int) -> dict[str, str]:
    """Two software cameras ("front", "side"), 2 s recorded into `out`; name -> serial."""
    from rs_software import Feeder, SoftCamera, SoftwareSource

    from aimg.robot.realsense.recording import record
    from aimg.robot.realsense.rig import RealSenseCamera

    cams = {
        "front": SoftCamera("311111111111", 1, size, size, fx=70.0),
        "side": SoftCamera("322222222222", 2, size, size, fx=70.0),
    }
    specs = [RealSenseCamera(name, cam.serial, size, size) for name, cam in cams.items()]
    with Feeder(cams["front"]), Feeder(cams["side"]):
        record(specs, out, 2.0, SoftwareSource(*cams.values()), stale_timeout_s=3.0)
    return {name: cam.serial for name, cam in cams.items()}


def write_rig_calibration(path: Path, serials: dict[str, str], size: int) -> None:
    """Where the recorded cameras stand: the sim rig's first two placements."""
    records = {}
    for (name, serial), spec in zip(serials.items(), default_camera_specs(2), strict=True):
        camera = spec.camera(size, size)
        records[name] = CameraCalibration(
            name, serial, camera.K, np.zeros(5), camera.c2w, size, size, "2026-12-02", "test"
        )
    write_calibration(path, CalibrationFile(records, source="test"))
