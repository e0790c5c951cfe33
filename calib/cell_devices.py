"""A cell's arm and cameras opened straight from its cell config, for the calibration commands.

`aimg calib reference|show|handeye|check --config CELL` drive the cell themselves, so the daemon
must not be running (one process owns the arm). A sim config gives a lock-step PyBullet cell
laid out as the daemon lays it out (same cameras, image size and scenes); an xArm config gives
the xArm through its SDK and the RealSense cameras placed by the calibration file, built the
way the daemon builds them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aimg.calib.calibration_file import CalibrationFile, read_calibration
from aimg.calib.handeye import Wait, move_to, real_time_wait
from aimg.geometry import Camera, pose_to_matrix
from aimg.robot.interfaces import Arm, CameraRig

if TYPE_CHECKING:
    from aimg.runtime.cell_config import CellConfig


@dataclass
class CellDevices:
    """What the calibration commands need of a cell. `supervisor`: sim only (lays out scenes);
    `wait`: advances time (simulated or real); `step`: move_to's step sizes for this arm."""

    config: CellConfig
    arm: Arm
    rig: CameraRig
    wait: Wait
    calibration: CalibrationFile | None
    supervisor: Any = None
    world: Any = None

    @property
    def is_sim(self) -> bool:
        return self.supervisor is not None

    @property
    def workspace(self) -> tuple[np.ndarray, np.ndarray]:
        """The box (base frame, m) tasks happen in: the safety workspace of the config."""
        from aimg.runtime.safety import SafetyLimits

        config = self.config
        limits = SafetyLimits.from_dict(config.safety) if config.safety else SafetyLimits()
        return np.asarray(limits.workspace_low), np.asarray(limits.workspace_high)

    def cameras(self) -> dict[str, Camera]:
        """The cameras as calibrated (file) or, in the sim without a file, exactly."""
        return self.calibration.cameras() if self.calibration is not None else self.rig.cameras

    def move_to(self, pose: np.ndarray) -> bool:
        """A slow, small-stepped move to within ~2 mm (a real xArm in servo mode faults on big
        jumps; the references need the arm out of the way, not a precise pose)."""
        steps = {} if self.is_sim else {"step_m": 0.002, "tick_s": 0.01, "timeout_s": 5.0}
        return move_to(self.arm, pose, self.wait, tolerance_m=0.002, tolerance_deg=0.5, **steps)


@contextlib.contextmanager
def open_cell(config: CellConfig, require_calibration: bool = True) -> Iterator[CellDevices]:
    """Open the arm and cameras of `config` (connected, enabled); always closes them.

    A real cell's cameras are placed by its calibration file; `require_calibration=False`
    (hand-eye calibration, which makes that file) opens them unplaced, at the device's
    intrinsics. A sim cell needs no file (its cameras are exact)."""
    calibration = read_calibration(config.calibration) if config.calibration else None
    if config.devices.kind == "xarm":
        if require_calibration and calibration is None:
            raise ValueError(
                f"{config.source}: no calibration file is set (calibration:); calibrate first "
                "with `aimg calib handeye --config CELL`"
            )
        with _open_xarm_cell(config, calibration) as devices:
            yield devices
    else:
        with _open_sim_cell(config, calibration) as devices:
            yield devices


@contextlib.contextmanager
def _open_sim_cell(
    config: CellConfig, calibration: CalibrationFile | None
) -> Iterator[CellDevices]:
    from aimg.robot.sim.cameras import default_camera_specs
    from aimg.robot.sim.devices import SimArm, SimCameraRig
    from aimg.robot.sim.supervisor import SimSupervisor
    from aimg.robot.sim.world import SimWorld

    sim = config.devices.sim
    world = SimWorld(seed=sim.scene_seed)
    try:
        supervisor = SimSupervisor(world)
        supervisor.start_episode(sim.task, sim.scene_seed)
        specs = default_camera_specs(sim.views)
        rig = SimCameraRig(world, specs, sim.image_size, sim.image_size)
        if calibration is not None:
            calibration.require([spec.name for spec in specs])
        arm = SimArm(world, real_time=False)
        arm.connect()
        rig.connect()
        arm.enable()
        yield CellDevices(config, arm, rig, world.advance, calibration, supervisor, world)
        rig.disconnect()
        arm.disconnect()
    finally:
        world.close()


