"""What the live page draws, as JSON-ready dicts: frames with projected paths, plan strips.

Projection happens here, with the cell's calibration, so the page only draws pixels. Pixel
coordinates sent to the page have their origin at the top-left corner of the top-left pixel
(canvas convention): aimg's pixel-centre coordinates plus 0.5.
"""

from __future__ import annotations

import base64
import io
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


def frame_message(
    images: Mapping[str, np.ndarray],
    cameras: Mapping[str, Camera],
    time_ns: int,
    path: np.ndarray,
    plan: np.ndarray,
) -> dict:
    """The `frame` event: every view's JPEG with the executed path and the plan projected."""
    views = {}
    for name, image in images.items():
        camera = cameras[name]
        views[name] = {
            "image": data_url(image),
            "width": int(image.shape[1]),
            "height": int(image.shape[0]),
            "path_px": project_px(camera, path),
            "plan_px": project_px(camera, plan),
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
