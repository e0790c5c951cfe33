"""Shared simulated worlds: building one costs ~0.2 s, so tests of a module share one."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def world():
    from aimg.robot.sim.world import SimWorld

    sim = SimWorld(seed=0)
    yield sim
    sim.close()


@pytest.fixture
def fresh_world(world):
    """The module's world, rebuilt from scratch (seed 0) for this test."""
    world.reset(0)
    return world
