"""The sim cell split in two: physics and the arm in one process, cameras rendering elsewhere.

A camera read renders two views in 10-20 ms of C code that holds the GIL and the world's lock;
in the physics process that would stall every arm call of the servo process. So the physics
server (`make_physics_devices`: `SimArm` + `SimSupervisor` on one real-time world) only hands
out cheap `snapshot()`s, and `MirroredSimCameraRig`, in another process, applies each snapshot
to a private world of the same `CellConfig` and renders there with the same cameras and the
same renderer as `SimCameraRig`: the images are identical (tests/robot/test_sim_supervisor.py).

Connections: `make_sim_cell()` spawns the physics server listening on a unix socket; the
returned `SimCell` holds the owner's channel (closing it stops the server) and the picklable
`ServerAddress`. The servo process opens its own channel with `cell.address.connect()` and
wraps it in `RemoteArm`; the camera process builds its rig with `cell.rig_factory()` (a
`functools.partial`), which opens a third channel on `connect()`. Each channel is answered by
its own server thread, so snapshots never queue behind arm calls.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Mapping, Sequence

from aimg.geometry import Camera
from aimg.robot.interfaces import CameraRig, RigFrames
from aimg.robot.remote import Channel, RemoteArm, ServerAddress, spawn_server
from aimg.robot.sim.cameras import CameraSpec, default_camera_specs, knocked_camera
from aimg.robot.sim.devices import SimArm, SimCameraRig
from aimg.robot.sim.supervisor import RemoteSupervisor, SimSupervisor
from aimg.robot.sim.world import CellConfig, SimWorld

#: The physics server's niceness: it is the robot controller, so it goes before other work.
PHYSICS_NICE = -5
#: Its SCHED_FIFO priority when permitted, below the servo loop's (50): the loop waits on its
#: replies every tick, so a physics server starved by the planner would make the loop late
#: (a real xArm's controller is a box of its own and never starves).
PHYSICS_PRIORITY = 40


class MirroredSimCameraRig(CameraRig):
    """Sim cameras that render a private copy of the physics world, rebuilt from snapshots.

    `server`: a `ServerAddress` (the rig opens and closes its own channel: use this in another
    process) or an open `Channel` (borrowed, left open). `supervisor` names the
    `SimSupervisor` device there. `cameras`: where the cameras stand (e.g. a calibration
    file's, centre-cropped and resized to `height` x `width`) instead of the first `views`
    standard placements. Timestamps: device = the snapshot's simulated time, host =
    `time.monotonic_ns()` when the snapshot arrived.
    """

    def __init__(
        self,
        server: ServerAddress | Channel,
        views: int = 2,
        height: int = 128,
        width: int = 128,
        specs: Sequence[CameraSpec] | None = None,
        supervisor: str = "supervisor",
        cameras: Mapping[str, Camera] | None = None,
    ) -> None:
        self._server = server
        self._device = supervisor
        if cameras is not None:  # placed as a calibration says, at the rendered size
            self._cameras = {name: cam.resized(height, width) for name, cam in cameras.items()}
        else:
            specs = tuple(specs) if specs is not None else default_camera_specs(views)
            names = [spec.name for spec in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"camera names must be unique, got {names}")
            self._cameras = {spec.name: spec.camera(height, width) for spec in specs}
        self._channel: Channel | None = None
        self._supervisor: RemoteSupervisor | None = None
        self._world: SimWorld | None = None
        self._bodies: dict[str, tuple[int, tuple]] = {}
        self._episode: int | None = None

    def connect(self) -> None:
        if self._world is not None:
            return
        server = self._server
        channel = server.connect() if isinstance(server, ServerAddress) else server
        try:
            supervisor = RemoteSupervisor(channel, self._device)
            self._world = SimWorld(supervisor.cell_config())
        except BaseException:
            if channel is not self._server:
                channel.close()
            raise
        self._channel, self._supervisor = channel, supervisor
        self._bodies, self._episode = {}, None

    def disconnect(self) -> None:
        if self._world is None:
            return
        if self._channel is not self._server:
            with contextlib.suppress(Exception):
                self._channel.close()
        self._world.close()
        self._world = self._channel = self._supervisor = None

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self._cameras)

    @property
    def cameras(self) -> dict[str, Camera]:
        return dict(self._cameras)

    @property
    def world(self) -> SimWorld:
        """The private render world (only this rig touches it)."""
        if self._world is None:
            raise ValueError("MirroredSimCameraRig is not connected: call connect()")
        return self._world

    def read(self) -> RigFrames:
        """Fetch a snapshot, apply it to the private world and render every view there."""
        world = self.world
        snapshot = self._supervisor.snapshot()
        host = time.monotonic_ns()
        with world.lock:
            self.apply(snapshot)
            knocks = snapshot.get("camera_knocks", {})
            images = {
                name: world.render(knocked_camera(cam, knocks.get(name)))[0]
                for name, cam in self._cameras.items()
            }
        stamp = int(snapshot["time_ns"])
        return RigFrames(
            images=images,
            device_timestamps_ns={name: stamp for name in images},
            host_timestamps_ns={name: host for name in images},
        )

    def apply(self, snapshot: dict) -> None:
        """Pose the private world as `snapshot` says: joints, and objects added, moved, removed."""
        world = self.world
        pb, c = world._pb, world.client
        if snapshot["episode"] != self._episode:
            for body, _ in self._bodies.values():
                c.removeBody(body)
            self._bodies, self._episode = {}, snapshot["episode"]
        for joint, angle in zip(
            snapshot["joint_indices"], snapshot["joint_positions"], strict=True
        ):
            c.resetJointState(world.robot, int(joint), float(angle))
        objects = snapshot["objects"]
        for name in [name for name in self._bodies if name not in objects]:
            c.removeBody(self._bodies.pop(name)[0])
        for name, obj in objects.items():
            look = (obj["shape"], tuple(obj["size"]), tuple(obj["rgba"]))
            known = self._bodies.get(name)
            if known is not None and known[1] != look:
                c.removeBody(known[0])
                known = None
            if known is None:
                half = [float(v) / 2.0 for v in obj["size"]]
                visual = c.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=obj["rgba"])
                body = c.createMultiBody(0.0, -1, visual, obj["position"], obj["quaternion"])
                known = self._bodies[name] = (body, look)
            c.resetBasePositionAndOrientation(known[0], obj["position"], obj["quaternion"])


def make_physics_devices(
    real_time: bool = True,
    seed: int = 0,
    rig_views: int = 0,
    height: int = 128,
    width: int = 128,
    config: CellConfig | None = None,
    nice: int = PHYSICS_NICE,
) -> dict[str, object]:
    """The physics server's devices: "arm" and "supervisor" on one world (device factory).

    `rig_views` > 0 adds an in-server "rig" (`SimCameraRig`), for comparisons only: its reads
    hold the world's lock. The server asks for SCHED_FIFO (`PHYSICS_PRIORITY`) for a real-time
    world, else raises its priority by `nice` when permitted; a real-time world starts running
    at once (its threads inherit the policy: they are started after this).
    """
    if not (real_time and _fifo(PHYSICS_PRIORITY)) and nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
    world = SimWorld(config, seed=seed)
    devices: dict[str, object] = {
        "arm": SimArm(world, real_time=real_time),
        "supervisor": SimSupervisor(world),
    }
    if rig_views:
        devices["rig"] = SimCameraRig(world, default_camera_specs(rig_views), height, width)
    if real_time:
        world.start_real_time()
    return devices


def _fifo(priority: int) -> bool:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError):
        return False
    return True


class SimCell:
    """A running physics server and what each user needs to reach it.

    `channel`: the owner's channel (closing the cell stops the server); `address`: where other
    processes open their own channels. Build a rig in any process with `rig_factory()()`.
    """

    def __init__(
        self,
        channel: Channel,
        views: int,
        height: int,
        width: int,
        cameras: Mapping[str, Camera] | None = None,
    ) -> None:
        if channel.address is None:
            raise ValueError("a SimCell needs a listening server: spawn_server(..., listen=True)")
        self.channel = channel
        self.views, self.height, self.width = views, height, width
        self.cameras = dict(cameras) if cameras is not None else None

    @property
    def address(self) -> ServerAddress:
        return self.channel.address

    def arm(self, channel: Channel | None = None) -> RemoteArm:
        """The arm through `channel` (default: the owner's channel)."""
        return RemoteArm(channel or self.channel, "arm")

    def supervisor(self, channel: Channel | None = None) -> RemoteSupervisor:
        return RemoteSupervisor(channel or self.channel, "supervisor")

    def rig_factory(self) -> functools.partial[MirroredSimCameraRig]:
        """A picklable factory of the mirrored rig, for a camera process."""
        return functools.partial(
            MirroredSimCameraRig,
            self.address,
            self.views,
            self.height,
            self.width,
            cameras=self.cameras,
        )

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SimCell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_sim_cell(
    views: int = 2,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    real_time: bool = True,
    config: CellConfig | None = None,
    rig_views: int = 0,
    cameras: Mapping[str, Camera] | None = None,
) -> SimCell:
    """Spawn the physics server (arm + supervisor, real time, listening for more channels);
    `cameras` places the rig's cameras (see `MirroredSimCameraRig`)."""
    factory = functools.partial(
        make_physics_devices,
        real_time=real_time,
        seed=seed,
        rig_views=rig_views,
        height=height,
        width=width,
        config=config,
    )
    return SimCell(spawn_server(factory, listen=True), views, height, width, cameras)
