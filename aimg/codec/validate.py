"""Input checks shared by the encoder and decoders: clear ValueErrors at the codec boundary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from aimg.geometry import Camera


def check_images_and_cameras(
    images: np.ndarray, cameras: Sequence[Camera]
) -> tuple[np.ndarray, list[Camera]]:
    """Validate action images [T, V, H, W, 3] (uint8, or float in [0, 1]) against V cameras.

    Returns the images as a C-contiguous uint8 or float32 array and the cameras as a list.
    """
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3:
        raise ValueError(
            f"action images must be [T, V, H, W, 3] (frames, views, rows, columns, RGB), got "
            f"shape {images.shape}; add a view axis for a single view"
        )
    if min(images.shape[:4]) == 0:
        raise ValueError(f"action images are empty: shape {images.shape}")
    if images.dtype != np.uint8:
        if not np.issubdtype(images.dtype, np.floating):
            raise ValueError(f"action images must be uint8 or float in [0, 1], got {images.dtype}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if not np.isfinite(images).all():
            raise ValueError("action images contain NaN or inf")
    else:
        images = np.ascontiguousarray(images)
    cameras = list(cameras)
    height, width = images.shape[2:4]
    if len(cameras) != images.shape[1]:
        raise ValueError(
            f"got {len(cameras)} cameras for {images.shape[1]} views; pass one Camera per view"
        )
    check_cameras_fit(cameras, height, width, "the action images")
    return images, cameras


def check_cameras_fit(cameras: Sequence[object], height: int, width: int, images: str) -> None:
    """Raise unless every camera is a `Camera` describing `height` x `width` images.

    K is in pixels, so a camera of another image size would project to the wrong pixels;
    `images` names the images in the message ("the action images", "the requested images").
    """
    for i, cam in enumerate(cameras):
        if not isinstance(cam, Camera):
            raise ValueError(f"camera {i} is a {type(cam).__name__}, expected aimg.geometry.Camera")
        if (cam.height, cam.width) != (height, width):
            raise ValueError(
                f"camera {i} describes {cam.width}x{cam.height} images but {images} are "
                f"{width}x{height}; rescale it with Camera.scaled(height, width) or "
                "Camera.resized(...)"
            )
