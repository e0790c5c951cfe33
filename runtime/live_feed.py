"""What the live page draws, as JSON-ready dicts: frames with projected paths, plan strips.

Projection happens here, with the cell's calibration, so the page only draws pixels. Pixel
coordinates sent to the page have their origin at the top-left corner of the top-left pixel
(canvas convention): aimg's pixel-centre coordinates plus 0.5.
"""

from __future__ import annotations

import base64
import io
import itertools
from collections.abc import Mapping

import numpy as np
from PIL import Image

from aimg.geometry import Camera


def data_url(image: np.ndarray, fmt: str = "JPEG", quality: int = 80) -> str:
    """uint8 RGB [H, W, 3] -> a data: URL the browser can show directly."""
    buffer = io.BytesIO()
    picture = Image.fromarray(np.ascontiguousarray(image))
    if fmt == "JPEG":
        picture.save(buffer, format="JPEG", quality=quality)
    else:
        picture.save(buffer, format=fmt)
    mime = "image/jpeg" if fmt == "JPEG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def project_px(camera: Camera, points: np.ndarray) -> list[list[float]]:
    """Base-frame points [N, 3] -> canvas pixels [[u, v], ...]; points behind the camera or far
    outside the image are left out."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if not len(points):
        return []
    uv, _ = camera.project(points)
    keep = np.isfinite(uv).all(axis=1) & camera.in_image(uv, margin=-camera.width)
    return np.round(uv[keep] + 0.5, 1).tolist()


def tool_axes_px(camera: Camera, tool_pose: np.ndarray, length_m: float = 0.08) -> list:
    """The tool's origin and the ends of its x, y, z axes in canvas pixels ([] when any is
    behind the camera): a calibration is right when they sit on the gripper."""
    pose = np.asarray(tool_pose, dtype=np.float64)
    points = np.vstack([pose[:3, 3], pose[:3, 3] + length_m * pose[:3, :3].T])
    if (camera.to_camera(points)[:, 2] <= 0).any():
        return []
    uv, _ = camera.project(points)
    return np.round(uv + 0.5, 1).tolist() if np.isfinite(uv).all() else []


def box_edges_px(camera: Camera, low: np.ndarray, high: np.ndarray) -> list:
    """The 12 edges of the box [low, high] (base frame, m) as [[u0, v0], [u1, v1]] in canvas
    pixels; edges with an end behind the camera are left out."""
    corners = np.array(list(itertools.product(*zip(low, high, strict=True))), dtype=np.float64)
    uv, _ = camera.project(corners)
    front = camera.to_camera(corners)[:, 2] > 0
    edges = []
    for i, j in itertools.combinations(range(8), 2):
        if np.count_nonzero(corners[i] != corners[j]) == 1 and front[i] and front[j]:
            edges.append(np.round(uv[[i, j]] + 0.5, 1).tolist())
    return edges


def frame_message(
    images: Mapping[str, np.ndarray],
    cameras: Mapping[str, Camera],
    time_ns: int,
    path: np.ndarray,
    plan: np.ndarray,
    tool_pose: np.ndarray | None = None,
    workspace: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict:
    """The `frame` event: every view's JPEG with the executed path and the plan projected,
    and (when given) the tool's axes and the workspace box, the picture of `aimg calib show`."""
    views = {}
    for name, image in images.items():
        camera = cameras[name]
        views[name] = {
            "image": data_url(image),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "path_px": project_px(camera, path),
            "plan_px": project_px(camera, plan),
            "axes_px": tool_axes_px(camera, tool_pose) if tool_pose is not None else [],
            "box_px": box_edges_px(camera, *workspace) if workspace is not None else [],
        }
    return {"time_ns": int(time_ns), "views": views}


def plan_strips(action_images: np.ndarray, view_names: list[str]) -> dict[str, str]:
    """Predicted action images [T, V, H, W, 3] in [0, 1] -> one PNG strip per view (frame 0
    on the left)."""
    images = np.asarray(action_images, dtype=np.float32)
    out = {}
    for v, name in enumerate(view_names[: images.shape[1]]):
        strip = np.concatenate(list(images[:, v]), axis=1)
        pixels = (np.clip(strip, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        out[name] = data_url(pixels, fmt="PNG")
    return out
