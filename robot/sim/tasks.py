"""Tabletop tasks of the sim cell: random scenes, scripted expert plans and success checks.

"reach the <colour> cube" (end with the tool just above the cube) and "pick up the <colour>
cube" (grasp it and lift it). Every scene has the target cube and one to three distractor cubes
of other colours at random, non-overlapping poses, and a randomised start pose of the tool.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from aimg.robot.interfaces import ArmErrorCode
from aimg.robot.sim.expert import Trajectory, Waypoint, segment_duration
from aimg.robot.sim.world import FINGER_LINKS, SimWorld, top_down_pose

COLOURS: dict[str, tuple[float, float, float, float]] = {
    "red": (0.85, 0.10, 0.08, 1.0),
    "green": (0.10, 0.62, 0.16, 1.0),
    "blue": (0.10, 0.28, 0.90, 1.0),
    "yellow": (0.95, 0.80, 0.08, 1.0),
}
CUBE_SIZE_M = 0.04


@dataclass(frozen=True)
class SceneObject:
    """A cube: colour name, centre position [3] (m, base frame), yaw about z (rad)."""

    colour: str
    position: tuple[float, float, float]
    yaw: float

    def to_dict(self) -> dict:
        return {"colour": self.colour, "position": list(self.position), "yaw": self.yaw}


@dataclass(frozen=True)
class Scene:
    """A sampled episode setup. `objects[0]` is the target."""

    task: str
    objects: tuple[SceneObject, ...]
    start_position: tuple[float, float, float]
    start_yaw: float
    speed_m_s: float
    #: the gripper at the start: 1 open, 0 closed (a "regrasp" start: an empty, closed hand)
    start_gripper: float = 1.0

    @property
    def target(self) -> SceneObject:
        return self.objects[0]

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "target": self.target.colour,
            "objects": [obj.to_dict() for obj in self.objects],
            "start_position": list(self.start_position),
            "start_yaw": self.start_yaw,
            "speed_m_s": self.speed_m_s,
            "start_gripper": self.start_gripper,
        }


#: Start poses: "standard" (high above the workspace centre, as a task begins), "near" (a
#: few centimetres off the target, below the approach height: where a closed loop that
#: arrived slightly wrong must correct from; the expert then goes sideways, then down) or
#: "regrasp" (a missed grasp: the hand closed on nothing a few centimetres off the target and
#: above it; the expert opens in place, then goes on as from a near start).
#: A closed loop whose grasp missed is in the regrasp state, and the expert never shows it:
#: its grasps do not miss, so a policy trained on it alone lifts the empty hand.
STARTS = ("standard", "near", "regrasp")
NEAR_RADIUS_M = 0.05
NEAR_HEIGHT_M = (0.03, 0.10)  # above the cube's top face
REGRASP_RADIUS_M = 0.06
REGRASP_HEIGHT_M = (0.02, 0.14)  # above the cube's top face


def sample_scene(task: str, rng: np.random.Generator, start: str = "standard") -> Scene:
    """Target plus 1-3 distractors in x 0.28-0.52 m, y -0.22-0.22 m, at least 9 cm apart.

    `start`: see `STARTS`; "near" and "regrasp" draw after everything "standard" draws, so a
    seed gives the same cubes whatever the start."""
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}; choose one of {STARTS}")
    count = int(rng.integers(2, 5))
    colours = [str(c) for c in rng.permutation(list(COLOURS))[:count]]
    positions: list[np.ndarray] = []
    while len(positions) < count:
        xy = rng.uniform([0.28, -0.22], [0.52, 0.22])
        if all(np.linalg.norm(xy - other) >= 0.09 for other in positions):
            positions.append(xy)
    objects = tuple(
        SceneObject(colour, (float(xy[0]), float(xy[1]), CUBE_SIZE_M / 2.0), float(yaw))
        for colour, xy, yaw in zip(
            colours, positions, rng.uniform(-math.pi / 4, math.pi / 4, count), strict=True
        )
    )
    position = np.array([0.30, 0.0, 0.30]) + rng.uniform([-0.04, -0.08, -0.04], [0.04, 0.08, 0.04])
    start_yaw = float(rng.uniform(-0.3, 0.3))
    speed = float(rng.uniform(0.16, 0.26))
    if start != "standard":
        reach_m, heights = (
            (NEAR_RADIUS_M, NEAR_HEIGHT_M)
            if start == "near"
            else (REGRASP_RADIUS_M, REGRASP_HEIGHT_M)
        )
        radius, angle = reach_m * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        height = CUBE_SIZE_M + rng.uniform(*heights)
        target_xy = np.array(objects[0].position[:2])
        offset = radius * np.array([math.cos(angle), math.sin(angle)])
        position = np.array([*(target_xy + offset), height])
    return Scene(
        task=task,
        objects=objects,
        start_position=tuple(float(v) for v in position),
        start_yaw=start_yaw,
        speed_m_s=speed,
        start_gripper=0.0 if start == "regrasp" else 1.0,
    )


def grasp_yaw(cube_yaw: float, current_yaw: float) -> float:
    """The cube's yaw modulo 90 degrees (a cube is symmetric) closest to the tool's yaw."""
    candidates = cube_yaw + (math.pi / 2) * np.arange(-4, 5)
    return float(candidates[np.argmin(np.abs(candidates - current_yaw))])


def _approach(scene: Scene) -> tuple[np.ndarray, float, np.ndarray]:
    """Where every task starts: the target cube's centre [3] (m), the grasp yaw (rad) and the
    approach point 10 cm above the cube's centre [3] (m), reached with the gripper open."""
    cube = np.array(scene.target.position)
    yaw = grasp_yaw(scene.target.yaw, scene.start_yaw)
    return cube, yaw, cube + [0.0, 0.0, 0.10]


