"""The policy turns frames and a pose into waypoints timed on the checkpoint's frame spacing."""

from __future__ import annotations

import numpy as np
import pytest
from artifact_fixtures import SIM_TINY

from aimg.codec.decode import decode
from aimg.codec.render import render
from aimg.geometry import Camera, intrinsics_matrix, look_at
from aimg.runtime.backends import load
from aimg.runtime.policy import Policy, PolicyError, action_dt_s, waypoint_confidence

K = intrinsics_matrix(110.0, 110.0, 63.5, 63.5)
CAMERAS = {
    "left": Camera(K, look_at(np.array([0.5, 0.6, 0.5]), np.array([0.45, 0.0, 0.05])), 128, 128),
    "right": Camera(K, look_at(np.array([0.5, -0.6, 0.5]), np.array([0.45, 0.0, 0.05])), 128, 128),
}
POSE = np.array([0.35, 0.0, 0.25, np.pi, 0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy(load(SIM_TINY, "torch", threads=1))


def test_waypoints_are_timed_from_the_observation_at_the_checkpoints_spacing(policy):
    images = {name: np.full((128, 128, 3), 100, np.uint8) for name in CAMERAS}
    plan = policy.plan(images, CAMERAS, POSE, 1_000_000_000, "reach the red cube", seed=0)
    assert policy.dt_s == pytest.approx(0.8)  # sim-tiny: stride 8 at 10 fps
    expected = 1_000_000_000 + np.round(np.arange(5) * 0.8e9).astype(np.int64)
    np.testing.assert_array_equal(plan.waypoints.times_ns, expected)
    np.testing.assert_allclose(plan.waypoints.positions[0], POSE[:3], atol=2e-3)  # frame 0
    assert plan.waypoints.plan_id == 1 and plan.action_images.shape == (5, 2, 64, 64, 3)
    assert ((plan.waypoints.confidence >= 0) & (plan.waypoints.confidence <= 1)).all()
    assert plan.ready_ns > plan.observation_ns and plan.timings["policy_total"] > 0


def test_views_the_rig_lacks_are_refused(policy):
    with pytest.raises(PolicyError, match="the model takes 2 views"):
        policy.select_views(["left"])


def test_the_frame_spacing_must_be_known():
    assert action_dt_s({"extra": {"data_fps": 10.0, "data": {"stride": 4}}}) == 0.4
    with pytest.raises(PolicyError, match="action_dt_s"):
        action_dt_s({"extra": {}})


def test_confidence_measures_view_disagreement_in_metres():
    cameras = [c.scaled(64, 64) for c in CAMERAS.values()]
    actions = np.tile(POSE, (3, 1))
    images = render(actions, cameras, 64, 64, 0.125)
    agree = waypoint_confidence(decode(images, cameras, sigma_fraction=0.125), cameras)
    moved = actions.copy()
    moved[:, 0] += 0.05  # the second view sees the tool 5 cm away
    images[:, 1] = render(moved, cameras[1:], 64, 64, 0.125)[:, 0]
    disagree = waypoint_confidence(decode(images, cameras, sigma_fraction=0.125), cameras)
    assert agree.min() > 0.9 and disagree.max() < 0.2  # below the default gate