@contextlib.contextmanager
def _open_xarm_cell(
    config: CellConfig, calibration: CalibrationFile | None
) -> Iterator[CellDevices]:
    from aimg.robot.realsense.rig import RealSenseRig
    from aimg.robot.xarm.arm import XArm

    devices = config.devices
    if calibration is not None and devices.cameras:
        calibration.require(
            [c.name for c in devices.cameras], {c.name: c.serial for c in devices.cameras}
        )
    if calibration is not None:
        poses: dict[str, Any] = dict(calibration.cameras())
        intrinsics = devices.camera_intrinsics
    else:  # being calibrated: unplaced, the device's own K
        poses = {c.name: np.eye(4) for c in devices.cameras}
        intrinsics = "device"
    options = {"intrinsics": intrinsics, "stale_timeout_s": 1.0}
    if devices.camera_recording is not None:
        rig: CameraRig = RealSenseRig.from_recording(
            devices.camera_recording, poses or None, loop=True, **options
        )
    else:
        rig = RealSenseRig(
            devices.cameras,
            poses,
            exposure=devices.camera_exposure,
            white_balance=devices.camera_white_balance,
            **options,
        )
    arm = XArm(devices.xarm)
    with arm, rig:
        arm.enable()
        yield CellDevices(config, arm, rig, real_time_wait, calibration)


def reference_poses(devices: CellDevices, count: int = 4) -> list[np.ndarray]:
    """Poses spread over the workspace at mid height, gripper down, at which the static-scene
    references are captured: the arm is then in a different place in each frame, so what
    stays the same across them is the static scene."""
    low, high = devices.workspace
    start = devices.arm.read_state().tool_pose
    z = low[2] + 0.5 * (high[2] - low[2])
    fractions = [(0.3, 0.3), (0.7, 0.7), (0.3, 0.7), (0.7, 0.3), (0.5, 0.5)]
    poses = []
    for fx, fy in fractions[:count]:
        xy = low[:2] + np.array([fx, fy]) * (high[:2] - low[:2])
        poses.append(pose_to_matrix(np.array([xy[0], xy[1], z]), start[:3, :3]))
    return poses


def capture_scene_frames(
    devices: CellDevices,
    count: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
    settle_s: float = 0.5,
) -> dict[str, list[np.ndarray]]:
    """Frames of every camera with the arm at `reference_poses` (the sim also lays out a new
    scene of objects for each, as tasks will); the arm returns to where it started."""
    start = devices.arm.read_state().tool_pose
    frames: dict[str, list[np.ndarray]] = {name: [] for name in devices.rig.view_names}
    sim = devices.config.devices.sim
    for k, pose in enumerate(reference_poses(devices, count)):
        if devices.is_sim:
            devices.supervisor.start_episode(sim.task, sim.scene_seed + 1000 + k)
        if not devices.move_to(pose):
            raise RuntimeError(
                f"the arm could not reach reference pose {k} ({np.round(pose[:3, 3], 3)} m; "
                f"error C{devices.arm.read_state().error_code}): clear the workspace and retry"
            )
        devices.wait(settle_s)
        for name, image in devices.rig.read().images.items():
            frames[name].append(np.asarray(image))
        if on_progress is not None:
            on_progress(k, count)
    devices.move_to(start)
    return frames


def sim_exact_calibration(devices: CellDevices, out: Path) -> CalibrationFile:
    """A calibration file of the sim cell's exact cameras (the daemon's sim cell needs one to
    run drift checks: the scene references live in it)."""
    from aimg.calib.calibration_file import exact_calibration

    sim = devices.config.devices.sim
    source = f"sim cell views={sim.views} image_size={sim.image_size}"
    return exact_calibration(devices.rig.cameras, source, Path(out))


def device_intrinsics(rig: CameraRig) -> dict[str, tuple[Camera, np.ndarray]]:
    """Per camera, (K at the stream's size as an unplaced `Camera`, OpenCV distortion) from
    the device's factory calibration (`aimg.calib.intrinsics.factory_records`)."""
    from aimg.calib.calibration_file import now_iso
    from aimg.calib.intrinsics import factory_records

    records = factory_records(rig, now_iso())
    missing = sorted(set(rig.view_names) - set(records))
    if missing:
        raise ValueError(f"cameras {missing} report no intrinsics: are they connected?")
    return {
        name: (Camera(r.K, np.eye(4), r.width, r.height), r.distortion)
        for name, r in records.items()
    }
