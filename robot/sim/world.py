"""One simulated xArm cell: PyBullet physics, the arm's servo controller, objects, cameras.

`SimWorld` owns a private PyBullet connection (several worlds coexist in one process). Physics
runs in lock-step (`step`/`advance`: fast, deterministic for a seed) or in real time
(`start_real_time`: a thread paces physics to the wall clock). Every public method takes the
world's lock, so an `Arm` and a `CameraRig` backed by the same world can be used from different
threads. The controller imitates xArm servo mode: the latest TCP target is followed through
inverse kinematics with per-joint speed limits, and unsafe situations latch xArm error codes and
stop the arm until `clear_errors()` + `enable()`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aimg.geometry import Camera, invert_pose, matrix_to_quat, pose_to_matrix, quat_to_matrix
from aimg.optional import require
from aimg.robot.interfaces import ArmErrorCode, ArmState
from aimg.robot.sim.assets import light_xarm_urdf
from aimg.robot.sim.cameras import gl_projection_matrix, gl_view_matrix

ARM_JOINTS = (1, 2, 3, 4, 5, 6)
FLANGE_LINK = 6
GRIPPER_BASE_LINK = 7
GRIPPER_DRIVE = 8
GRIPPER_MIMIC = (9, 10, 11, 12, 13)
GRIPPER_LINKS = (7, 8, 9, 10, 11, 12, 13)
FINGER_LINKS = (9, 12)
GRIPPER_CLOSED_ANGLE = 0.85
#: The TCP: 172 mm along the flange z axis (the xArm gripper's documented TCP offset), on the
#: gripper's axis midway between the finger pads, 2.5 mm above the closed fingertips (open, the
#: arcing fingers lift their tips 1 cm above it).
TCP_OFFSET_M = 0.172


@dataclass(frozen=True)
class CellConfig:
    """Physical parameters of the simulated cell (SI units: m, rad, s, N, N·m).

    The controller runs every `control_decimation` physics ticks; joints move at most
    `joint_speed_limit` rad/s (the xArm 6's 180 deg/s); a servo target further than
    `max_servo_jump_m` from the TCP is a C24, one outside `workspace_low/high` a C35; arm
    contact with the table, or hand contact above `contact_force_limit`, is a C31.
    """

    physics_hz: int = 240
    control_decimation: int = 4
    joint_speed_limit: float = math.pi
    max_servo_jump_m: float = 0.10
    workspace_low: tuple[float, float, float] = (0.12, -0.5, -0.01)
    workspace_high: tuple[float, float, float] = (0.80, 0.5, 0.65)
    gripper_speed: float = 2.5
    gripper_force: float = 20.0
    gripper_linkage_force: float = 200.0
    grasp_max_force: float = 60.0
    contact_force_limit: float = 80.0
    unreachable_timeout_s: float = 0.3
    table_half_extents: tuple[float, float, float] = (0.45, 0.6, 0.025)
    table_center_xy: tuple[float, float] = (0.4, 0.0)
    table_rgba: tuple[float, float, float, float] = (0.52, 0.44, 0.36, 1.0)
    home_tcp: tuple[float, float, float] = (0.30, 0.0, 0.30)
    render_near: float = 0.05
    render_far: float = 4.0
    joint_max_force: tuple[float, ...] = field(default=(300.0, 300.0, 200.0, 100.0, 100.0, 60.0))


@contextlib.contextmanager
def _c_stdout_to_stderr():
    """Send what C code writes to file descriptor 1 to stderr, so commands that print JSON on
    stdout stay parseable while a world starts (in any process)."""
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def tcp_offset() -> np.ndarray:
    """TCP in the flange (link6) frame, [4, 4]."""
    return pose_to_matrix(np.array([0.0, 0.0, TCP_OFFSET_M]), np.eye(3))


def top_down_pose(position: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """TCP pose [4, 4] pointing straight down (tool z = -world z), rotated by `yaw` about z."""
    c, s = math.cos(yaw), math.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return pose_to_matrix(np.asarray(position, dtype=np.float64), rz @ np.diag([1.0, -1.0, -1.0]))


class SimWorld:
    """The simulated cell. `seed` drives everything random inside the world."""

    def __init__(
        self,
        config: CellConfig | None = None,
        seed: int = 0,
        urdf: Path | None = None,
    ) -> None:
        self.config = config or CellConfig()
        self._pb = require("pybullet", "sim")
        bullet_client = require("pybullet_utils.bullet_client", "sim", package="pybullet")
        with _c_stdout_to_stderr():  # PyBullet's C code prints "argv[0]=" on stdout
            self.client = bullet_client.BulletClient(connection_mode=self._pb.DIRECT)
        self.lock = threading.RLock()
        self._urdf = urdf or light_xarm_urdf(tcp_offset_m=TCP_OFFSET_M)
        self._thread: threading.Thread | None = None
        self._stop_thread = threading.Event()
        self.objects: dict[str, int] = {}
        #: camera name -> (translation [3] in the base frame (m), rotation vector [3] in the
        #: camera's frame (rad)): a camera bumped after calibration (`knock_camera`)
        self.camera_knocks: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {}
        self.reset(seed)

    # -- scene -------------------------------------------------------------------------------

    def reset(self, seed: int = 0) -> None:
        """Rebuild the cell from scratch (table, arm at home, no objects): same seed, same world."""
        with self.lock:
            pb, c, cfg = self._pb, self.client, self.config
            c.resetSimulation()
            c.setTimeStep(1.0 / cfg.physics_hz)
            c.setGravity(0.0, 0.0, -9.81)
            c.setPhysicsEngineParameter(deterministicOverlappingPairs=1)
            self.rng = np.random.default_rng(seed)
            self.seed = seed
            self.objects = {}
            self.steps = 0
            half = cfg.table_half_extents
            center = (*cfg.table_center_xy, -half[2])
            self.table = c.createMultiBody(
                0.0,
                c.createCollisionShape(pb.GEOM_BOX, halfExtents=half),
                c.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=cfg.table_rgba),
                center,
            )
            c.changeDynamics(self.table, -1, lateralFriction=0.8)
            self.robot = c.loadURDF(
                str(self._urdf), useFixedBase=True, flags=pb.URDF_USE_SELF_COLLISION
            )
            # The gripper's linkage is an open tree in the URDF whose links overlap by design.
            hand = (FLANGE_LINK, *GRIPPER_LINKS, c.getNumJoints(self.robot) - 1)
            for i, a in enumerate(hand):
                for b in hand[i + 1 :]:
                    c.setCollisionFilterPair(self.robot, self.robot, a, b, 0)
            for base_link in (-1, 0):  # the base is bolted onto the table
                c.setCollisionFilterPair(self.robot, self.table, base_link, -1, 0)
            for link in FINGER_LINKS:
                c.changeDynamics(self.robot, link, lateralFriction=1.5, spinningFriction=0.01)
            num_joints = c.getNumJoints(self.robot)
            self._movable = [
                j for j in range(num_joints) if c.getJointInfo(self.robot, j)[2] != pb.JOINT_FIXED
            ]
            info = [c.getJointInfo(self.robot, j) for j in ARM_JOINTS]
            self.joint_lower = np.array([i[8] for i in info])
            self.joint_upper = np.array([i[9] for i in info])
            self._error = ArmErrorCode.NONE
            self._enabled = True
            self._target: np.ndarray | None = None
            self._stalled_s = 0.0
            self._grasp: int | None = None
            self._gripper_target = 1.0
            self._gripper_cmd = 0.0
            self.reset_arm(top_down_pose(np.array(cfg.home_tcp)), gripper=1.0)

    def add_cube(
        self,
        name: str,
        rgba: tuple[float, float, float, float],
        position: np.ndarray,
        yaw: float,
        size: float = 0.04,
        mass: float = 0.06,
    ) -> int:
        """A dynamic cube resting at `position` (its centre, m) rotated by `yaw` (rad)."""
        with self.lock:
            pb, c = self._pb, self.client
            half = [size / 2.0] * 3
            body = c.createMultiBody(
                mass,
                c.createCollisionShape(pb.GEOM_BOX, halfExtents=half),
                c.createVisualShape(pb.GEOM_BOX, halfExtents=half, rgbaColor=rgba),
                list(map(float, position)),
                c.getQuaternionFromEuler([0.0, 0.0, float(yaw)]),
            )
            c.changeDynamics(body, -1, lateralFriction=1.2, spinningFriction=0.005)
            self.objects[name] = body
            return body

    def object_pose(self, name: str) -> np.ndarray:
        """Pose [4, 4] of a named object in the base frame."""
        with self.lock:
            pos, quat = self.client.getBasePositionAndOrientation(self.objects[name])
            return pose_to_matrix(np.array(pos), quat_to_matrix(np.array(quat)))

    def add_marker(self, position: np.ndarray, radius: float = 0.008) -> int:
        """A visual-only sphere (no collision, no mass); move it with `move_marker`."""
        with self.lock:
            pb, c = self._pb, self.client
            visual = c.createVisualShape(pb.GEOM_SPHERE, radius=radius, rgbaColor=(1, 0, 1, 1))
            return c.createMultiBody(0.0, -1, visual, list(map(float, position)))

    def move_marker(self, marker: int, position: np.ndarray) -> None:
        with self.lock:
            self.client.resetBasePositionAndOrientation(
                marker, list(map(float, position)), (0, 0, 0, 1)
            )

    # -- arm ---------------------------------------------------------------------------------

    def reset_arm(self, tool_pose: np.ndarray, gripper: float = 1.0) -> None:
        """Teleport the arm (no physics) to a TCP pose; used to set up a scene, never to move."""
        with self.lock:
            q = self._ik(tool_pose, self.joints(), iterations=6, teleport=True)
            self.reset_joints(q, gripper)
            self._target = np.asarray(tool_pose, dtype=np.float64).copy()

    def reset_joints(self, joints: np.ndarray, gripper: float = 1.0) -> None:
        """Teleport the arm to joint angles [6] (rad); the current pose becomes the target."""
        with self.lock:
            q = np.asarray(joints, dtype=np.float64)
            for j, angle in zip(ARM_JOINTS, q, strict=True):
                self.client.resetJointState(self.robot, j, float(angle))
            angle = (1.0 - float(np.clip(gripper, 0.0, 1.0))) * GRIPPER_CLOSED_ANGLE
            for j in (GRIPPER_DRIVE, *GRIPPER_MIMIC):
                self.client.resetJointState(self.robot, j, angle)
            self._q_cmd = q.copy()
            self._gripper_cmd = angle
            self._gripper_target = float(np.clip(gripper, 0.0, 1.0))
            self._target = self.tool_pose()
            self._apply_motors()

    def joints(self) -> np.ndarray:
        with self.lock:
            return np.array([s[0] for s in self.client.getJointStates(self.robot, ARM_JOINTS)])

    def tool_pose(self) -> np.ndarray:
        """Measured TCP pose [4, 4] (forward kinematics of the measured joints)."""
        with self.lock:
            state = self.client.getLinkState(self.robot, FLANGE_LINK, computeForwardKinematics=True)
            flange = pose_to_matrix(np.array(state[4]), quat_to_matrix(np.array(state[5])))
            return flange @ tcp_offset()

    def gripper_openness(self) -> float:
        with self.lock:
            angle = self.client.getJointState(self.robot, GRIPPER_DRIVE)[0]
            return float(np.clip(1.0 - angle / GRIPPER_CLOSED_ANGLE, 0.0, 1.0))

    def arm_state(self) -> ArmState:
        with self.lock:
            return ArmState(
                tool_pose=self.tool_pose(),
                joints=self.joints(),
                gripper=self.gripper_openness(),
                error_code=int(self._error),
                warning_code=0,
                timestamp_ns=self.time_ns,
                enabled=self._enabled,
            )

    def set_servo_target(self, tool_pose: np.ndarray) -> None:
        """Latest TCP target; checks the boundary and the jump size first (C35, C24)."""
        with self.lock:
            if not self._enabled or self._error:
                return
            tool_pose = np.asarray(tool_pose, dtype=np.float64)
            position = tool_pose[:3, 3]
            cfg = self.config
            if np.any(position < cfg.workspace_low) or np.any(position > cfg.workspace_high):
                self._fault(ArmErrorCode.BOUNDARY)
                return
            if np.linalg.norm(position - self.tool_pose()[:3, 3]) > cfg.max_servo_jump_m:
                self._fault(ArmErrorCode.SPEED_LIMIT)
                return
            self._target = tool_pose.copy()

    def set_gripper_target(self, openness: float) -> None:
        with self.lock:
            if self._enabled and not self._error:
                self._gripper_target = float(np.clip(openness, 0.0, 1.0))

    def hold(self) -> None:
        """Soft stop: the current pose becomes the target."""
        with self.lock:
            self._target = self.tool_pose()
            self._q_cmd = self.joints()
            self._gripper_target = self.gripper_openness()

    def emergency_stop(self) -> None:
        with self.lock:
            self._fault(ArmErrorCode.EMERGENCY_STOP)

    def clear_errors(self) -> None:
        with self.lock:
            self._error = ArmErrorCode.NONE

    def enable(self) -> None:
        with self.lock:
            if self._error:
                raise ValueError(
                    f"arm is in error C{int(self._error)} ({self._error.name}): "
                    "call clear_errors() before enable()"
                )
            self.hold()
            self._enabled = True

    @property
    def error_code(self) -> ArmErrorCode:
        return self._error

    def _fault(self, code: ArmErrorCode) -> None:
        if self._error == ArmErrorCode.NONE:
            self._error = code
        self._enabled = False
        self._q_cmd = self.joints()
        self._target = None
        self._apply_motors()

    def _ik(
        self, tool_pose: np.ndarray, seed: np.ndarray, iterations: int = 1, teleport: bool = False
    ) -> np.ndarray:
        """Joint angles [6] that put the TCP at `tool_pose`, starting from `seed`."""
        flange = np.asarray(tool_pose) @ invert_pose(tcp_offset())
        position = flange[:3, 3].tolist()
        quat = matrix_to_quat(flange[:3, :3]).tolist()
        c = self.client
        current = [s[0] for s in c.getJointStates(self.robot, self._movable)]
        q = np.asarray(seed, dtype=np.float64)
        for _ in range(iterations):
            current[:6] = q.tolist()
            solution = c.calculateInverseKinematics(
                self.robot,
                FLANGE_LINK,
                position,
                quat,
                currentPositions=current,
                maxNumIterations=60,
                residualThreshold=1e-6,
            )
            q = np.array(solution[:6])
            if teleport:
                for j, angle in zip(ARM_JOINTS, q, strict=True):
                    c.resetJointState(self.robot, j, float(angle))
        return q

    def _control_tick(self, dt: float) -> None:
        if self._enabled and not self._error and self._target is not None:
            q_goal = self._ik(self._target, self.joints())
            if not np.all(np.isfinite(q_goal)):
                self._fault(ArmErrorCode.KINEMATICS)
                return
            if np.any(q_goal < self.joint_lower - 1e-3) or np.any(q_goal > self.joint_upper + 1e-3):
                self._fault(ArmErrorCode.JOINT_LIMIT)
                return
            if not self._tracking(q_goal, dt):
                self._fault(ArmErrorCode.KINEMATICS)
                return
            step = self.config.joint_speed_limit * dt
            self._q_cmd = self._q_cmd + np.clip(q_goal - self._q_cmd, -step, step)
            goal = (1.0 - self._gripper_target) * GRIPPER_CLOSED_ANGLE
            g_step = self.config.gripper_speed * dt
            self._gripper_cmd += float(np.clip(goal - self._gripper_cmd, -g_step, g_step))
        self._apply_motors()
        self._check_contacts()
        self._update_grasp()

    def _update_grasp(self) -> None:
        """Grasp assist (as RLBench does): weld an object squeezed by both finger pads.

        The fingers close physically and stop on the object; once both pads touch it while the
        gripper is commanded closed, the object is fixed to the hand at its current relative
        pose, and released as soon as the gripper is commanded open. PyBullet's friction alone
        lets a 4-bar gripper's arcing pads roll a small cube out of the grasp.
        """
        c = self.client
        if self._grasp is not None:
            if self._gripper_target > 0.5 or self._error == ArmErrorCode.EMERGENCY_STOP:
                c.removeConstraint(self._grasp)
                self._grasp = None
            return
        if self._gripper_target > 0.5:
            return
        for body in self.objects.values():
            touching = {contact[3] for contact in c.getContactPoints(self.robot, body)}
            if all(link in touching for link in FINGER_LINKS):
                hand = c.getLinkState(self.robot, GRIPPER_BASE_LINK)
                hand_com = pose_to_matrix(np.array(hand[0]), quat_to_matrix(np.array(hand[1])))
                position, quat = c.getBasePositionAndOrientation(body)
                obj = pose_to_matrix(np.array(position), quat_to_matrix(np.array(quat)))
                relative = invert_pose(hand_com) @ obj
                self._grasp = c.createConstraint(
                    self.robot,
                    GRIPPER_BASE_LINK,
                    body,
                    -1,
                    self._pb.JOINT_FIXED,
                    [0.0, 0.0, 0.0],
                    relative[:3, 3].tolist(),
                    [0.0, 0.0, 0.0],
                    matrix_to_quat(relative[:3, :3]).tolist(),
                    [0.0, 0.0, 0.0, 1.0],
                )
                c.changeConstraint(self._grasp, maxForce=self.config.grasp_max_force)
                return

    @property
    def grasped(self) -> bool:
        """Whether an object is currently held (welded by the grasp assist)."""
        return self._grasp is not None

    def _tracking(self, q_goal: np.ndarray, dt: float) -> bool:
        """False once the joints have settled on the IK answer but the TCP is still off target.

        That is an unreachable target (beyond reach, or a pose the wrist cannot take): the real
        controller refuses it with a kinematics error instead of stopping somewhere else.
        """
        settled = np.max(np.abs(q_goal - self.joints())) < 2e-3
        off = np.linalg.norm(self._target[:3, 3] - self.tool_pose()[:3, 3]) > 0.01
        self._stalled_s = self._stalled_s + dt if (settled and off) else 0.0
        return self._stalled_s < self.config.unreachable_timeout_s

    def _apply_motors(self) -> None:
        pb, c, cfg = self._pb, self.client, self.config
        c.setJointMotorControlArray(
            self.robot,
            ARM_JOINTS,
            pb.POSITION_CONTROL,
            targetPositions=self._q_cmd.tolist(),
            targetVelocities=[0.0] * 6,
            forces=list(cfg.joint_max_force),
            positionGains=[0.3] * 6,
            velocityGains=[1.0] * 6,
        )
        drive = c.getJointState(self.robot, GRIPPER_DRIVE)[0]
        c.setJointMotorControl2(
            self.robot,
            GRIPPER_DRIVE,
            pb.POSITION_CONTROL,
            targetPosition=self._gripper_cmd,
            force=cfg.gripper_force,
            maxVelocity=cfg.gripper_speed,
        )
        c.setJointMotorControlArray(
            self.robot,
            GRIPPER_MIMIC,
            pb.POSITION_CONTROL,
            targetPositions=[drive] * len(GRIPPER_MIMIC),
            forces=[cfg.gripper_linkage_force] * len(GRIPPER_MIMIC),
            positionGains=[1.0] * len(GRIPPER_MIMIC),
        )

    def _check_contacts(self) -> None:
        """Latch C22 (self-collision) or C31 (collision) as the xArm firmware would."""
        if self._error:
            return
        c = self.client
        if c.getContactPoints(self.robot, self.robot):
            self._fault(ArmErrorCode.SELF_COLLISION)
            return
        limit = self.config.contact_force_limit
        for contact in c.getContactPoints(bodyA=self.robot):
            link, other, force = contact[3], contact[2], contact[9]
            hand = link in GRIPPER_LINKS
            if other == self.table and (not hand or force > limit):
                self._fault(ArmErrorCode.COLLISION)
                return
            if other != self.table and (not hand or force > 2 * limit):
                self._fault(ArmErrorCode.COLLISION)
                return

    # -- time --------------------------------------------------------------------------------

    @property
    def time_ns(self) -> int:
        """Simulated time since `reset`, in nanoseconds."""
        return round(self.steps * 1e9 / self.config.physics_hz)

    @property
    def time_s(self) -> float:
        return self.steps / self.config.physics_hz

    def step(self, num_steps: int = 1) -> None:
        """Advance physics by `num_steps` ticks (the controller runs every few ticks)."""
        with self.lock:
            dt = self.config.control_decimation / self.config.physics_hz
            for _ in range(num_steps):
                if self.steps % self.config.control_decimation == 0:
                    self._control_tick(dt)
                self.client.stepSimulation()
                self.steps += 1

    def advance(self, seconds: float) -> None:
        """Advance physics by `seconds` of simulated time (rounded to whole ticks)."""
        self.step(max(0, round(seconds * self.config.physics_hz)))

    def start_real_time(self) -> None:
        """Step physics in a background thread, paced to the wall clock (for the runtime)."""
        if self._thread is not None:
            return
        self._stop_thread.clear()
        self._thread = threading.Thread(target=self._real_time_loop, daemon=True)
        self._thread.start()

    def stop_real_time(self) -> None:
        if self._thread is not None:
            self._stop_thread.set()
            self._thread.join()
            self._thread = None

    @property
    def real_time(self) -> bool:
        return self._thread is not None

    def _real_time_loop(self) -> None:
        start_wall, start_steps = time.monotonic(), self.steps
        hz = self.config.physics_hz
        while not self._stop_thread.is_set():
            due = start_steps + int((time.monotonic() - start_wall) * hz)
            behind = due - self.steps
            if behind > 0:
                self.step(min(behind, self.config.control_decimation))
            else:
                time.sleep(0.5 / hz)

    # -- rendering ---------------------------------------------------------------------------

    def knock_camera(
        self, name: str, translation_m: Sequence[float], rotation_rad: Sequence[float]
    ) -> None:
        """Bump camera `name`: its renders move, its reported calibration does not (as when a
        tripod is knocked). Zero translation and rotation put it back. Survives `reset`."""
        translation = tuple(float(v) for v in translation_m)
        rotation = tuple(float(v) for v in rotation_rad)
        if len(translation) != 3 or len(rotation) != 3:
            raise ValueError("a knock is a translation [3] (m) and a rotation vector [3] (rad)")
        with self.lock:
            if any(translation) or any(rotation):
                self.camera_knocks[name] = (translation, rotation)
            else:
                self.camera_knocks.pop(name, None)

    def render(
        self, camera: Camera, segmentation: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """RGB [H, W, 3] uint8 seen by `camera`, and optionally the segmentation [H, W] int32.

        Segmentation values are `body + ((link + 1) << 24)` (PyBullet's object-and-link
        encoding), -1 for background.
        """
        pb = self._pb
        flags = (
            pb.ER_SEGMENTATION_MASK_OBJECT_AND_LINKINDEX
            if segmentation
            else pb.ER_NO_SEGMENTATION_MASK
        )
        with self.lock:
            _, _, rgba, _, seg = self.client.getCameraImage(
                camera.width,
                camera.height,
                gl_view_matrix(camera),
                gl_projection_matrix(camera, self.config.render_near, self.config.render_far),
                renderer=pb.ER_TINY_RENDERER,
                flags=flags,
            )
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(camera.height, camera.width, 4)[..., :3]
        mask = (
            np.asarray(seg, dtype=np.int32).reshape(camera.height, camera.width)
            if segmentation
            else None
        )
        return np.ascontiguousarray(rgb), mask

    def close(self) -> None:
        self.stop_real_time()
        with self.lock:
            if self.client is not None:
                self.client.disconnect()
                self.client = None

    def __enter__(self) -> SimWorld:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit PyBullet may be gone
            self.close()
