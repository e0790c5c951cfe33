"""Eye-to-hand calibration of static cameras with a ChArUco board carried by the gripper.

The procedure: a scripted motion through the `Arm` (a sweep that finds where each camera is,
then poses aimed at each camera with tilts and rolls about all axes), board detection in every
view, rejection of poor views, a closed-form OpenCV hand-eye solution per camera, one joint
reprojection-error refinement of all cameras and the shared board mount, and residuals on
held-out validation poses. Frames: A_i = base_T_tool (arm), B_i = cam_T_board (PnP);
base_T_cam = c2w and tool_T_board satisfy c2w @ B_i = A_i @ tool_T_board.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType

import numpy as np

from aimg.calib.board import BoardDetector, BoardSpec, Detection, solve_board_pose
from aimg.geometry import (
    Camera,
    invert_pose,
    matrix_to_rotvec,
    pose_to_matrix,
    rotation_angle_between,
    rotvec_to_matrix,
)
from aimg.optional import require
from aimg.robot.interfaces import Arm, CameraRig

#: closed-form solvers: `cv2.calibrateHandEye` (first five) and `calibrateRobotWorldHandEye`.
HAND_EYE_METHODS = ("tsai", "park", "horaud", "andreff", "daniilidis", "shah", "li")


class CalibrationError(RuntimeError):
    """The calibration cannot be trusted; the message says why and what to do."""


def _cv2() -> ModuleType:
    return require("cv2", "robot", package="opencv-python-headless")


# -- board mount and motion ----------------------------------------------------------------------


def flag_mount(spec: BoardSpec, offset_m: float = 0.06, drop_m: float = 0.06) -> np.ndarray:
    """tool_T_board [4, 4] of a board standing beside the gripper like a flag, facing tool +x.

    Printed side towards tool +x, its rows running along tool +z (upright when the gripper
    points down), centred `offset_m` along tool x and `drop_m` back along tool -z from the TCP.
    The gripper stays behind the board for any camera it faces, so nothing occludes it.
    """
    width, height = spec.size_m
    rotation = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    center = np.array([offset_m, 0.0, -drop_m])
    return pose_to_matrix(center - rotation @ np.array([width / 2, height / 2, 0.0]), rotation)


def board_center(spec: BoardSpec) -> np.ndarray:
    """Board centre in the board frame [3]."""
    width, height = spec.size_m
    return np.array([width / 2, height / 2, 0.0])


def _rot_about(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    return rotvec_to_matrix(axis / np.linalg.norm(axis) * angle)


def facing_pose(
    board_position: np.ndarray,
    direction: np.ndarray,
    tool_T_board: np.ndarray,
    spec: BoardSpec,
    roll: float = 0.0,
) -> np.ndarray:
    """TCP pose [4, 4] that puts the board centre at `board_position` facing `direction`.

    Among such poses, the one whose tool z points most downwards (a natural gripper posture),
    then rolled by `roll` (rad) about the board normal.
    """
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d)
    normal_tool = -tool_T_board[:3, 2]  # the printed side looks along -z_board
    secondary_tool = np.array([0.0, 0.0, 1.0])
    if abs(normal_tool @ secondary_tool) > 0.9:
        secondary_tool = np.array([1.0, 0.0, 0.0])
    secondary_tool = secondary_tool - (secondary_tool @ normal_tool) * normal_tool
    secondary_tool /= np.linalg.norm(secondary_tool)
    down = np.array([0.0, 0.0, -1.0])
    if abs(down @ d) > 0.95:
        down = np.array([1.0, 0.0, 0.0])
    secondary_world = down - (down @ d) * d
    secondary_world /= np.linalg.norm(secondary_world)
    tool_frame = np.stack(
        [normal_tool, secondary_tool, np.cross(normal_tool, secondary_tool)], axis=-1
    )
    world_frame = np.stack([d, secondary_world, np.cross(d, secondary_world)], axis=-1)
    rotation = _rot_about(d, roll) @ world_frame @ tool_frame.T
    center_in_tool = (tool_T_board @ np.append(board_center(spec), 1.0))[:3]
    return pose_to_matrix(np.asarray(board_position) - rotation @ center_in_tool, rotation)


@dataclass(frozen=True)
class MotionSettings:
    """The scripted calibration motion (metres, degrees).

    `center` is where the board sits on average; poses stay inside `workspace_low/high` shrunk
    by `margin_m`. The sweep (`sweep_azimuths_deg` x `sweep_elevations_deg`) finds every camera;
    then `poses_per_camera` poses aim at each, with tilts of up to `tilt_deg` and rolls of up to
    `roll_deg` about the board normal, positions spread by `spread_m` and by `depth_spread_m`
    towards / away from the camera; the tool axis stays within `max_tool_tilt_deg` of straight
    down (beyond it the xArm folds into itself); every
    `validation_every`-th aimed pose is held out for validation.
    """

    center: tuple[float, float, float] = (0.45, 0.0, 0.30)
    workspace_low: tuple[float, float, float] = (0.12, -0.5, -0.01)
    workspace_high: tuple[float, float, float] = (0.80, 0.5, 0.65)
    margin_m: float = 0.05
    spread_m: tuple[float, float, float] = (0.08, 0.12, 0.08)
    depth_spread_m: float = 0.12
    max_tool_tilt_deg: float = 50.0
    min_height_m: float = 0.22
    min_radius_m: float = 0.38
    sweep_azimuths_deg: tuple[float, ...] = (-90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0)
    sweep_elevations_deg: tuple[float, ...] = (20.0, 45.0)
    poses_per_camera: int = 14
    tilt_deg: float = 35.0
    roll_deg: float = 45.0
    validation_every: int = 4
    settle_s: float = 0.25
    seed: int = 0
    #: move_to's waypoint spacing and servo period (m, s): 0.75 m/s suits the sim's arm
    step_m: float = 0.03
    tick_s: float = 0.04

    @classmethod
    def real_arm(cls, **changes: object) -> MotionSettings:
        """Settings for a real xArm in servo mode: 2 mm targets every 10 ms (0.2 m/s; bigger
        jumps raise C24), and a longer settle for the cameras' exposure."""
        return cls(**{"step_m": 0.002, "tick_s": 0.01, "settle_s": 0.5, **changes})

    def clamp(self, position: np.ndarray) -> np.ndarray:
        """Keep a board position inside the shrunk workspace, at least `min_height_m` above the
        table and `min_radius_m` out from the base (the gripper hangs below the board; the arm
        cannot fold closer)."""
        low = np.asarray(self.workspace_low) + self.margin_m
        low[2] = max(low[2], self.min_height_m)
        high = np.asarray(self.workspace_high) - self.margin_m
        clamped = np.clip(position, low, high)
        radius = float(np.linalg.norm(clamped[:2]))
        if radius < self.min_radius_m:
            direction = clamped[:2] / radius if radius > 1e-9 else np.array([1.0, 0.0])
            clamped[:2] = direction * self.min_radius_m
        return clamped


