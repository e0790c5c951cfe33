"""The calibration procedure's simulated cell: a seeded PyBullet cell with randomly placed
640x480 cameras and a ChArUco board on the gripper, plus the exact ground truth to score
against and the noise of the noise study (arm pose readings, corner detections) applied to captured
views, so one motion serves every noise level."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from aimg.calib.board import BoardSpec, Detection
from aimg.calib.handeye import View, flag_mount
from aimg.geometry import (
    Camera,
    invert_pose,
    pose_to_matrix,
    rotation_angle_between,
    rotvec_to_matrix,
)
from aimg.robot.sim.cameras import CameraSpec
from aimg.robot.sim.charuco import CarriedPlate, PlateCameraRig, random_camera_specs
from aimg.robot.sim.devices import SimArm
from aimg.robot.sim.world import CellConfig, SimWorld


def _random_rotation(rng: np.random.Generator, sigma_rad: float) -> np.ndarray:
    return rotvec_to_matrix(rng.normal(0.0, sigma_rad, size=3))


def with_pixel_noise(views: list[View], sigma_px: float, seed: int = 0) -> list[View]:
    """Copies of `views` whose detected corners carry Gaussian noise of `sigma_px` per axis."""
    rng = np.random.default_rng(seed)
    return [
        replace(
            view,
            detections={
                name: Detection(d.ids, d.corners + rng.normal(0.0, sigma_px, d.corners.shape))
                for name, d in view.detections.items()
            },
        )
        for view in views
    ]


def with_pose_noise(
    views: list[View], position_m: float, rotation_rad: float, seed: int = 0
) -> list[View]:
    """Copies of `views` whose arm pose readings carry Gaussian noise (per axis: `position_m`,
    `rotation_rad` about the tool axes), standing in for an arm's kinematic error."""
    rng = np.random.default_rng(seed)
    noisy = []
    for view in views:
        pose = view.tool_pose.copy()
        pose[:3, :3] = pose[:3, :3] @ _random_rotation(rng, rotation_rad)
        pose[:3, 3] += rng.normal(0.0, position_m, size=3)
        noisy.append(replace(view, tool_pose=pose))
    return noisy


@dataclass(frozen=True)
class PoseError:
    """Difference between two poses: translation (mm) and rotation (deg)."""

    translation_mm: float
    rotation_deg: float

    def to_dict(self) -> dict:
        return {
            "translation_mm": round(self.translation_mm, 4),
            "rotation_deg": round(self.rotation_deg, 5),
        }


def pose_error(estimate: np.ndarray, truth: np.ndarray) -> PoseError:
    """Position distance (mm) and geodesic rotation angle (deg) between two [4, 4] poses."""
    return PoseError(
        float(np.linalg.norm(estimate[:3, 3] - truth[:3, 3]) * 1000.0),
        math.degrees(float(rotation_angle_between(estimate[:3, :3], truth[:3, :3]))),
    )


def workspace_reprojection_px(
    estimate: Camera, truth: Camera, low: np.ndarray, high: np.ndarray, steps: int = 5
) -> float:
    """Largest pixel distance between where `estimate` and `truth` project a grid of points
    in the box [low, high] (base frame, m): the error an action image would inherit."""
    axes = [np.linspace(a, b, steps) for a, b in zip(low, high, strict=True)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    uv_true, z = truth.project(points)
    uv_est, _ = estimate.project(points)
    seen = (z > 0) & truth.in_image(uv_true)
    if not seen.any():
        return float("nan")
    return float(np.max(np.linalg.norm(uv_est[seen] - uv_true[seen], axis=1)))


class SimCalibrationCell:
    """A simulated cell ready to calibrate: world, arm, 640x480 rig, board on the gripper.

    The true board mount differs from the nominal `flag_mount` by a seeded few millimetres and
    degrees (a hand-made bracket), so the solver never starts from the answer. `supersample`
    renders anti-aliased images (2: as a real sensor; 1: twice as fast, ~0.5 px corner noise).
    """

    def __init__(
        self,
        seed: int = 0,
        num_cameras: int = 3,
        specs: tuple[CameraSpec, ...] | None = None,
        board: BoardSpec | None = None,
        config: CellConfig | None = None,
        height: int = 480,
        width: int = 640,
        mount_error_m: float = 0.004,
        mount_error_deg: float = 2.0,
        supersample: int = 2,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.board = board or BoardSpec()
        self.config = config or CellConfig()
        self.specs = specs or random_camera_specs(rng, num_cameras)
        self.nominal_tool_T_board = flag_mount(self.board)
        wobble = pose_to_matrix(
            rng.normal(0.0, mount_error_m / math.sqrt(3.0), size=3),
            _random_rotation(rng, math.radians(mount_error_deg) / math.sqrt(3.0)),
        )
        self.true_tool_T_board = self.nominal_tool_T_board @ wobble
        self.world = SimWorld(self.config, seed=seed)
        squares = self.board.square_m
        width_m, height_m = self.board.size_m
        margin = 0.5 * squares
        self.plate = CarriedPlate(
            self.world,
            self.board.texture(pixels_per_square=120, margin_squares=0.5),
            (-margin, -margin, width_m + margin, height_m + margin),
            self.true_tool_T_board,
        )
        self.arm = SimArm(self.world)
        self.rig = PlateCameraRig(
            self.world, self.plate, self.specs, height, width, supersample=supersample
        )
        self.arm.connect()
        self.rig.connect()

    def wait(self, seconds: float) -> None:
        """Advance simulated time (lock-step: far faster than real time)."""
        self.world.advance(seconds)

    @property
    def true_cameras(self) -> dict[str, Camera]:
        return self.rig.cameras

    def move_camera(self, name: str, translation_m: np.ndarray, rotation_rad: np.ndarray) -> None:
        """Knock camera `name`: translate its centre (base frame, m) and rotate it about its own
        centre by a rotation vector (camera frame, rad)."""
        c2w = self.rig.cameras[name].c2w.copy()
        c2w[:3, :3] = c2w[:3, :3] @ rotvec_to_matrix(np.asarray(rotation_rad, dtype=np.float64))
        c2w[:3, 3] += np.asarray(translation_m, dtype=np.float64)
        self.rig.move_camera(name, c2w)

    def camera_errors(self, estimates: dict[str, Camera]) -> dict[str, PoseError]:
        """Per camera, the estimated c2w's error against the true placement."""
        truth = self.true_cameras
        return {name: pose_error(cam.c2w, truth[name].c2w) for name, cam in estimates.items()}

    def reprojection_errors(self, estimates: dict[str, Camera]) -> dict[str, float]:
        """Per camera, `workspace_reprojection_px` over the cell's tabletop work volume."""
        low = np.array([0.25, -0.3, 0.0])
        high = np.array([0.65, 0.3, 0.35])
        truth = self.true_cameras
        return {
            name: workspace_reprojection_px(cam, truth[name], low, high)
            for name, cam in estimates.items()
        }

    def mount_error(self, tool_T_board: np.ndarray) -> PoseError:
        return pose_error(tool_T_board, self.true_tool_T_board)

    def board_in_camera(self, name: str) -> np.ndarray:
        """True cam_T_board [4, 4] now (for checks of detection and PnP)."""
        pose = self.world.tool_pose() @ self.true_tool_T_board
        return invert_pose(self.true_cameras[name].c2w) @ pose

    def close(self) -> None:
        self.arm.disconnect()
        self.world.close()
        self.plate.close()

    def __enter__(self) -> SimCalibrationCell:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
