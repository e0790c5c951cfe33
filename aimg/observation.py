"""Observation -> model inputs: one mapping for training, evaluation, export and the runtime.

A checkpoint sees each camera through its `data.crop` region (fractions of the image, the
cell's workspace), then a maximal centre crop to the model aspect and an antialiased resize to
the model size, in [-1, 1]. Cameras follow the same crop and resize, so action images, Plücker
latents and decoding stay consistent. The current tool pose is drawn as the first action image
with the checkpoint's `model.blob_sigma`. `InputSpec` reads all of that from a checkpoint's
config.json (or an artifact manifest, which carries it), so no caller re-derives it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from aimg.geometry import Camera, intrinsics_matrix, look_at


def crop_resize_frames(
    frames: np.ndarray, height: int, width: int, region: Sequence[float] | None = None
) -> torch.Tensor:
    """uint8 [T, H0, W0, 3] -> float32 [3, T, height, width] in [-1, 1].

    Crops `region` (see `crop_box`; None: the whole image), then the maximal centre crop (whole
    pixels) to the target aspect, then an antialiased bilinear resize; `crop_resize_camera`
    gives the matching camera.
    """
    x0, y0, cw, ch = crop_box(frames.shape[1], frames.shape[2], height, width, region)
    crop = torch.from_numpy(np.require(frames[:, y0 : y0 + ch, x0 : x0 + cw], requirements="CW"))
    x = crop.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if (ch, cw) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True)
    return x.clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()


def crop_resize_camera(
    camera: Camera, height: int, width: int, region: Sequence[float] | None = None
) -> Camera:
    """The camera of `crop_resize_frames`' output (the crop shifts the principal point)."""
    x0, y0, cw, ch = crop_box(camera.height, camera.width, height, width, region)
    return camera.cropped(x0, y0, cw, ch).scaled(height, width)


def crop_box(
    src_h: int, src_w: int, height: int, width: int, region: Sequence[float] | None = None
) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, w, h) of the source that becomes the `height` x `width` model input.

    `region` = (x0, y0, w, h) as fractions of the source width and height (the workspace of a
    cell, so that small objects cover more of a small model input); within it, the maximal
    centre crop to the target aspect.
    """
    rx, ry, rw, rh = 0, 0, src_w, src_h
    if region is not None:
        fx, fy, fw, fh = region
        rx, ry = round(fx * src_w), round(fy * src_h)
        rw, rh = min(round(fw * src_w), src_w - rx), min(round(fh * src_h), src_h - ry)
    if rw * height > width * rh:
        ch, cw = rh, min(rw, round(rh * width / height))
    else:
        ch, cw = min(rh, round(rw * height / width)), rw
    return rx + (rw - cw) // 2, ry + (rh - ch) // 2, cw, ch


@dataclass(frozen=True)
class InputSpec:
    """What a checkpoint expects of an observation (all from its config.json).

    views / height / width: model sample geometry; blob_sigma: action-blob width as a fraction
    of min(H, W); crop: [x0, y0, w, h] fractions of each camera image, or None for the whole
    image; relative_cameras: camera latents relative to the first view's pose (see
    `aimg.training.config.DataConfig`).
    """

    views: int
    height: int
    width: int
    blob_sigma: float
    crop: tuple[float, float, float, float] | None = None
    relative_cameras: bool = False

    @classmethod
    def from_checkpoint_config(cls, config: Mapping[str, Any]) -> InputSpec:
        """From a checkpoint's parsed config.json (the `model` section and `extra.data`)."""
        model = config["model"]
        data = (config.get("extra") or {}).get("data") or {}
        crop = data.get("crop")
        return cls(
            views=int(model["views"]),
            height=int(model["height"]),
            width=int(model["width"]),
            blob_sigma=float(model.get("blob_sigma", 0.05)),
            crop=tuple(float(c) for c in crop) if crop is not None else None,
            relative_cameras=bool(data.get("relative_cameras", False)),
        )