def _direction(azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])


def sweep_poses(
    settings: MotionSettings, tool_T_board: np.ndarray, spec: BoardSpec
) -> list[np.ndarray]:
    """TCP poses [4, 4] turning the board through a fan of directions, to find the cameras."""
    center = settings.clamp(np.asarray(settings.center, dtype=np.float64))
    poses = []
    for row, el in enumerate(settings.sweep_elevations_deg):  # serpentine: no long swings
        azimuths = settings.sweep_azimuths_deg[:: -1 if row % 2 else 1]
        poses += [facing_pose(center, _direction(az, el), tool_T_board, spec) for az in azimuths]
    return poses


def _comfortable(pose: np.ndarray, max_tilt_deg: float) -> bool:
    """Whether the tool points down within `max_tilt_deg` and not back towards the robot's
    base: beyond either the xArm's IK flips its elbow or folds the arm into itself."""
    tool_z = pose[:3, 2]
    radial = pose[:2, 3] / max(np.linalg.norm(pose[:2, 3]), 1e-9)
    down_enough = -tool_z[2] >= math.cos(math.radians(max_tilt_deg))
    return down_enough and float(tool_z[:2] @ radial) >= -0.2


def aimed_poses(
    camera_center: np.ndarray,
    settings: MotionSettings,
    tool_T_board: np.ndarray,
    spec: BoardSpec,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """TCP poses [4, 4] facing a camera at `camera_center` (base frame, m).

    Tilt directions go round the board normal evenly and rolls alternate in sign, so the set
    rotates about all three axes (hand-eye needs rotations about >= 2 non-parallel axes).
    """
    center = np.asarray(settings.center, dtype=np.float64)
    spread = np.asarray(settings.spread_m)
    poses = []
    n = settings.poses_per_camera
    toward = np.asarray(camera_center) - center
    toward /= np.linalg.norm(toward)
    for k in range(n):
        # spread in depth as well: boards at one distance let a sideways camera offset pass
        # for a small camera rotation
        depth = settings.depth_spread_m * (2.0 * ((k * 0.618034) % 1.0) - 1.0)
        position = center + spread * rng.uniform(-1.0, 1.0, size=3) + depth * toward
        position = settings.clamp(position)
        to_camera = np.asarray(camera_center) - position
        to_camera /= np.linalg.norm(to_camera)
        side = np.cross(to_camera, [0.0, 0.0, 1.0])
        if np.linalg.norm(side) < 1e-6:
            side = np.array([0.0, 1.0, 0.0])
        side /= np.linalg.norm(side)
        up = np.cross(side, to_camera)
        up /= np.linalg.norm(up)
        phase = 2.0 * math.pi * (k + 0.5 * rng.uniform()) / n
        axis = math.cos(phase) * side + math.sin(phase) * up
        tilt = math.radians(settings.tilt_deg) * (0.5 + 0.5 * rng.uniform())
        sign = 1.0 if k % 2 else -1.0
        roll = math.radians(settings.roll_deg) * sign * (0.3 + 0.7 * rng.uniform())
        for _ in range(5):  # soften the pose until the gripper points down enough
            direction = _rot_about(axis, tilt) @ to_camera
            pose = facing_pose(position, direction, tool_T_board, spec, roll)
            if _comfortable(pose, settings.max_tool_tilt_deg):
                break
            tilt, roll = 0.6 * tilt, 0.6 * roll
        poses.append(pose)
    return poses


# -- driving the arm -----------------------------------------------------------------------------

Wait = Callable[[float], None]


def real_time_wait(seconds: float) -> None:
    """`Wait` for a real arm: sleep in wall-clock time."""
    time.sleep(seconds)


def move_to(
    arm: Arm,
    target: np.ndarray,
    wait: Wait,
    step_m: float = 0.03,
    step_rad: float = 0.05,
    tick_s: float = 0.04,
    timeout_s: float = 3.0,
    tolerance_m: float = 0.0003,
    tolerance_deg: float = 0.05,
) -> bool:
    """Servo to `target` through interpolated waypoints; False if the arm faulted or stalled.

    The last waypoint must be reached within `tolerance_m` / `tolerance_deg` (a real xArm
    repeats poses to ~0.1 mm), so a drift check sees the board where calibration saw it.

    Small steps keep every servo target within the controller's jump limit and the IK on one
    branch (a real xArm needs ~2 mm steps every 10 ms: `MotionSettings.real_arm()`). The target
    is re-sent every tick. On a fault the arm's errors are cleared and it is re-enabled where
    it stopped.
    """
    start = arm.read_state().tool_pose
    distance = np.linalg.norm(target[:3, 3] - start[:3, 3])
    relative = matrix_to_rotvec(start[:3, :3].T @ target[:3, :3])
    angle = float(np.linalg.norm(relative))
    steps = max(1, math.ceil(distance / step_m), math.ceil(angle / step_rad))
    for i in range(1, steps + 1):
        f = i / steps
        waypoint = pose_to_matrix(
            start[:3, 3] + f * (target[:3, 3] - start[:3, 3]),
            start[:3, :3] @ rotvec_to_matrix(f * relative),
        )
        elapsed = 0.0
        while True:
            arm.servo(waypoint)  # streamed: a real xArm holds after ~0.3 s without a target
            wait(tick_s)
            elapsed += tick_s
            state = arm.read_state()
            if not state.ok:
                arm.clear_errors()
                arm.enable()
                return False
            final = i == steps
            close = np.linalg.norm(state.tool_pose[:3, 3] - waypoint[:3, 3]) < (
                tolerance_m if final else 0.01
            )
            aligned = rotation_angle_between(state.tool_pose[:3, :3], waypoint[:3, :3]) < (
                math.radians(tolerance_deg if final else 3.0)
            )
            if close and aligned:
                break
            if elapsed > timeout_s:
                near = np.linalg.norm(state.tool_pose[:3, 3] - waypoint[:3, 3]) < 0.002
                if final and near:  # settled a little off: usable, the pose is measured
                    return True
                arm.stop()
                return False
    return True


@dataclass
class View:
    """One captured pose: the arm's reading and each camera's image and board detection."""

    tool_pose: np.ndarray
    images: dict[str, np.ndarray]
    detections: dict[str, Detection]
    phase: str  # "sweep", "train" or "validation"
    aimed_at: str | None = None


def capture(
    arm: Arm, rig: CameraRig, detector: BoardDetector, wait: Wait, settle_s: float, phase: str
) -> View:
    """Let the arm settle, then read its pose and all cameras (the board must be still)."""
    wait(settle_s)
    state = arm.read_state()
    frames = rig.read()
    images = {name: np.asarray(img) for name, img in frames.images.items()}
    return View(
        tool_pose=state.tool_pose,
        images=images,
        detections={name: detector.detect(img) for name, img in images.items()},
        phase=phase,
    )


# -- solving -------------------------------------------------------------------------------------


def _pose_params(pose: np.ndarray) -> np.ndarray:
    return np.concatenate([matrix_to_rotvec(pose[:3, :3]), pose[:3, 3]])


def _params_pose(params: np.ndarray) -> np.ndarray:
    return pose_to_matrix(params[3:6], rotvec_to_matrix(params[:3]))


def closed_form(
    tool_poses: np.ndarray, board_poses: np.ndarray, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """c2w [4, 4] and tool_T_board [4, 4] from A_i = base_T_tool, B_i = cam_T_board ([N, 4, 4]).

    Eye-to-hand with `calibrateHandEye` passes base_T_tool inverted (its documented use);
    `calibrateRobotWorldHandEye` treats the board as its "camera" and the camera as its "world".
    """
    cv2 = _cv2()
    method = method.lower()
    tool_base = invert_pose(tool_poses)
    if method in ("shah", "li"):
        board_cam = invert_pose(board_poses)
        flag = {
            "shah": cv2.CALIB_ROBOT_WORLD_HAND_EYE_SHAH,
            "li": cv2.CALIB_ROBOT_WORLD_HAND_EYE_LI,
        }[method]
        r_bw, t_bw, r_gc, t_gc = cv2.calibrateRobotWorldHandEye(
            list(board_cam[:, :3, :3]),
            list(board_cam[:, :3, 3:4]),
            list(tool_base[:, :3, :3]),
            list(tool_base[:, :3, 3:4]),
            method=flag,
        )
        cam_base = pose_to_matrix(np.asarray(t_bw).reshape(3), np.asarray(r_bw))
        c2w = invert_pose(cam_base)
        board_tool = pose_to_matrix(np.asarray(t_gc).reshape(3), np.asarray(r_gc))
        return c2w, invert_pose(board_tool)
    flags = {
        "tsai": cv2.CALIB_HAND_EYE_TSAI,
        "park": cv2.CALIB_HAND_EYE_PARK,
        "horaud": cv2.CALIB_HAND_EYE_HORAUD,
        "andreff": cv2.CALIB_HAND_EYE_ANDREFF,
        "daniilidis": cv2.CALIB_HAND_EYE_DANIILIDIS,
    }
    if method not in flags:
        raise ValueError(f"unknown hand-eye method {method!r}; choose one of {HAND_EYE_METHODS}")
    r_cb, t_cb = cv2.calibrateHandEye(
        list(tool_base[:, :3, :3]),
        list(tool_base[:, :3, 3:4]),
        list(board_poses[:, :3, :3]),
        list(board_poses[:, :3, 3:4]),
        method=flags[method],
    )
    c2w = pose_to_matrix(np.asarray(t_cb).reshape(3), np.asarray(r_cb))
    per_view = tool_base @ c2w @ board_poses  # tool_T_board seen in each view
    rotation = _mean_rotation(per_view[:, :3, :3])
    return c2w, pose_to_matrix(per_view[:, :3, 3].mean(axis=0), rotation)


def _mean_rotation(rotations: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(rotations.sum(axis=0))
    fix = np.diag([1.0, 1.0, np.linalg.det(u @ vt)])
    return u @ fix @ vt


def check_motion_diversity(tool_poses: np.ndarray, what: str, min_deg: float = 5.0) -> None:
    """Raise CalibrationError unless the poses rotate about >= 2 clearly non-parallel axes.

    Hand-eye is unobservable otherwise: rotations about one axis leave the translation along it
    (and pure translations the whole rotation) undetermined.
    """
    relative = matrix_to_rotvec(np.swapaxes(tool_poses[:1, :3, :3], -1, -2) @ tool_poses[:, :3, :3])
    relative = relative[np.linalg.norm(relative, axis=1) > math.radians(min_deg)]
    if len(relative) >= 2:
        singular = np.linalg.svd(relative, compute_uv=False)
        if singular[1] > math.radians(min_deg):
            return
    raise CalibrationError(
        f"degenerate motion for {what}: the arm poses rotate about fewer than two distinct axes "
        f"by more than {min_deg:g} deg; hand-eye needs tilts about at least two non-parallel axes "
        "(use the scripted motion, or widen MotionSettings.tilt_deg / roll_deg)"
    )


def _distort_project(points_cam: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Camera-frame points [..., 3] -> pixels [..., 2] with OpenCV's 5-term distortion."""
    xy = points_cam[..., :2] / points_cam[..., 2:3]
    if np.any(dist):
        k1, k2, p1, p2, k3 = (list(dist) + [0.0] * 5)[:5]
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1 + k1 * r2 + k2 * r2 * r2 + k3 * r2**3
        xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
        yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
        xy = np.stack([xd, yd], axis=-1)
    return xy * np.array([K[0, 0], K[1, 1]]) + K[:2, 2]


@dataclass
class CameraViews:
    """The usable views of one camera: arm poses [N, 4, 4] and detections."""

    tool_poses: np.ndarray
    detections: list[Detection]
    board_poses: np.ndarray  # PnP cam_T_board [N, 4, 4]


def _view_residuals(
    c2w: np.ndarray,
    tool_T_board: np.ndarray,
    views: CameraViews,
    object_points: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray,
) -> list[np.ndarray]:
    """Per view, pixel residuals [n_i, 2] (predicted minus detected)."""
    w2c = invert_pose(c2w)
    out = []
    for pose, det in zip(views.tool_poses, views.detections, strict=True):
        cam_T_board = w2c @ pose @ tool_T_board
        pts = object_points[det.ids] @ cam_T_board[:3, :3].T + cam_T_board[:3, 3]
        out.append(_distort_project(pts, K, dist) - det.corners)
    return out


def refine(
    c2ws: Mapping[str, np.ndarray],
    tool_T_board: np.ndarray,
    views: Mapping[str, CameraViews],
    object_points: np.ndarray,
    intrinsics: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Joint least-squares on all cameras' reprojection errors (Huber, 1 px) with one shared
    board mount; the closed-form solutions weigh rotation and translation arbitrarily, this
    minimises the quantity the detector actually measures."""
    scipy_opt = require("scipy.optimize", "core", package="scipy")
    names = list(c2ws)
    x0 = np.concatenate([_pose_params(tool_T_board)] + [_pose_params(c2ws[n]) for n in names])

    def residuals(x: np.ndarray) -> np.ndarray:
        mount = _params_pose(x[:6])
        parts = []
        for i, name in enumerate(names):
            c2w = _params_pose(x[6 + 6 * i : 12 + 6 * i])
            K, dist = intrinsics[name]
            parts += _view_residuals(c2w, mount, views[name], object_points, K, dist)
        return np.concatenate(parts).reshape(-1)

    result = scipy_opt.least_squares(residuals, x0, loss="huber", f_scale=1.0, x_scale="jac")
    x = result.x
    return (
        {n: _params_pose(x[6 + 6 * i : 12 + 6 * i]) for i, n in enumerate(names)},
        _params_pose(x[:6]),
    )


@dataclass(frozen=True)
class Residuals:
    """Reprojection residuals of a set of views: RMS in pixels, as ray angle (deg) and as
    lateral distance at the corner's depth (mm); `views` and `corners` counted."""

    rms_px: float
    rms_mm: float
    rms_deg: float
    max_px: float
    views: int
    corners: int

    def to_dict(self) -> dict:
        return {
            "rms_px": round(self.rms_px, 4),
            "rms_mm": round(self.rms_mm, 4),
            "rms_deg": round(self.rms_deg, 5),
            "max_px": round(self.max_px, 4),
            "views": self.views,
            "corners": self.corners,
        }


def residuals(
    c2w: np.ndarray,
    tool_T_board: np.ndarray,
    views: CameraViews,
    object_points: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray,
) -> Residuals:
    """Residuals of `views` under a calibration."""
    per_view = _view_residuals(c2w, tool_T_board, views, object_points, K, dist)
    if not per_view:
        return Residuals(float("nan"), float("nan"), float("nan"), float("nan"), 0, 0)
    px = np.concatenate([np.linalg.norm(r, axis=1) for r in per_view])
    w2c = invert_pose(c2w)
    depths = np.concatenate(
        [
            (object_points[d.ids] @ (w2c @ p @ tool_T_board)[:3, :3].T)[:, 2]
            + (w2c @ p @ tool_T_board)[2, 3]
            for p, d in zip(views.tool_poses, views.detections, strict=True)
        ]
    )
    focal = math.sqrt(K[0, 0] * K[1, 1])
    rms_px = float(np.sqrt(np.mean(px**2)))
    return Residuals(
        rms_px=rms_px,
        rms_mm=float(np.sqrt(np.mean((px * depths / focal) ** 2)) * 1000.0),
        rms_deg=math.degrees(math.atan(rms_px / focal)),
        max_px=float(px.max()),
        views=len(per_view),
        corners=len(px),
    )


@dataclass(frozen=True)
class HandEyeSettings:
    """Solver settings: `method` (one of HAND_EYE_METHODS), joint `refine`ment, view rejection
    (fewer than `min_corners` corners, single-view PnP RMS above both `max_view_rms_px` and
    3x the camera's median, or an RMS under the solution above `max_solved_rms_px` and 3x the
    median), `min_views` per camera."""

    method: str = "park"
    refine: bool = True
    min_corners: int = 10
    max_view_rms_px: float = 1.0
    max_solved_rms_px: float = 2.0
    min_views: int = 6

    def __post_init__(self) -> None:
        if self.method.lower() not in HAND_EYE_METHODS:
            raise ValueError(
                f"unknown hand-eye method {self.method!r}; choose one of {HAND_EYE_METHODS}"
            )


@dataclass
class CameraSolution:
    """One camera's calibration and its quality."""

    name: str
    camera: Camera
    distortion: np.ndarray
    train: Residuals
    validation: Residuals
    views_seen: int
    views_rejected: int
    reference_indices: list[int]  # indices into the views kept as drift references


@dataclass
class HandEyeResult:
    """All cameras' solutions, the shared board mount and the captured views."""

    cameras: dict[str, CameraSolution]
    tool_T_board: np.ndarray
    views: list[View]
    method: str
    refined: bool = True
    motion_seconds: float = 0.0
    rejected: dict[str, list[str]] = field(default_factory=dict)


def _select_views(
    name: str,
    views: list[View],
    phases: tuple[str, ...],
    object_points: np.ndarray,
    K: np.ndarray,
    dist: np.ndarray,
    settings: HandEyeSettings,
    reasons: list[str],
) -> tuple[CameraViews, list[int]]:
    candidates = []
    for index, view in enumerate(views):
        if view.phase not in phases:
            continue
        det = view.detections.get(name)
        if det is None or len(det) == 0:
            continue
        if len(det) < settings.min_corners:
            reasons.append(f"view {index}: {len(det)} corners < {settings.min_corners}")
            continue
        try:
            board, rms = solve_board_pose(object_points, det, K, dist)
        except ValueError as exc:
            reasons.append(f"view {index}: {exc}")
            continue
        candidates.append((index, view.tool_pose, det, board, rms))
    # a view fits far worse than its peers: a misdetection or a moving board; the limit follows
    # the typical fit so that uniformly noisy images do not reject every view
    typical = float(np.median([c[4] for c in candidates])) if candidates else 0.0
    limit = max(settings.max_view_rms_px, 3.0 * typical)
    poses, detections, boards, indices = [], [], [], []
    for index, pose, det, board, rms in candidates:
        if rms > limit:
            reasons.append(f"view {index}: PnP RMS {rms:.2f} px > {limit:.2f}")
            continue
        poses.append(pose)
        detections.append(det)
        boards.append(board)
        indices.append(index)
    empty = np.zeros((0, 4, 4))
    return (
        CameraViews(
            np.array(poses) if poses else empty, detections, np.array(boards) if boards else empty
        ),
        indices,
    )


def _spread_views(centres: np.ndarray, corners: np.ndarray, count: int) -> list[int]:
    """Up to `count` well-detected views (>= 80 % of the best corner count) whose board centres
    [N, 3] lie far apart: points spread in space pin a camera's pose down far better than one
    board view, whose rotation and sideways position trade off against each other."""
    good = np.flatnonzero(corners >= 0.8 * corners.max())
    picks = [int(good[np.argmax(corners[good])])]
    while len(picks) < min(count, len(good)):
        gaps = np.min(np.linalg.norm(centres[good, None] - centres[None, picks], axis=-1), axis=1)
        picks.append(int(good[np.argmax(gaps)]))
    return picks


def solve(
    views: list[View],
    intrinsics: Mapping[str, tuple[Camera, np.ndarray]],
    spec: BoardSpec,
    settings: HandEyeSettings | None = None,
) -> HandEyeResult:
    """Calibrate every camera in `intrinsics` (name -> (camera with K, distortion [5])) from
    the captured views; raises CalibrationError naming the camera when one cannot be trusted."""
    settings = settings or HandEyeSettings()
    object_points = spec.corner_points()
    train_views: dict[str, CameraViews] = {}
    train_index: dict[str, list[int]] = {}
    validation_views: dict[str, CameraViews] = {}
    rejected: dict[str, list[str]] = {}
    initial: dict[str, np.ndarray] = {}
    mounts: list[tuple[int, np.ndarray]] = []
    for name, (camera, dist) in intrinsics.items():
        reasons: list[str] = []
        seen = sum(1 for v in views if len(v.detections.get(name, ())) > 0)
        if seen == 0:
            raise CalibrationError(
                f"camera '{name}' never saw the board in {len(views)} poses: check that it is "
                "connected and aimed at the workspace, that the board is mounted and lit, and "
                f"that the board spec ({spec.squares_x}x{spec.squares_y} {spec.dictionary}) "
                "matches the printed board"
            )
        train, indices = _select_views(
            name, views, ("sweep", "train"), object_points, camera.K, dist, settings, reasons
        )
        validation, _ = _select_views(
            name, views, ("validation",), object_points, camera.K, dist, settings, []
        )
        rejected[name] = reasons
        if len(train.detections) < settings.min_views:
            raise CalibrationError(
                f"camera '{name}' has {len(train.detections)} usable views, fewer than "
                f"{settings.min_views} (seen in {seen} of {len(views)} poses; rejected: "
                f"{'; '.join(reasons[:5]) or 'none'}): move the camera so the board fills more "
                "of its image, or add poses that face it"
            )
        check_motion_diversity(train.tool_poses, f"camera '{name}'")
        c2w, mount = closed_form(train.tool_poses, train.board_poses, settings.method)
        initial[name] = c2w
        mounts.append((len(train.detections), mount))
        train_views[name], train_index[name], validation_views[name] = train, indices, validation
    best_mount = max(mounts, key=lambda item: item[0])[1]
    dists = {name: (cam.K, dist) for name, (cam, dist) in intrinsics.items()}
    c2ws, mount = dict(initial), best_mount
    if settings.refine:
        c2ws, mount = refine(initial, best_mount, train_views, object_points, dists)
        # drop views the solution cannot explain (a bad arm reading, a misdetection), refit once
        dropped = False
        for name in list(train_views):
            per_view = _view_residuals(
                c2ws[name], mount, train_views[name], object_points, *dists[name]
            )
            rms = np.array([np.sqrt(np.mean(np.sum(r**2, axis=1))) for r in per_view])
            keep = rms <= max(settings.max_solved_rms_px, 3.0 * float(np.median(rms)))
            if not keep.all():
                dropped = True
                tv = train_views[name]
                for i in np.flatnonzero(~keep):
                    rejected[name].append(
                        f"view {train_index[name][i]}: RMS {rms[i]:.2f} px under the solution"
                    )
                train_views[name] = CameraViews(
                    tv.tool_poses[keep],
                    [d for d, k in zip(tv.detections, keep, strict=True) if k],
                    tv.board_poses[keep],
                )
                train_index[name] = [i for i, k in zip(train_index[name], keep, strict=True) if k]
                if keep.sum() < settings.min_views:
                    raise CalibrationError(
                        f"camera '{name}': only {int(keep.sum())} views agree with the solution "
                        f"(RMS <= {settings.max_solved_rms_px} px); check the arm's pose "
                        "readings and that the board is rigidly mounted"
                    )
        if dropped:
            c2ws, mount = refine(c2ws, mount, train_views, object_points, dists)
    solutions = {}
    for name, (camera, dist) in intrinsics.items():
        train_res = residuals(c2ws[name], mount, train_views[name], object_points, camera.K, dist)
        val_res = residuals(
            c2ws[name], mount, validation_views[name], object_points, camera.K, dist
        )
        tv = train_views[name]
        centres = (tv.tool_poses @ mount @ np.append(board_center(spec), 1.0))[:, :3]
        picks = _spread_views(centres, np.array([len(d) for d in tv.detections]), 3)
        solutions[name] = CameraSolution(
            name=name,
            camera=Camera(camera.K, c2ws[name], camera.width, camera.height),
            distortion=np.asarray(dist, dtype=np.float64),
            train=train_res,
            validation=val_res,
            views_seen=sum(1 for v in views if len(v.detections.get(name, ())) > 0),
            views_rejected=len(rejected[name]),
            reference_indices=[train_index[name][i] for i in picks],
        )
    return HandEyeResult(
        solutions, mount, views, settings.method, settings.refine, rejected=rejected
    )


# -- the whole procedure -------------------------------------------------------------------------


def run_motion(
    arm: Arm,
    rig: CameraRig,
    spec: BoardSpec,
    nominal_tool_T_board: np.ndarray,
    wait: Wait,
    motion: MotionSettings | None = None,
    detector: BoardDetector | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> tuple[list[View], dict[str, str]]:
    """Drive the scripted motion and capture every view; returns the views and, per camera,
    why no aimed poses were planned for it (when the sweep never found it)."""
    motion = motion or MotionSettings()
    detector = detector or BoardDetector(spec)
    rng = np.random.default_rng(motion.seed)
    object_points = spec.corner_points()
    cameras = rig.cameras
    views: list[View] = []
    skipped: dict[str, str] = {}
    home = arm.read_state().tool_pose
    sweep = sweep_poses(motion, nominal_tool_T_board, spec)
    for i, pose in enumerate(sweep):
        if on_progress:
            on_progress("sweep", i, len(sweep))
        if move_to(arm, pose, wait, motion.step_m, tick_s=motion.tick_s):
            views.append(capture(arm, rig, detector, wait, motion.settle_s, "sweep"))
    center = motion.clamp(np.asarray(motion.center, dtype=np.float64))
    for name, camera in cameras.items():
        best = max(views, key=lambda v: len(v.detections[name]), default=None)
        if best is None or len(best.detections[name]) < 6:
            skipped[name] = "the sweep never saw the board well enough to aim at this camera"
            continue
        board, _ = solve_board_pose(object_points, best.detections[name], camera.K)
        rough_c2w = best.tool_pose @ nominal_tool_T_board @ invert_pose(board)
        # every aimed pose starts from the untilted one, so the IK stays on one arm posture
        via = facing_pose(center, rough_c2w[:3, 3] - center, nominal_tool_T_board, spec)
        poses = aimed_poses(rough_c2w[:3, 3], motion, nominal_tool_T_board, spec, rng)
        failures = 0
        for k, pose in enumerate(poses):
            if on_progress:
                on_progress(name, k, len(poses))
            steps = {"step_m": motion.step_m, "tick_s": motion.tick_s}
            if not (move_to(arm, via, wait, **steps) and move_to(arm, pose, wait, **steps)):
                failures += 1
                if failures > len(poses) // 2:
                    raise CalibrationError(
                        f"the arm failed {failures} of the poses aimed at camera '{name}' "
                        f"(last error C{arm.read_state().error_code}): check the workspace "
                        "bounds and MotionSettings.center, and that the path is collision-free"
                    )
                continue
            phase = "validation" if (k + 1) % motion.validation_every == 0 else "train"
            view = capture(arm, rig, detector, wait, motion.settle_s, phase)
            view.aimed_at = name
            views.append(view)
        move_to(arm, via, wait, motion.step_m, tick_s=motion.tick_s)
    move_to(arm, home, wait, motion.step_m, tick_s=motion.tick_s)
    return views, skipped
