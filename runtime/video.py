"""Episode videos: mp4 writing, trajectory overlays on camera views, views side by side.

The encoder is the ffmpeg binary bundled with `imageio-ffmpeg` (the `sim` extra), so writing a
video needs no system package. H.264 in yuv420p needs even frame sizes: odd ones are padded
(black) on the right / bottom rather than resized, so pixels stay where the cameras put them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
from PIL import Image, ImageDraw

from aimg.geometry import Camera
from aimg.optional import require

Colour = tuple[int, int, int]


def pad_even(frame: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 padded with black to even H and W (unchanged when already even)."""
    height, width = frame.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    return np.pad(frame, pad) if height % 2 or width % 2 else frame


class VideoWriter:
    """Append [H, W, 3] uint8 RGB frames to an H.264 mp4; every frame has the first's size.

    Use as a context manager (the file is complete only after `close()`). `quality` is
    imageio's 0-10 scale (10 = best).
    """

    def __init__(self, path: str | Path, fps: float, quality: float = 8.0) -> None:
        if not fps > 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.path = Path(path)
        self.fps = float(fps)
        self.quality = quality
        self.frames_written = 0
        self._size: tuple[int, int] | None = None
        self._writer = None

    def append(self, frame: np.ndarray) -> None:
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"a video frame is [H, W, 3] uint8 RGB, got {frame.dtype} {frame.shape}"
            )
        if self._size is None:
            self._size = frame.shape[:2]
            self._open()
        elif frame.shape[:2] != self._size:
            raise ValueError(
                f"every frame of {self.path} must be {self._size[0]}x{self._size[1]} (H x W) "
                f"like the first, got {frame.shape[0]}x{frame.shape[1]}; tile or resize first"
            )
        self._writer.append_data(np.ascontiguousarray(pad_even(frame)))
        self.frames_written += 1

    def _open(self) -> None:
        imageio = require("imageio.v2", "sim", package="imageio[ffmpeg]")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = imageio.get_writer(
            str(self.path),
            format="FFMPEG",
            mode="I",
            fps=self.fps,
            codec="libx264",
            pixelformat="yuv420p",
            quality=self.quality,
            macro_block_size=1,
            ffmpeg_log_level="error",
        )

    def close(self) -> None:
        """Finish the file (idempotent). A writer that got no frame writes no file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def draw_overlay(
    image: np.ndarray,
    camera: Camera,
    points: np.ndarray,
    colour: Colour = (255, 0, 255),
    line_width: int = 1,
    dot_radius: float = 0.0,
    closed: bool = False,
) -> np.ndarray:
    """A copy of `image` [H, W, 3] uint8 with 3-D points [N, 3] (m, base frame) drawn on it.

    The points are projected with `camera` (calibrated at the image's size) and joined by a
    polyline (`line_width` > 0) and/or marked with dots (`dot_radius` > 0, pixels). Points
    behind the camera break the line. Pixel (u, v) is a pixel's centre, as in `Camera.project`.
    """
    image = np.asarray(image)
    if image.shape[:2] != (camera.height, camera.width):
        raise ValueError(
            f"the camera is calibrated for {camera.height}x{camera.width} but the image is "
            f"{image.shape[0]}x{image.shape[1]}; use the camera of this view at this size"
        )
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if closed and len(points) > 2:
        points = np.concatenate([points, points[:1]])
    uv, _ = camera.project(points)
    canvas = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(canvas)
    visible = np.all(np.isfinite(uv), axis=1)
    if line_width > 0:
        run: list[tuple[float, float]] = []
        for (u, v), ok in zip(uv, visible, strict=True):
            if ok:
                run.append((float(u), float(v)))
            else:
                _polyline(draw, run, colour, line_width)
                run = []
        _polyline(draw, run, colour, line_width)
    if dot_radius > 0:
        r = float(dot_radius)
        for u, v in uv[visible]:
            draw.ellipse((u - r, v - r, u + r, v + r), fill=colour)
    return np.asarray(canvas)


def _polyline(
    draw: ImageDraw.ImageDraw, run: Sequence[tuple[float, float]], colour: Colour, width: int
) -> None:
    if len(run) >= 2:
        draw.line(list(run), fill=colour, width=width, joint="curve" if width > 2 else None)
    elif len(run) == 1:
        draw.point(run[0], fill=colour)


def tile(views: Sequence[np.ndarray], gap: int = 0) -> np.ndarray:
    """Views [H_i, W_i, 3] uint8 side by side, left to right, top-aligned on black."""
    if not views:
        raise ValueError("tile needs at least one view")
    height = max(view.shape[0] for view in views)
    width = sum(view.shape[1] for view in views) + gap * (len(views) - 1)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    x = 0
    for view in views:
        out[: view.shape[0], x : x + view.shape[1]] = view
        x += view.shape[1] + gap
    return out
