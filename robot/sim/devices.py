"""`SimArm` and `SimCameraRig`: the `Arm` and `CameraRig` interfaces on one `SimWorld`.

Both only read and command the world; time advances either by whoever owns the world
(`world.step(...)` in lock-step) or by the world's real-time thread (`real_time=True`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from aimg.geometry import Camera
from aimg.robot.interfaces import Arm, ArmError, ArmState, CameraRig, RigFrames
from aimg.robot.sim.cameras import CameraSpec, default_camera_specs, knocked_camera
from aimg.robot.sim.world import CellConfig, SimWorld


class SimArm(Arm):
    """The simulated xArm. Without a `world`, it makes its own (seeded) one on `connect()`."""

    def __init__(
        self,
        world: SimWorld | None = None,
        real_time: bool = False,
        seed: int = 0,
        config: CellConfig | None = None,
    ) -> None:
        self._world = world
        self._owns_world = world is None
        self._real_time = real_time
        self._seed = seed
        self._config = config
        self._connected = False

    @property
    def world(self) -> SimWorld:
        if self._world is None:
            raise ArmError("SimArm is not connected: call connect() (or use `with arm:`)")
        return self._world

    def connect(self) -> None:
        if self._connected:
            return
        if self._world is None:
            self._world = SimWorld(self._config, seed=self._seed)
        if self._real_time:
            self._world.start_real_time()
        self._connected = True

    def disconnect(self) -> None:
        if not self._connected:
            return
        self._world.hold()
        if self._owns_world:
            self._world.close()
            self._world = None
        self._connected = False

    @property
    def is_connected(self) -> bool:
        return self._connected

    def _require_connected(self) -> SimWorld:
        if not self._connected:
            raise ArmError("SimArm is not connected: call connect() (or use `with arm:`)")
        return self.world

    def enable(self) -> None:
        try:
            self._require_connected().enable()
        except ValueError as exc:
            raise ArmError(str(exc)) from exc

    def read_state(self) -> ArmState:
        return self._require_connected().arm_state()

    def servo(self, tool_pose: np.ndarray) -> None:
        tool_pose = np.asarray(tool_pose, dtype=np.float64)
        if tool_pose.shape != (4, 4) or not np.all(np.isfinite(tool_pose)):
            raise ValueError(f"servo needs a finite [4, 4] TCP pose, got shape {tool_pose.shape}")
        self._require_connected().set_servo_target(tool_pose)

    def set_gripper(self, openness: float) -> None:
        if not np.isfinite(openness):
            raise ValueError(f"gripper openness must be finite in [0, 1], got {openness}")
        self._require_connected().set_gripper_target(float(openness))

    def stop(self) -> None:
        self._require_connected().hold()

    def emergency_stop(self) -> None:
        self._require_connected().emergency_stop()

    def clear_errors(self) -> None:
        self._require_connected().clear_errors()


class SimCameraRig(CameraRig):
    """Static simulated cameras with exact calibration, rendered on demand from the world."""

    def __init__(
        self,
        world: SimWorld,
        specs: Sequence[CameraSpec] | None = None,
        height: int = 128,
        width: int = 128,
    ) -> None:
        self._world = world
        specs = tuple(specs) if specs is not None else default_camera_specs(2)
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")
        self._cameras = {spec.name: spec.camera(height, width) for spec in specs}
        self._connected = False

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self._cameras)

    @property
    def cameras(self) -> dict[str, Camera]:
        return dict(self._cameras)

    def _before_render(self) -> None:
        """Called under the world's lock before a frame set is rendered (subclasses sync)."""

    def _render(self, camera: Camera) -> np.ndarray:
        """One view, RGB [H, W, 3] uint8."""
        return self._world.render(camera)[0]

    def read(self) -> RigFrames:
        """All views at one simulated instant (the world's lock is held across the renders)."""
        if not self._connected:
            name = type(self).__name__
            raise ValueError(f"{name} is not connected: call connect() (or use `with rig:`)")
        with self._world.lock:
            self._before_render()
            stamp = self._world.time_ns
            knocks = self._world.camera_knocks
            images = {
                name: self._render(knocked_camera(cam, knocks.get(name)))
                for name, cam in self._cameras.items()
            }
        host = time.monotonic_ns()
        return RigFrames(
            images=images,
            device_timestamps_ns={name: stamp for name in images},
            host_timestamps_ns={name: host for name in images},
        )


def make_sim_devices(
    real_time: bool = True,
    seed: int = 0,
    views: int = 2,
    height: int = 128,
    width: int = 128,
    config: CellConfig | None = None,
) -> dict[str, Arm | CameraRig]:
    """An arm and a camera rig on one new world: the device factory for `aimg.robot.remote`."""
    world = SimWorld(config, seed=seed)
    return {
        "arm": SimArm(world, real_time=real_time),
        "rig": SimCameraRig(world, default_camera_specs(views), height, width),
    }
