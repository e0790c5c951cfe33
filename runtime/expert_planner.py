"""A planner that knows the answer: the sim's scripted expert, through the model's own path.

At each replan the expert trajectory is sampled at the plan's frame times, drawn as action
images with the model's cameras and blob width (`aimg.codec.render`), and decoded back with
`aimg.codec.decode`, exactly like a generated plan. What the closed loop achieves with it is
what the loop achieves when the planner is right: it separates loop and decoder errors from
model errors.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from aimg.codec.decode import decode
from aimg.codec.render import render
from aimg.geometry import Camera, matrix_to_action
from aimg.observation import InputSpec, prepare_observation
from aimg.runtime.policy import Plan, waypoint_confidence
from aimg.runtime.waypoints import Waypoints


class ExpertPlanner:
    """Same `plan(...)` signature as `Policy`; `expert` has `pose(t_s)` and `gripper(t_s)`.

    spec: the model's input geometry (views, size, crop, blob width) so the render -> decode
    round trip is the one the model's plans go through; dt_s and frames: the plan's timing.
    """

    def __init__(
        self,
        expert: Any,
        start_ns: int,
        spec: InputSpec,
        dt_s: float,
        frames: int,
        views: list[str] | None = None,
    ) -> None:
        self.expert = expert
        self.start_ns = start_ns
        self.spec = spec
        self.dt_s = dt_s
        self.frames = frames
        self.views = views
        self.plan_count = 0

    def plan(
        self,
        images: Mapping[str, np.ndarray],
        cameras: Mapping[str, Camera],
        tool_pose: np.ndarray,
        observation_ns: int,
        instruction: str,
        seed: int | None = None,
        prefix: np.ndarray | None = None,
    ) -> Plan:
        t0 = time.perf_counter()
        views = self.views or list(images)[: self.spec.views]
        obs = prepare_observation(
            [images[v] for v in views], [cameras[v] for v in views], tool_pose, self.spec
        )
        times = observation_ns + np.round(np.arange(self.frames) * self.dt_s * 1e9).astype(np.int64)
        t_s = (times - self.start_ns) / 1e9
        actions = np.stack(
            [matrix_to_action(self.expert.pose(t), self.expert.gripper(t)) for t in t_s]
        )
        actions[0] = tool_pose
        images_ = render(
            actions, obs.cameras, self.spec.height, self.spec.width, self.spec.blob_sigma
        )
        decoded = decode(images_, obs.cameras, sigma_fraction=self.spec.blob_sigma)
        self.plan_count += 1
        waypoints = Waypoints.from_actions(
            decoded.actions,
            times,
            waypoint_confidence(decoded, obs.cameras),
            self.plan_count,
            "expert",
        )
        elapsed = time.perf_counter() - t0
        return Plan(
            waypoints,
            observation_ns,
            time.monotonic_ns(),
            images_,
            decoded,
            obs,
            {"policy_total": elapsed, "steps": []},
        )
