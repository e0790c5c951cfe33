"""`SimSupervisor`: episode control of the sim cell, beside the arm in the physics server.

On the real cell a person lays out the cubes and judges success; in simulation this device does,
through the same world the arm moves in. It also publishes `snapshot()`, the few numbers a
renderer needs (joint angles, object poses), so the cameras can render in another process from a
mirror world (`aimg.robot.sim.mirror`) instead of holding the physics world's lock for 10-20 ms
per frame set while the servo process waits.

Every method takes the world's lock for a short time only and never renders. Episodes keep the
simulated clock running: `start_episode` rebuilds the world but continues its step count, so
arm and camera timestamps never go backwards between episodes.
"""

from __future__ import annotations

import numpy as np

from aimg.geometry import pose_to_matrix, quat_to_matrix
from aimg.robot.remote import Channel, RemoteDevice
from aimg.robot.sim.expert import Trajectory, Waypoint
from aimg.robot.sim.tasks import COLOURS, CUBE_SIZE_M, Scene, SceneObject, Task, get_task
from aimg.robot.sim.world import CellConfig, SimWorld, top_down_pose

#: Seconds of physics after the scene is laid out, as `aimg.robot.sim.collect.run_episode` does.
SETTLE_S = 0.25


def scene_from_dict(data: dict) -> Scene:
    """The `Scene` that `Scene.to_dict()` (and `SimSupervisor.scene()`) wrote."""
    return Scene(
        task=data["task"],
        objects=tuple(
            SceneObject(obj["colour"], tuple(float(v) for v in obj["position"]), float(obj["yaw"]))
            for obj in data["objects"]
        ),
        start_position=tuple(float(v) for v in data["start_position"]),
        start_yaw=float(data["start_yaw"]),
        speed_m_s=float(data["speed_m_s"]),
        start_gripper=float(data.get("start_gripper", 1.0)),
    )


def trajectory_from_plan(plan: dict) -> Trajectory:
    """The expert's `Trajectory` from `SimSupervisor.expert_plan()` (times from the plan start)."""
    return Trajectory(
        [
            Waypoint(float(w["time_s"]), np.asarray(w["pose"], dtype=np.float64), w["gripper"])
            for w in plan["waypoints"]
        ]
    )


