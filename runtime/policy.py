"""The policy: newest frames + tool pose -> a timed plan of tool poses in the base frame.

Observation -> model inputs (`aimg.observation`), a backend plan (`aimg.runtime.backends`),
the generated action segments decoded back to poses (`aimg.codec.decode`), and frame k of the
plan timed at observation time + k x `action_dt_s` (the checkpoint's seconds between generated
frames: clip stride / recording rate). Text and camera latents stay cached in the backend until
the instruction or the calibration changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aimg.codec.decode import DecodedActions, decode
from aimg.geometry import Camera
from aimg.observation import ModelObservation, prepare_observation
from aimg.runtime.backends import PlanBackend
from aimg.runtime.waypoints import Waypoints

#: Views that disagree by this much RMS (in metres at the tool) make a waypoint's confidence
#: exp(-1/2) = 0.61; a third of the 3 cm a reach is allowed.
AGREEMENT_TOLERANCE_M = 0.01


def waypoint_confidence(
    decoded: DecodedActions, cameras: Sequence[Camera], tolerance_m: float = AGREEMENT_TOLERANCE_M
) -> np.ndarray:
    """[T] in [0, 1]: how well the views agree on each decoded pose, in metres.

    The decoder's own confidence measures agreement in pixels (0.25 px tolerance), right for
    rendered images but ~0 for a small model's 64 px plans that agree within millimetres; a
    robot cares about the disagreement at the tool, so the RMS reprojection error is turned
    into metres with each view's pixel footprint at the tool's distance. Frames that did not
    decode get 0.
    """
    positions = decoded.actions[:, :3]
    footprint = np.zeros(len(positions))
    for cam in cameras:
        distance = np.linalg.norm(positions - cam.c2w[:3, 3], axis=1)
        footprint += distance / (0.5 * (cam.K[0, 0] + cam.K[1, 1]))
    rms_m = decoded.reprojection_error * footprint / len(cameras)
    confidence = np.exp(-0.5 * (rms_m / tolerance_m) ** 2)
    if decoded.multi_view is not None:  # a point seen by one view only: as the decoder weighs it
        confidence = confidence * np.where(decoded.multi_view, 1.0, 0.7)
    solved = np.isfinite(positions).all(axis=1) & np.isfinite(rms_m)
    return np.where(solved, confidence, 0.0)


class PolicyError(ValueError):
    """The policy cannot run with this checkpoint or these cameras; the message says why."""


@dataclass
class Plan:
    """One plan: the decoded waypoints and what produced them.

    waypoints: every generated frame (frame 0 is the conditioning pose at observation time),
    timed on the monotonic clock; observation_ns: capture time of the frames it saw;
    ready_ns: when it was decoded; action_images: [T, V, H, W, 3] in [0, 1]; decoded: the
    decoder's output (confidence, reprojection error); timings: seconds per component.
    """

    waypoints: Waypoints
    observation_ns: int
    ready_ns: int
    action_images: np.ndarray
    decoded: DecodedActions
    observation: ModelObservation
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """Capture -> plan ready."""
        return (self.ready_ns - self.observation_ns) / 1e9


def action_dt_s(config: Mapping[str, Any]) -> float:
    """Seconds between generated frames, from a checkpoint's config.json."""
    extra = config.get("extra") or {}
    if "action_dt_s" in extra:
        return float(extra["action_dt_s"])
    data = extra.get("data") or {}
    if "data_fps" in extra and "stride" in data:
        return float(data["stride"]) / float(extra["data_fps"])
    raise PolicyError(
        "the checkpoint does not say how far apart its generated frames are (extra.action_dt_s "
        "in config.json): retrain with `aimg train` (which records it) or add it by hand "
        "(clip stride / recording fps)"
    )


class Policy:
    """Plans with a backend; see the module docstring."""

    def __init__(
        self,
        backend: PlanBackend,
        views: Sequence[str] | None = None,
        dt_s: float | None = None,
    ) -> None:
        self.backend = backend
        self.spec = backend.spec
        self.dt_s = dt_s if dt_s is not None else action_dt_s(backend.config)
        data_views = ((backend.config.get("extra") or {}).get("data") or {}).get("views")
        self.views = list(views) if views is not None else data_views
        self.plan_count = 0

    def select_views(self, available: Sequence[str]) -> list[str]:
        """The camera names the model takes, in its order."""
        wanted = self.views or list(available)[: self.spec.views]
        missing = [v for v in wanted if v not in available]
        if missing or len(wanted) != self.spec.views:
            raise PolicyError(
                f"the model takes {self.spec.views} views {wanted}; the rig has {list(available)}"
                " (choose them with --views)"
            )
        return list(wanted)

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
        """Plan from one synchronised observation.

        images / cameras: per view name, uint8 [H, W, 3] and its calibration; tool_pose: [7]
        action vector of the arm at `observation_ns`; prefix: optional [P, 7] poses of frames
        1..P that will execute anyway (inpainted).
        """
        t0 = time.perf_counter()
        views = self.select_views(list(images))
        obs = prepare_observation(
            [images[v] for v in views], [cameras[v] for v in views], tool_pose, self.spec
        )
        prepared = time.perf_counter()
        seed = self.plan_count if seed is None else seed
        out = self.backend.plan(obs, instruction, seed=seed, prefix=prefix)
        decoded = decode(out.action_images, obs.cameras, sigma_fraction=self.spec.blob_sigma)
        ready_ns = time.monotonic_ns()
        frames = len(decoded.actions)
        times = observation_ns + np.round(np.arange(frames) * self.dt_s * 1e9).astype(np.int64)
        self.plan_count += 1
        timings = dict(out.timings)
        timings.update(
            preprocess=prepared - t0,
            decode_actions=time.perf_counter() - prepared - out.timings["total"],
            policy_total=time.perf_counter() - t0,
        )
        waypoints = Waypoints.from_actions(
            decoded.actions,
            times,
            waypoint_confidence(decoded, obs.cameras),
            plan_id=self.plan_count,
            source="model",
            meta={"seed": seed},
        )
        return Plan(waypoints, observation_ns, ready_ns, out.action_images, decoded, obs, timings)
