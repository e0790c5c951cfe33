"""Overlay pictures a person checks at a glance: the workspace box, the tool's axes and the
board corners drawn through a calibrated camera onto its image."""

from __future__ import annotations

import itertools

import numpy as np

from aimg.calib.board import Detection, project_points
from aimg.geometry import Camera
from aimg.optional import require

# RGB colours: tool x red, y green, z blue (the usual axis colouring); box yellow.
_AXIS_COLOURS = ((230, 40, 40), (40, 200, 40), (50, 90, 255))
_BOX = (255, 215, 0)
_PREDICTED = (0, 255, 255)
_DETECTED = (255, 0, 255)


def _line(cv2, image: np.ndarray, a: np.ndarray, b: np.ndarray, colour, thickness: int) -> None:
    if np.all(np.isfinite(a)) and np.all(np.isfinite(b)):
        limit = 1e5  # keep far-off endpoints inside OpenCV's integer range; it clips the rest
        p = tuple(int(round(x)) for x in np.clip(a, -limit, limit))
        q = tuple(int(round(x)) for x in np.clip(b, -limit, limit))
        cv2.line(image, p, q, colour, thickness, cv2.LINE_AA)


def draw_overlay(
    image: np.ndarray,
    camera: Camera,
    distortion: np.ndarray,
    tool_pose: np.ndarray | None = None,
    workspace: tuple[np.ndarray, np.ndarray] | None = None,
    board_corners_base: np.ndarray | None = None,
    detection: Detection | None = None,
    axis_length_m: float = 0.08,
) -> np.ndarray:
    """A copy of `image` [H, W, 3] RGB uint8 with the overlays drawn.

    tool_pose: TCP-to-base [4, 4] (axes drawn); workspace: (low [3], high [3]) box in the base
    frame (m); board_corners_base: predicted corners [N, 3] (cyan circles); detection: detected
    corners (magenta crosses). A good calibration puts each cross in its circle.
    """
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    out = np.ascontiguousarray(image.copy())

    def project(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        uv = project_points(camera, points, distortion)
        behind = camera.to_camera(points)[:, 2] <= 0
        uv[behind] = np.nan
        return uv

    if workspace is not None:
        low, high = (np.asarray(x, dtype=np.float64) for x in workspace)
        corners = np.array(list(itertools.product(*zip(low, high, strict=True))))
        uv = project(corners)
        for i, j in itertools.combinations(range(8), 2):
            if np.count_nonzero(corners[i] != corners[j]) == 1:
                _line(cv2, out, uv[i], uv[j], _BOX, 1)
    if tool_pose is not None:
        origin = tool_pose[:3, 3]
        ends = origin + axis_length_m * tool_pose[:3, :3].T
        uv = project(np.vstack([origin, ends]))
        for k in range(3):
            _line(cv2, out, uv[0], uv[k + 1], _AXIS_COLOURS[k], 2)
    if board_corners_base is not None:
        for p in project(board_corners_base):
            if np.all(np.isfinite(p)):
                cv2.circle(out, tuple(int(round(x)) for x in p), 4, _PREDICTED, 1, cv2.LINE_AA)
    if detection is not None:
        for p in detection.corners:
            cv2.drawMarker(out, tuple(int(round(x)) for x in p), _DETECTED, cv2.MARKER_CROSS, 6, 1)
    return out
