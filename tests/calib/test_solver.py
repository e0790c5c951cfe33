"""The hand-eye solver on synthetic, exactly known data: conventions of every OpenCV method,
the refinement, and the errors for inputs that cannot give a trustworthy calibration."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.board import BoardSpec, Detection
from aimg.calib.handeye import (
    HAND_EYE_METHODS,
    CalibrationError,
    HandEyeSettings,
    View,
    check_motion_diversity,
    closed_form,
    flag_mount,
    solve,
)
from aimg.geometry import (
    Camera,
    intrinsics_matrix,
    invert_pose,
    look_at,
    pose_to_matrix,
    rotation_angle_between,
    rotvec_to_matrix,
)

SPEC = BoardSpec()
K = intrinsics_matrix(520.0, 520.0, 319.5, 239.5)
CAMERA = Camera(K, look_at((1.2, 0.3, 0.7), (0.45, 0.0, 0.25)), 640, 480)
MOUNT = flag_mount(SPEC) @ pose_to_matrix(
    np.array([0.002, -0.003, 0.001]), rotvec_to_matrix([0.01, -0.02, 0.015])
)


def tool_poses(n: int, rng: np.random.Generator, axes: str = "xyz") -> np.ndarray:
    """Poses that present the board to CAMERA, rotated by up to ~25 deg about `axes`."""
    from aimg.calib.handeye import facing_pose

    base = facing_pose(np.array([0.45, 0.0, 0.25]), CAMERA.center - [0.45, 0.0, 0.25], MOUNT, SPEC)
    poses = []
    for _ in range(n):
        rotvec = np.zeros(3)
        for i, axis in enumerate("xyz"):
            if axis in axes:
                rotvec[i] = rng.uniform(-0.45, 0.45)
        pose = base.copy()
        pose[:3, :3] = base[:3, :3] @ rotvec_to_matrix(rotvec)
        pose[:3, 3] += rng.uniform(-0.08, 0.08, size=3)
        poses.append(pose)
    return np.array(poses)


def synthetic_views(poses: np.ndarray, noise_px: float = 0.0, seed: int = 0) -> list[View]:
    """Views whose detections are the exact projections of the board (plus optional noise)."""
    rng = np.random.default_rng(seed)
    points = SPEC.corner_points()
    views = []
    for pose in poses:
        board = pose @ MOUNT
        uv, _ = CAMERA.project(points @ board[:3, :3].T + board[:3, 3])
        seen = np.flatnonzero(CAMERA.in_image(uv))
        corners = uv[seen] + rng.normal(0.0, noise_px, size=(len(seen), 2))
        views.append(
            View(
                pose,
                {"cam": np.zeros((1, 1, 3), np.uint8)},
                {"cam": Detection(seen, corners)},
                "train",
            )
        )
    return views


@pytest.mark.parametrize("method", HAND_EYE_METHODS)
def test_every_method_recovers_exact_camera_and_mount(method):
    poses = tool_poses(12, np.random.default_rng(1))
    boards = invert_pose(CAMERA.c2w) @ poses @ MOUNT
    c2w, mount = closed_form(poses, boards, method)
    assert np.linalg.norm(c2w[:3, 3] - CAMERA.c2w[:3, 3]) < 1e-4
    assert rotation_angle_between(c2w[:3, :3], CAMERA.c2w[:3, :3]) < 1e-4
    assert np.linalg.norm(mount[:3, 3] - MOUNT[:3, 3]) < 1e-4


def test_unknown_method_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="tsai"):
        HandEyeSettings(method="magic")


def test_refinement_beats_closed_form_under_pixel_noise():
    views = synthetic_views(tool_poses(20, np.random.default_rng(2)), noise_px=0.5, seed=3)
    intrinsics = {"cam": (CAMERA, np.zeros(5))}
    errors = {}
    for refine in (False, True):
        result = solve(views, intrinsics, SPEC, HandEyeSettings(refine=refine))
        errors[refine] = np.linalg.norm(result.cameras["cam"].camera.c2w[:3, 3] - CAMERA.center)
    assert errors[True] < 0.002
    assert errors[True] < errors[False]


def test_rotations_about_one_axis_are_degenerate():
    poses = tool_poses(10, np.random.default_rng(4), axes="z")
    with pytest.raises(CalibrationError, match="degenerate motion"):
        check_motion_diversity(poses, "camera 'cam'")


def test_pure_translations_are_degenerate_in_solve():
    poses = tool_poses(10, np.random.default_rng(5), axes="")
    with pytest.raises(CalibrationError, match="degenerate motion for camera 'cam'"):
        solve(synthetic_views(poses), {"cam": (CAMERA, np.zeros(5))}, SPEC)


def test_too_few_views_names_the_camera():
    views = synthetic_views(tool_poses(4, np.random.default_rng(6)))
    with pytest.raises(CalibrationError, match="camera 'cam' has 4 usable views, fewer than 6"):
        solve(views, {"cam": (CAMERA, np.zeros(5))}, SPEC)


def test_a_camera_that_never_sees_the_board_is_named():
    views = synthetic_views(tool_poses(8, np.random.default_rng(7)))
    for view in views:
        view.detections["blind"] = Detection(np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
    intrinsics = {"cam": (CAMERA, np.zeros(5)), "blind": (CAMERA, np.zeros(5))}
    with pytest.raises(CalibrationError, match="camera 'blind' never saw the board"):
        solve(views, intrinsics, SPEC)


def test_a_view_with_a_wrong_arm_reading_is_rejected():
    poses = tool_poses(16, np.random.default_rng(8))
    views = synthetic_views(poses, noise_px=0.2, seed=9)
    views[5].tool_pose = views[5].tool_pose @ pose_to_matrix(np.array([0.02, 0.0, 0.0]), np.eye(3))
    result = solve(views, {"cam": (CAMERA, np.zeros(5))}, SPEC)
    assert any(reason.startswith("view 5:") for reason in result.rejected["cam"])
    assert np.linalg.norm(result.cameras["cam"].camera.center - CAMERA.center) < 0.002
