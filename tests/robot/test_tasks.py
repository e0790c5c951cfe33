"""Tasks and the scripted expert: scenes, success checks, smooth motion, real grasps."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.robot.sim.collect import RolloutSettings, episode_seed, run_episode
from aimg.robot.sim.expert import Trajectory, Waypoint, min_jerk
from aimg.robot.sim.tasks import (
    COLOURS,
    CUBE_SIZE_M,
    NEAR_RADIUS_M,
    REGRASP_RADIUS_M,
    get_task,
    sample_scene,
    starts_near,
)
from aimg.robot.sim.world import top_down_pose


def test_min_jerk_starts_and_ends_at_rest():
    assert min_jerk(0.0) == 0.0 and min_jerk(1.0) == 1.0
    eps = 1e-4
    assert (min_jerk(eps) - min_jerk(0.0)) / eps < 1e-6
    assert (min_jerk(1.0) - min_jerk(1.0 - eps)) / eps < 1e-6


def test_trajectory_interpolates_position_and_switches_gripper_per_segment():
    a, b = top_down_pose(np.array([0.3, 0.0, 0.3])), top_down_pose(np.array([0.4, 0.0, 0.1]))
    plan = Trajectory([Waypoint(0.0, a, 1.0), Waypoint(1.0, b, 0.0)])
    np.testing.assert_allclose(plan.pose(0.5)[:3, 3], [0.35, 0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(plan.pose(5.0), b)
    assert plan.gripper(0.5) == 0.0 and plan.gripper(2.0) == 0.0


def test_scene_has_target_and_distinct_separated_distractors():
    for seed in range(20):
        scene = sample_scene("reach", np.random.default_rng(seed))
        colours = [obj.colour for obj in scene.objects]
        assert 2 <= len(colours) <= 4 and len(set(colours)) == len(colours)
        assert set(colours) <= set(COLOURS)
        xy = np.array([obj.position[:2] for obj in scene.objects])
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy))
        assert gaps.min() >= 0.09


def test_near_starts_keep_the_scene_and_start_a_few_cm_off_the_target_low():
    for seed in range(20):
        standard = sample_scene("pick", np.random.default_rng(seed))
        near = sample_scene("pick", np.random.default_rng(seed), start="near")
        assert near.objects == standard.objects and near.speed_m_s == standard.speed_m_s
        start, cube = np.array(near.start_position), np.array(near.target.position)
        assert np.linalg.norm(start[:2] - cube[:2]) <= NEAR_RADIUS_M
        assert 0.03 <= start[2] - (cube[2] + CUBE_SIZE_M / 2) <= 0.10
        assert starts_near(near) and not starts_near(standard)
    with pytest.raises(ValueError, match="standard"):
        sample_scene("reach", np.random.default_rng(0), start="far")


def test_regrasp_starts_keep_the_scene_and_start_closed_a_few_cm_off_the_target():
    for seed in range(20):
        standard = sample_scene("pick", np.random.default_rng(seed))
        regrasp = sample_scene("pick", np.random.default_rng(seed), start="regrasp")
        assert regrasp.objects == standard.objects and regrasp.speed_m_s == standard.speed_m_s
        assert regrasp.start_gripper == 0.0 and standard.start_gripper == 1.0
        start, cube = np.array(regrasp.start_position), np.array(regrasp.target.position)
        assert np.linalg.norm(start[:2] - cube[:2]) <= REGRASP_RADIUS_M
        assert 0.02 <= start[2] - (cube[2] + CUBE_SIZE_M / 2) <= 0.14
        assert regrasp.to_dict()["start_gripper"] == 0.0


def test_the_expert_opens_a_closed_empty_hand_and_then_picks(world):
    episode = run_episode(world, RolloutSettings(task="pick", start="regrasp"), episode_seed(7, 3))
    assert episode.success, episode.metadata
    gripper, commanded = episode.poses[:, 6], episode.extras["commanded_actions"][:, 6]
    assert gripper[0] < 0.05  # the episode starts with the hand closed on nothing
    opened = int(np.argmax(gripper > 0.95))
    assert opened > 0 and commanded[0] == 1.0  # the first command opens it
    start = np.array(episode.metadata["scene"]["start_position"])
    # it opens where it is before it moves
    assert np.linalg.norm(episode.poses[opened, :3] - start) < 0.01


@pytest.mark.parametrize("task", ["reach", "pick"])
def test_the_expert_corrects_from_a_near_start_sideways_then_down(world, task):
    episode = run_episode(world, RolloutSettings(task=task, start="near"), episode_seed(7, 0))
    assert episode.success, episode.metadata
    start = np.array(episode.metadata["scene"]["start_position"])
    # it never climbs to the approach point 10 cm over the cube's centre
    assert episode.poses[:, 2].max() < start[2] + 0.01 or task == "pick"
    descending = episode.poses[: int(np.argmin(episode.poses[:, 2])) + 1, 2]
    assert descending.max() < start[2] + 0.01


def test_unknown_task_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="pick"):
        get_task("stack")


@pytest.mark.parametrize("task", ["reach", "pick"])
def test_expert_succeeds_with_smooth_motion(world, task):
    for index in range(2):
        episode = run_episode(world, RolloutSettings(task=task), episode_seed(7, index))
        assert episode.success, episode.metadata
        assert episode.instruction.endswith(f"{episode.metadata['scene']['target']} cube")
        dt = np.diff(episode.timestamps_ns) / 1e9
        speed = np.linalg.norm(np.diff(episode.poses[:, :3], axis=0), axis=1) / dt
        assert speed.max() < 0.6  # m/s: no teleporting
        assert speed[:3].max() < speed.max()  # starts from rest


def test_reach_fails_when_the_arm_does_not_move(world):
    task = get_task("reach")
    world.reset(1)
    scene = task.sample_scene(world.rng)
    for obj in scene.objects:
        world.add_cube(obj.colour, COLOURS[obj.colour], np.array(obj.position), obj.yaw)
    world.advance(0.5)
    assert not task.success(world, scene)


def test_picked_cube_stays_in_the_hand_while_carried(world):
    episode = run_episode(world, RolloutSettings(task="pick"), episode_seed(7, 0))
    assert episode.success
    gripper = episode.poses[:, 6]
    assert gripper[0] > 0.99 and 0.1 < gripper[-1] < 0.8  # closed on the cube, not fully
    target = episode.metadata["scene"]["target"]
    held = world.object_pose(target)[:3, 3] - world.tool_pose()[:3, 3]
    # Carry it sideways: the cube moves with the tool.
    start = world.tool_pose()
    for k in range(1, 61):
        pose = start.copy()
        pose[1, 3] += 0.1 * k / 60
        world.set_servo_target(pose)
        world.step(4)
    world.advance(0.3)
    np.testing.assert_allclose(
        world.object_pose(target)[:3, 3] - world.tool_pose()[:3, 3], held, atol=0.01
    )
    assert world.object_pose(target)[2, 3] > 0.08
