"""Counting grasps from the measured gripper: what tells a missed-and-retried pick apart."""

from __future__ import annotations

from aimg.runtime.sim_run import grasp_attempts


def test_one_grasp_that_holds_a_cube_counts_once():
    closing_on_a_cube = [1.0, 1.0, 0.8, 0.56, 0.52, 0.55, 0.53]  # the fingers stop on it
    assert grasp_attempts(closing_on_a_cube) == 1


def test_a_hand_that_reopens_and_closes_again_counts_twice():
    missed_then_retried = [1.0, 0.6, 0.1, 0.0, 0.0, 0.4, 0.9, 1.0, 0.7, 0.3, 0.3]  # 0.9: not yet
    assert grasp_attempts(missed_then_retried) == 2


def test_jitter_inside_the_band_is_not_a_new_grasp():
    assert grasp_attempts([1.0, 0.3, 0.45, 0.85, 0.35, 0.9, 0.3]) == 1
    assert grasp_attempts([1.0, 0.95, 0.8, 0.75, 1.0]) == 0  # never closed


def test_a_hand_that_starts_closed_counts_from_its_first_closing_after_opening():
    assert grasp_attempts([0.0, 0.0, 0.5, 0.95, 0.2]) == 1
    assert grasp_attempts([]) == 0