def starts_near(scene: Scene) -> bool:
    """Whether the tool starts close to the target and below the approach point: the expert
    then moves sideways over the cube at its height and goes straight down (never up and back
    down through the approach point). Standard starts are far above and never near."""
    start = np.array(scene.start_position)
    cube = np.array(scene.target.position)
    return bool(
        np.linalg.norm(start[:2] - cube[:2]) <= NEAR_RADIUS_M + 1e-9
        and start[2] <= cube[2] + CUBE_SIZE_M / 2.0 + NEAR_HEIGHT_M[1] + 1e-9
    )


def _first_stop(scene: Scene) -> tuple[np.ndarray, float, float]:
    """Where the expert goes first: the approach point, or for a near start the point over
    the cube at the start's height (see `starts_near`)."""
    cube, yaw, above = _approach(scene)
    if starts_near(scene):
        return np.array([cube[0], cube[1], scene.start_position[2]]), yaw, 1.0
    return above, yaw, 1.0


def _plan(scene: Scene, stops: list[tuple[np.ndarray, float, float]]) -> Trajectory:
    """Waypoints from the start pose through `stops` = (position, yaw, gripper) at scene speed.

    A stop that repeats the previous position (a gripper action) lasts 0.8 s. A closed hand at
    the start opens in place first.
    """
    position = np.array(scene.start_position)
    waypoints = [Waypoint(0.0, top_down_pose(position, scene.start_yaw), scene.start_gripper)]
    if scene.start_gripper < 1.0:
        stops = [(position, scene.start_yaw, 1.0), *stops]
    t = 0.0
    for target, yaw, gripper in stops:
        distance = float(np.linalg.norm(target - position))
        t += 0.8 if distance < 1e-6 else segment_duration(distance, scene.speed_m_s)
        waypoints.append(Waypoint(t, top_down_pose(target, yaw), gripper))
        position = target
    return Trajectory(waypoints)


class Task(ABC):
    """One kind of episode: how it is phrased, how the expert does it, when it has succeeded."""

    name: str

    @abstractmethod
    def instruction(self, scene: Scene) -> str: ...

    @abstractmethod
    def plan(self, scene: Scene) -> Trajectory: ...

    @abstractmethod
    def success(self, world: SimWorld, scene: Scene) -> bool: ...

    def sample_scene(self, rng: np.random.Generator, start: str = "standard") -> Scene:
        return sample_scene(self.name, rng, start)


class ReachTask(Task):
    """End with the TCP less than 4 cm above the target cube's top, within 2 cm horizontally.

    The expert hovers 1.5 cm above the top face, gripper open.
    """

    name = "reach"
    hover_m = 0.035

    def instruction(self, scene: Scene) -> str:
        return f"reach the {scene.target.colour} cube"

    def plan(self, scene: Scene) -> Trajectory:
        cube, yaw, _ = _approach(scene)
        hover = cube + [0.0, 0.0, self.hover_m]
        return _plan(scene, [_first_stop(scene), (hover, yaw, 1.0), (hover, yaw, 1.0)])

    def success(self, world: SimWorld, scene: Scene) -> bool:
        if world.error_code != ArmErrorCode.NONE:
            return False
        cube = world.object_pose(scene.target.colour)[:3, 3]
        tcp = world.tool_pose()[:3, 3]
        height = tcp[2] - (cube[2] + CUBE_SIZE_M / 2.0)
        return bool(np.linalg.norm(tcp[:2] - cube[:2]) < 0.02 and 0.0 < height < 0.04)


class PickTask(Task):
    """Grasp the target cube and lift it: success when it is 5 cm up, held by both fingers."""

    name = "pick"
    lift_m = 0.15

    def instruction(self, scene: Scene) -> str:
        return f"pick up the {scene.target.colour} cube"

    def plan(self, scene: Scene) -> Trajectory:
        cube, yaw, _ = _approach(scene)
        grasp = cube + [0.0, 0.0, -0.008]
        lift = cube + [0.0, 0.0, self.lift_m]
        return _plan(
            scene,
            [_first_stop(scene), (grasp, yaw, 1.0), (grasp, yaw, 0.0), (lift, yaw, 0.0)],
        )

    def success(self, world: SimWorld, scene: Scene) -> bool:
        if world.error_code != ArmErrorCode.NONE:
            return False
        body = world.objects[scene.target.colour]
        lifted = world.object_pose(scene.target.colour)[2, 3] > CUBE_SIZE_M / 2.0 + 0.05
        touching = {
            contact[3] for contact in world.client.getContactPoints(bodyA=world.robot, bodyB=body)
        }
        return bool(lifted and all(link in touching for link in FINGER_LINKS))


TASKS: dict[str, Task] = {task.name: task for task in (ReachTask(), PickTask())}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown sim task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