@dataclass
class ModelObservation:
    """One observation at the model resolution.

    frames: float32 [V, 3, H, W] in [-1, 1] (current image of each view); action_images:
    float32 [V, 3, H, W] in [-1, 1] (the current tool pose drawn per view); cameras: one per
    view, describing the H x W model images.
    """

    frames: torch.Tensor
    action_images: torch.Tensor
    cameras: list[Camera]


def prepare_observation(
    images: Sequence[np.ndarray],
    cameras: Sequence[Camera],
    tool_pose: np.ndarray,
    spec: InputSpec,
) -> ModelObservation:
    """Camera images + calibration + current tool pose -> the model's conditioning inputs.

    images: per view uint8 [H0, W0, 3] RGB as the camera delivers it; cameras: per view, the
    calibration of those images (K in their pixels, c2w camera-to-base); tool_pose: [7] =
    [x, y, z, rx, ry, rz, g] in metres / radians (extrinsic xyz), g = 1 open.
    """
    from aimg.codec.render import render

    if len(images) != spec.views or len(cameras) != spec.views:
        raise ValueError(
            f"the model takes {spec.views} views, got {len(images)} images and "
            f"{len(cameras)} cameras"
        )
    h, w = spec.height, spec.width
    frames, model_cameras = [], []
    for view, (image, camera) in enumerate(zip(images, cameras, strict=True)):
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"view {view}: expected uint8 [H, W, 3] RGB, got {image.dtype} {image.shape}"
            )
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(
                f"view {view}: the image is {image.shape[1]}x{image.shape[0]} but its "
                f"calibration describes {camera.width}x{camera.height} images; recalibrate or "
                "resize the stream"
            )
        frames.append(crop_resize_frames(image[None], h, w, spec.crop)[:, 0])
        model_cameras.append(crop_resize_camera(camera, h, w, spec.crop))
    pose = np.asarray(tool_pose, dtype=np.float64).reshape(1, 7)
    drawn = render(pose, model_cameras, h, w, spec.blob_sigma)[0]  # [V, H, W, 3] in [0, 1]
    action_images = torch.from_numpy(np.ascontiguousarray(drawn)).permute(0, 3, 1, 2)
    return ModelObservation(
        frames=torch.stack(frames),
        action_images=action_images.float() * 2.0 - 1.0,
        cameras=model_cameras,
    )


def synthetic_observation(spec: InputSpec, seed: int = 0) -> ModelObservation:
    """A fixed stand-in observation for benchmarks and numeric parity checks: up to four
    128 px cameras looking at the workspace, a noisy grey scene, the tool above the table.
    It exercises every input of a model; it is no scene a model was trained on."""
    rng = np.random.default_rng(seed)
    K = intrinsics_matrix(110.0, 110.0, 63.5, 63.5)
    target = np.array([0.45, 0.0, 0.05])
    eyes = [(0.5, 0.6, 0.5), (0.5, -0.6, 0.5), (1.0, 0.0, 0.6), (0.1, 0.0, 0.8)]
    cameras = [
        Camera(K, look_at(np.array(eyes[v % len(eyes)]), target), 128, 128)
        for v in range(spec.views)
    ]
    images = [
        np.clip(rng.normal(110.0, 10.0, (128, 128, 3)), 0, 255).astype(np.uint8) for _ in cameras
    ]
    pose = np.array([0.35, 0.0, 0.25, np.pi, 0.0, 0.0, 1.0])
    return prepare_observation(images, cameras, pose, spec)


def episode_observation(
    episode: Any, spec: InputSpec, views: Sequence[str] | None = None, frame: int = 0
) -> tuple[ModelObservation, list[str]]:
    """A recorded episode's frame `frame` as the model sees it, and the views used (`views`, or
    the episode's first `spec.views`): what an offline evaluation conditions a plan on."""
    names = list(views or episode.view_names)[: spec.views]
    pose = np.asarray(episode.poses, dtype=np.float64)[frame]
    images = [episode.frames(v)[frame] for v in names]
    cameras = [episode.camera(v, frame) for v in names]
    return prepare_observation(images, cameras, pose, spec), names
