"""The simulated board: what the cameras see matches the exact ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.board import BoardDetector, BoardSpec, solve_board_pose
from aimg.calib.handeye import facing_pose, move_to
from aimg.geometry import Camera, intrinsics_matrix, look_at
from aimg.robot.sim.charuco import supersampled


def test_a_supersampled_camera_averages_to_the_original_pixel_centres():
    camera = Camera(
        intrinsics_matrix(500.0, 500.0, 319.5, 239.5), look_at((1, 0, 0.5), (0, 0, 0)), 640, 480
    )
    fine = supersampled(camera, 2)
    points = np.array([[0.1, 0.2, 0.0], [-0.2, 0.05, 0.1]])
    uv, _ = camera.project(points)
    uv_fine, _ = fine.project(points)
    np.testing.assert_allclose((uv_fine - 0.5) / 2.0, uv, atol=1e-9)


def test_a_marker_larger_than_its_square_is_refused():
    with pytest.raises(ValueError, match="smaller than the square"):
        BoardSpec(square_m=0.03, marker_m=0.03)


@pytest.mark.slow
def test_detected_corners_and_pose_match_the_ground_truth(make_cell):
    with make_cell() as cell:
        name, camera = next(iter(cell.rig.cameras.items()))
        center = np.array([0.45, 0.0, 0.28])
        assert move_to(
            cell.arm,
            facing_pose(center, camera.center - center, cell.nominal_tool_T_board, cell.board),
            cell.wait,
        )
        cell.wait(0.3)
        detection = BoardDetector(cell.board).detect(cell.rig.read().images[name])
        assert len(detection) == cell.board.num_corners
        truth = cell.world.tool_pose() @ cell.true_tool_T_board
        expected, _ = camera.project(
            cell.board.corner_points()[detection.ids] @ truth[:3, :3].T + truth[:3, 3]
        )
        offsets = detection.corners - expected
        assert np.abs(offsets.mean(axis=0)).max() < 0.1  # no bias in the pixel convention
        assert np.median(np.linalg.norm(offsets, axis=1)) < 0.4
        pose, rms = solve_board_pose(cell.board.corner_points(), detection, camera.K)
        board_in_camera = cell.board_in_camera(name)
        assert rms < 0.5
        # one small, nearly frontal board view fixes its position across the image; its depth
        # and tilt are weakly observable (why hand-eye uses many views and refines jointly)
        lateral = pose[:2, 3] - board_in_camera[:2, 3]
        assert np.linalg.norm(lateral) < 0.002
        assert abs(pose[2, 3] - board_in_camera[2, 3]) < 0.015