class SimSupervisor:
    """Starts episodes, judges success and publishes render snapshots of `world`."""

    exposed_methods = frozenset(
        {
            "start_episode",
            "success",
            "snapshot",
            "target_cube_position",
            "scene",
            "expert_plan",
            "advance",
            "cell_config",
            "knock_camera",
        }
    )

    def __init__(self, world: SimWorld) -> None:
        self._world = world
        self._task: Task | None = None
        self._scene: Scene | None = None
        self._info: dict | None = None
        self._episode = 0
        self._movable: tuple[int, ...] | None = None

    def start_episode(self, task: str, seed: int) -> dict:
        """Lay out a new episode exactly as `run_episode` does (reset with `seed`, sample the
        scene, add the cubes, put the arm at the start pose, settle); returns `scene()`.

        A real-time world is paused for the reset and resumed afterwards.
        """
        task_obj = get_task(task)
        world = self._world
        real_time = world.real_time
        world.stop_real_time()
        try:
            with world.lock:
                decimation = world.config.control_decimation
                steps = -(-world.steps // decimation) * decimation  # keep the control phase
                world.reset(seed)
                world.steps = steps
                scene = task_obj.sample_scene(world.rng)
                for obj in scene.objects:
                    world.add_cube(
                        obj.colour,
                        COLOURS[obj.colour],
                        np.array(obj.position),
                        obj.yaw,
                        CUBE_SIZE_M,
                    )
                start_pose = top_down_pose(np.array(scene.start_position), scene.start_yaw)
                world.reset_arm(start_pose, gripper=1.0)
                world.advance(SETTLE_S)
                self._episode += 1
                self._task, self._scene = task_obj, scene
                self._info = {
                    **scene.to_dict(),
                    "instruction": task_obj.instruction(scene),
                    "seed": int(seed),
                    "episode": self._episode,
                    "start_pose": start_pose,
                    "start_time_ns": world.time_ns,
                }
        finally:
            if real_time:
                world.start_real_time()
        return self.scene()

    def _require_episode(self) -> tuple[Task, Scene]:
        if self._task is None or self._scene is None:
            raise ValueError("no episode has started: call start_episode(task, seed) first")
        return self._task, self._scene

    def scene(self) -> dict:
        """The current episode: `Scene.to_dict()` plus instruction, seed, episode number,
        start_pose [4, 4] and start_time_ns (simulated time when the scene had settled)."""
        self._require_episode()
        return dict(self._info)

    def success(self) -> bool:
        """The task's own success rule on the current world."""
        task, scene = self._require_episode()
        with self._world.lock:
            return task.success(self._world, scene)

    def target_cube_position(self) -> np.ndarray:
        """Where the target cube's centre is now, [3] (m, base frame)."""
        _, scene = self._require_episode()
        return self._world.object_pose(scene.target.colour)[:3, 3]

    def expert_plan(self) -> dict:
        """The scripted expert's plan as plain data: task, scene dict, start_time_ns and the
        waypoints (time_s from the plan start, pose [4, 4], gripper). Rebuild the trajectory
        with `trajectory_from_plan`, or from the scene with `get_task(task).plan(scene)`."""
        task, scene = self._require_episode()
        waypoints = [
            {"time_s": w.time_s, "pose": np.array(w.pose), "gripper": w.gripper}
            for w in task.plan(scene).waypoints
        ]
        return {
            "task": task.name,
            "scene": scene.to_dict(),
            "start_time_ns": self._info["start_time_ns"],
            "waypoints": waypoints,
        }

    def advance(self, seconds: float) -> int:
        """Step a lock-step world by `seconds`; returns the new simulated time (ns)."""
        if self._world.real_time:
            raise ValueError("the world runs in real time; advance() is for lock-step worlds")
        self._world.advance(seconds)
        return self._world.time_ns

    def cell_config(self) -> CellConfig:
        """The world's configuration (a mirror world must be built with the same one)."""
        return self._world.config

    def knock_camera(self, name: str, translation_m: list, rotation_rad: list) -> None:
        """Bump camera `name` (see `SimWorld.knock_camera`); zeros put it back."""
        self._world.knock_camera(name, translation_m, rotation_rad)

    def _movable_joints(self) -> tuple[int, ...]:
        if self._movable is None:
            c, robot = self._world.client, self._world.robot
            fixed = self._world._pb.JOINT_FIXED
            self._movable = tuple(
                j for j in range(c.getNumJoints(robot)) if c.getJointInfo(robot, j)[2] != fixed
            )
        return self._movable

    def snapshot(self) -> dict:
        """Everything a renderer needs to draw the current instant; no rendering (~0.1 ms).

        time_ns: simulated time; episode: counts `start_episode` calls; joint_indices /
        joint_positions: every movable robot joint (arm and gripper linkage), rad; objects:
        name -> shape ("box"), size [3] full extents (m), rgba, position [3], quaternion
        [4] (x, y, z, w) and pose [4, 4] in the base frame; camera_knocks: name ->
        (translation, rotation vector) of bumped cameras (`SimWorld.knock_camera`).
        """
        world = self._world
        with world.lock:
            c = world.client
            movable = self._movable_joints()
            positions = [state[0] for state in c.getJointStates(world.robot, movable)]
            objects = {}
            for name, body in world.objects.items():
                position, quaternion = c.getBasePositionAndOrientation(body)
                visual = c.getVisualShapeData(body)[0]
                if visual[2] != world._pb.GEOM_BOX:
                    raise ValueError(f"object {name!r} is not a box; the mirror draws boxes only")
                pose = pose_to_matrix(np.array(position), quat_to_matrix(np.array(quaternion)))
                objects[name] = {
                    "shape": "box",
                    "size": tuple(visual[3]),
                    "rgba": tuple(visual[7]),
                    "position": tuple(position),
                    "quaternion": tuple(quaternion),
                    "pose": pose,
                }
            time_ns = world.time_ns
            knocks = dict(world.camera_knocks)
        return {
            "time_ns": time_ns,
            "camera_knocks": knocks,
            "episode": self._episode,
            "joint_indices": movable,
            "joint_positions": np.array(positions),
            "objects": objects,
        }


class RemoteSupervisor(RemoteDevice):
    """A `SimSupervisor` in the server behind `channel` (device `name`), same methods."""

    def __init__(self, channel: Channel, name: str = "supervisor") -> None:
        super().__init__(channel, name)

    def start_episode(self, task: str, seed: int) -> dict:
        return self.call("start_episode", task, int(seed))

    def scene(self) -> dict:
        return self.call("scene")

    def success(self) -> bool:
        return bool(self.call("success"))

    def target_cube_position(self) -> np.ndarray:
        return self.call("target_cube_position")

    def expert_plan(self) -> dict:
        return self.call("expert_plan")

    def expert_trajectory(self) -> Trajectory:
        """The expert's trajectory rebuilt here from `expert_plan()`."""
        return trajectory_from_plan(self.expert_plan())

    def advance(self, seconds: float) -> int:
        return self.call("advance", float(seconds))

    def cell_config(self) -> CellConfig:
        return self.call("cell_config")

    def snapshot(self) -> dict:
        return self.call("snapshot")

    def knock_camera(self, name: str, translation_m: list, rotation_rad: list) -> None:
        self.call("knock_camera", str(name), list(translation_m), list(rotation_rad))
