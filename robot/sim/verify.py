"""Checks that the sim's reported tool poses and its camera calibration agree with its pixels.

The light URDF carries an invisible sphere fixed at the TCP (`assets.TCP_MARKER_LINK`), placed by
PyBullet's own kinematics. To measure, everything else is made transparent for one
segmentation render, so the sphere is never occluded; the centroid of its mask is compared with
the reported TCP position projected through the view's `Camera`. This checks, end to end, the
flange link frame, the TCP offset, the view and projection matrices and the pixel-centre
convention: a half-pixel convention error alone would show as 0.5-0.7 px.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from aimg.geometry import Camera
from aimg.robot.sim.assets import TCP_MARKER_LINK
from aimg.robot.sim.world import FINGER_LINKS, SimWorld


def link_index(world: SimWorld, name: str) -> int:
    client = world.client
    for joint in range(client.getNumJoints(world.robot)):
        if client.getJointInfo(world.robot, joint)[12].decode() == name:
            return joint
    raise ValueError(f"the robot has no link named {name!r}")


def mask_centroid(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Centroid (u, v) in aimg pixel coordinates of a boolean [H, W] mask, and its pixel count."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return np.full(2, np.nan), 0
    return np.array([cols.mean(), rows.mean()]), int(rows.size)


def render_tcp_marker(world: SimWorld, camera: Camera) -> tuple[np.ndarray, int]:
    """Centroid (u, v) and pixel count of the unoccluded TCP marker seen by `camera`."""
    client, marker = world.client, link_index(world, TCP_MARKER_LINK)
    bodies = [client.getBodyUniqueId(i) for i in range(client.getNumBodies())]
    with world.lock:
        saved = [
            (body, shape[1], shape[7])
            for body in bodies
            for shape in client.getVisualShapeData(body)
        ]
        try:
            for body, link, rgba in saved:
                show = body == world.robot and link == marker
                client.changeVisualShape(body, link, rgbaColor=[*rgba[:3], 1.0 if show else 0.0])
            _, seg = world.render(camera, segmentation=True)
        finally:
            for body, link, rgba in saved:
                client.changeVisualShape(body, link, rgbaColor=list(rgba))
    encoded = world.robot + ((marker + 1) << 24)
    return mask_centroid(seg == encoded)


def tcp_between_fingers(world: SimWorld, camera: Camera, projected: np.ndarray) -> bool | None:
    """Whether the projected TCP lies in the box spanned by both fingers' pixels (+1 px).

    Uses the ordinary scene render (with occlusion); None when a finger is not visible.
    """
    _, seg = world.render(camera, segmentation=True)
    boxes = []
    for link in FINGER_LINKS:
        rows, cols = np.nonzero(seg == world.robot + ((link + 1) << 24))
        if rows.size == 0:
            return None
        boxes.append((cols.min(), rows.min(), cols.max(), rows.max()))
    boxes = np.array(boxes)
    low, high = boxes[:, :2].min(axis=0) - 1.0, boxes[:, 2:].max(axis=0) + 1.0
    return bool(np.all(projected >= low) and np.all(projected <= high))


@dataclass
class TcpProjectionCheck:
    """Collects per-frame, per-view pixel errors; use as `run_episode(..., on_frame=check)`."""

    errors_px: list[float]
    between_fingers: list[bool]

    def __init__(self) -> None:
        self.errors_px = []
        self.between_fingers = []

    def __call__(self, world: SimWorld, cameras: Mapping[str, Camera]) -> None:
        tcp = world.tool_pose()[:3, 3]
        for camera in cameras.values():
            uv, count = render_tcp_marker(world, camera)
            projected, _ = camera.project(tcp)
            if count > 0 and camera.in_image(projected):
                self.errors_px.append(float(np.linalg.norm(uv - projected)))
            inside = tcp_between_fingers(world, camera, projected)
            if inside is not None:
                self.between_fingers.append(inside)

    def summary(self) -> dict:
        errors = np.asarray(self.errors_px)
        if errors.size == 0:
            return {"samples": 0}
        return {
            "samples": int(errors.size),
            "median_px": float(np.median(errors)),
            "p99_px": float(np.percentile(errors, 99)),
            "max_px": float(errors.max()),
            "within_2px": float(np.mean(errors <= 2.0)),
            "between_fingers": float(np.mean(self.between_fingers))
            if self.between_fingers
            else None,
            "between_fingers_samples": len(self.between_fingers),
        }
