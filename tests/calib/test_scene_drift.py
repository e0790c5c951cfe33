"""The static-scene drift check (no board, no arm motion) on the simulated cell's renders: an
unmoved camera passes across new scenes and arm poses, a camera knocked by 1 cm or 1 deg is
caught, and what it cannot judge it refuses instead of passing."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.calib.scene_drift import (
    SceneDriftThresholds,
    assess_scene,
    build_reference,
    measure_scene_shift,
)

SIZE = 128
VIEWS = ("left", "right")  # the daemon's sim cameras: the ones the bundled model uses
KNOCKS = {
    "1 cm along base x": ((0.01, 0.0, 0.0), (0.0, 0.0, 0.0)),
    "1 cm along base y": ((0.0, 0.01, 0.0), (0.0, 0.0, 0.0)),
    "1 cm along base z": ((0.0, 0.0, 0.01), (0.0, 0.0, 0.0)),
    "1 deg about camera x": ((0.0, 0.0, 0.0), (np.radians(1.0), 0.0, 0.0)),
    "1 deg about camera y": ((0.0, 0.0, 0.0), (0.0, np.radians(1.0), 0.0)),
    "1 deg about camera z": ((0.0, 0.0, 0.0), (0.0, 0.0, np.radians(1.0))),
}


@pytest.fixture(scope="module")
def cell():
    """A lock-step sim cell, references of each camera from four scenes (arm and cubes in
    different places), and the cameras."""
    from aimg.robot.sim.cameras import default_camera_specs
    from aimg.robot.sim.supervisor import SimSupervisor
    from aimg.robot.sim.world import SimWorld

    world = SimWorld(seed=0)
    supervisor = SimSupervisor(world)
    cameras = {spec.name: spec.camera(SIZE, SIZE) for spec in default_camera_specs(4)}
    frames: dict[str, list[np.ndarray]] = {name: [] for name in cameras}
    for seed in (500, 501, 502, 503):
        supervisor.start_episode("pick", seed)
        for name, camera in cameras.items():
            frames[name].append(world.render(camera)[0])
    references = {name: build_reference(f) for name, f in frames.items()}
    yield world, supervisor, cameras, references
    world.close()


def _frame(world, camera, knock=None):
    from aimg.robot.sim.cameras import knocked_camera

    return world.render(knocked_camera(camera, knock))[0]


@pytest.mark.parametrize("seed,task", [(610, "pick"), (611, "reach")])
def test_an_unmoved_camera_passes_in_a_new_scene(cell, seed, task):
    world, supervisor, cameras, references = cell
    supervisor.start_episode(task, seed)
    for name in VIEWS:
        verdict = assess_scene(
            name, references[name], _frame(world, cameras[name]), cameras[name].K[0, 0]
        )
        assert verdict.ok, verdict.reason
        assert verdict.view_shift_deg < 0.1
        assert verdict.shift.static_fraction > 0.9


def test_a_camera_knocked_by_1_cm_or_1_deg_is_caught_and_named(cell):
    world, supervisor, cameras, references = cell
    supervisor.start_episode("pick", 612)
    limit = SceneDriftThresholds().max_view_deg
    for name in VIEWS:
        for what, knock in KNOCKS.items():
            frame = _frame(world, cameras[name], knock)
            verdict = assess_scene(name, references[name], frame, cameras[name].K[0, 0])
            assert not verdict.ok, f"{name} {what}: {verdict.reason}"
            assert f"camera '{name}' moved" in verdict.reason
            # at least twice the limit: a margin for other scenes and machines
            assert verdict.view_shift_deg > 2 * limit, (name, what, verdict.view_shift_deg)


def test_the_measured_shift_follows_a_pure_turn(cell):
    """A 1 deg turn about the camera's x axis moves the image ~f * 1 deg vertically."""
    world, supervisor, cameras, references = cell
    camera = cameras["left"]
    shift = measure_scene_shift(
        references["left"][..., :3],
        _frame(world, camera, ((0.0, 0.0, 0.0), (np.radians(1.0), 0.0, 0.0))),
        references["left"][..., 3] > 0,
    )
    expected = camera.K[1, 1] * np.tan(np.radians(1.0))
    assert abs(abs(shift.shift_px[1]) - expected) < 0.25 * expected
    assert abs(shift.shift_px[0]) < 0.3 * expected


def test_exposure_changes_do_not_read_as_motion(cell):
    world, supervisor, cameras, references = cell
    supervisor.start_episode("pick", 613)
    frame = _frame(world, cameras["right"]).astype(np.float64)
    darker = np.clip(frame * 0.75 + 10, 0, 255).astype(np.uint8)
    verdict = assess_scene("right", references["right"], darker, cameras["right"].K[0, 0])
    assert verdict.ok, verdict.reason


def test_a_blocked_view_is_refused(cell):
    world, supervisor, cameras, references = cell
    rng = np.random.default_rng(0)
    blocked = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    verdict = assess_scene("left", references["left"], blocked, cameras["left"].K[0, 0])
    assert not verdict.ok
    assert "camera 'left'" in verdict.reason


def test_a_scene_without_edges_across_some_direction_is_unverifiable():
    """Horizontal stripes say nothing about a sideways shift: refused, not passed."""
    rows = (np.sin(np.arange(96) / 3.0)[:, None] * 100 + 120).astype(np.uint8)
    stripes = np.repeat(np.repeat(rows, 128, axis=1)[..., None], 3, axis=2)
    verdict = assess_scene("stripes", stripes, stripes.copy(), 100.0)
    assert not verdict.ok
    assert "too few edges" in verdict.reason


def test_a_frame_of_another_size_is_refused_with_the_sizes(cell):
    world, supervisor, cameras, references = cell
    verdict = assess_scene("left", references["left"], np.zeros((64, 64, 3), np.uint8), 100.0)
    assert not verdict.ok
    assert "128x128" in verdict.reason and "64x64" in verdict.reason


def test_the_reference_masks_what_moved_while_it_was_taken(cell):
    world, supervisor, cameras, references = cell
    alpha = references["left"][..., 3]
    assert set(np.unique(alpha)) <= {0, 255}
    assert 0.5 < (alpha > 0).mean() < 0.95  # the arm's places are masked, the table is not
    with pytest.raises(ValueError, match="at least one frame"):
        build_reference([])
