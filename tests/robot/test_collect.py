"""Collected episodes: on-disk round trip, resumption, codec agreement, CLI, TCP pixels."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aimg.codec import decode, render
from aimg.episodes import read_episode
from aimg.geometry import euler_xyz_to_matrix, rotation_angle_between
from aimg.robot.cli import app
from aimg.robot.sim.collect import RolloutSettings, collect, episode_seed, run_episode
from aimg.robot.sim.verify import TcpProjectionCheck

SETTINGS = RolloutSettings(task="pick", views=2, height=96, width=96)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    root = tmp_path_factory.mktemp("pick")
    results = collect(root, SETTINGS, episodes=2, seed=5)
    return root, results


def test_collect_writes_requested_successful_episodes(collected):
    root, results = collected
    assert sorted(index for index, _ in results) == [0, 1]
    assert all(success for _, success in results)
    episode = read_episode(root / "episode_000001")
    assert episode.task == "pick" and episode.instruction.startswith("pick up the ")
    assert episode.view_names == ("left", "right")
    assert episode.frames("left").shape == (episode.num_frames, 96, 96, 3)
    assert episode.camera("right").width == 96


def test_episode_on_disk_equals_a_fresh_rollout_with_its_seed(collected, world):
    root, _ = collected
    stored = read_episode(root / "episode_000001")
    fresh = run_episode(world, SETTINGS, episode_seed(5, 1))
    np.testing.assert_array_equal(stored.poses, fresh.poses)
    np.testing.assert_array_equal(stored.timestamps_ns, fresh.timestamps_ns)
    for view in fresh.frames:
        np.testing.assert_array_equal(stored.frames(view), fresh.frames[view])
        np.testing.assert_array_equal(stored.camera(view).K, fresh.cameras[view].K)
        np.testing.assert_array_equal(stored.camera(view).c2w, fresh.cameras[view].c2w)
    assert stored.metadata["scene"] == fresh.metadata["scene"]
    assert stored.success == fresh.success


def test_rerunning_collect_only_writes_missing_episodes(collected, tmp_path):
    root, _ = collected
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    before = read_episode(copy / "episode_000001").poses
    shutil.rmtree(copy / "episode_000001")
    results = collect(copy, SETTINGS, episodes=2, seed=5)
    assert [index for index, _ in results] == [1]
    np.testing.assert_array_equal(read_episode(copy / "episode_000001").poses, before)
    assert collect(copy, SETTINGS, episodes=2, seed=5) == []


def test_codec_decodes_rendered_actions_back_to_recorded_poses(collected):
    root, _ = collected
    episode = read_episode(root / "episode_000000")
    cameras = [episode.camera(view) for view in episode.view_names]
    images = render(episode.poses, cameras, 96, 96)
    decoded = decode(images, cameras)
    position_error = np.linalg.norm(decoded.actions[:, :3] - episode.poses[:, :3], axis=1)
    angle_error = rotation_angle_between(
        euler_xyz_to_matrix(decoded.actions[:, 3:6]), euler_xyz_to_matrix(episode.poses[:, 3:6])
    )
    assert position_error.max() < 1e-3
    assert np.degrees(angle_error).max() < 0.5
    np.testing.assert_array_equal(decoded.actions[:, 6] > 0.5, episode.poses[:, 6] > 0.5)
    assert (episode.poses[:, 6] < 0.5).any()  # the pick closes the gripper


def test_reported_tcp_projects_onto_the_rendered_tool(world):
    check = TcpProjectionCheck()
    run_episode(world, RolloutSettings(task="pick", views=2), episode_seed(5, 0), on_frame=check)
    summary = check.summary()
    assert summary["samples"] > 50
    assert summary["p99_px"] < 0.5 and summary["within_2px"] == 1.0
    assert summary["between_fingers"] > 0.9


def test_cli_collect_then_show_writes_a_contact_sheet(tmp_path):
    runner = CliRunner()
    out = tmp_path / "reach"
    result = runner.invoke(
        app,
        ["collect", "--task", "reach", "--episodes", "1", "--out", str(out), "--size", "64"],
    )
    assert result.exit_code == 0, result.output
    assert '"successes": 1' in result.output
    sheet = tmp_path / "sheet.png"
    result = runner.invoke(
        app, ["show", str(out / "episode_000000"), "--out", str(sheet), "--columns", "4"]
    )
    assert result.exit_code == 0, result.output
    width, height = Image.open(sheet).size
    assert width == 4 * 64 * 2 and height > 4 * 64 * 2


def test_cli_rejects_unknown_task(tmp_path):
    result = CliRunner().invoke(app, ["collect", "--task", "stack", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "reach" in result.output


@pytest.mark.slow
def test_parallel_collection_writes_the_same_episodes(collected, tmp_path):
    root, _ = collected
    collect(tmp_path, SETTINGS, episodes=2, seed=5, workers=2)
    for name in ("episode_000000", "episode_000001"):
        np.testing.assert_array_equal(
            read_episode(tmp_path / name).frames("left"), read_episode(root / name).frames("left")
        )


def test_collect_places_the_cameras_as_a_calibration_file_says(tmp_path, world):
    """A rig moved from the standard one (here 640x480 cameras, 4 cm and 2 deg off): the
    episodes carry the file's cameras, cropped and resized to the recorded size, and the
    codec still lands the rendered TCP on the recorded pose through them."""
    from aimg.calib.calibration_file import CalibrationFile, CameraCalibration, write_calibration
    from aimg.robot.sim.cameras import default_camera_specs, knocked_camera

    records = {}
    for spec in default_camera_specs(2):
        moved = knocked_camera(spec.camera(480, 640), ((0.04, -0.03, 0.02), (0.0, 0.035, 0.0)))
        records[spec.name] = CameraCalibration(
            spec.name, spec.name, moved.K, np.zeros(5), moved.c2w, 640, 480, "2026-12-03", "test"
        )
    path = tmp_path / "moved.yaml"
    write_calibration(path, CalibrationFile(records, source="test"))
    out = tmp_path / "moved"
    args = ["collect", "--task", "reach", "--episodes", "1", "--size", "64", "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--calibration", str(path)])
    assert result.exit_code == 0, result.output
    episode = read_episode(out / "episode_000000")
    for name, record in records.items():
        camera = episode.camera(name)
        assert (camera.width, camera.height) == (64, 64)
        np.testing.assert_allclose(camera.c2w, record.c2w, atol=1e-9)
        expected = record.camera().resized(64, 64)
        np.testing.assert_allclose(camera.K, expected.K, atol=1e-9)
    # the pixels agree with those cameras: the TCP renders where they project it
    check = TcpProjectionCheck()
    cameras = {name: record.camera() for name, record in records.items()}
    settings = RolloutSettings(task="reach", height=64, width=64, cameras=cameras)
    run_episode(world, settings, episode_seed(0, 0), on_frame=check)
    assert check.errors_px and float(np.median(check.errors_px)) < 1.0
    bad = CliRunner().invoke(app, [*args, "--calibration", str(tmp_path / "none.yaml")])
    flat = "".join(bad.output.replace("│", "").split())  # the error box wraps anywhere
    assert bad.exit_code != 0 and "doesnotexist" in flat and "none.yaml" in flat


def test_camera_jitter_moves_each_episode_rig_within_bounds_and_records_it(world):
    """`--jitter-cm/--jitter-deg`: every episode draws its own rig from its seed, within the
    bounds; the episode's pixels agree with the cameras it records."""
    from aimg.robot.sim.cameras import default_camera_specs

    settings = RolloutSettings(task="reach", height=64, width=64, jitter_m=0.03, jitter_deg=2.0)
    standard = {spec.name: spec.camera(64, 64) for spec in default_camera_specs(2)}
    rigs = [settings.episode_rig(episode_seed(0, i)) for i in range(8)]
    for rig in rigs:
        for name, camera in rig.items():
            home = standard[name].c2w
            shift = np.linalg.norm(camera.c2w[:3, 3] - home[:3, 3])
            turn = np.degrees(rotation_angle_between(camera.c2w[:3, :3], home[:3, :3]))
            assert shift <= 0.03 + 1e-9 and turn <= 2.0 + 1e-6
            np.testing.assert_array_equal(camera.K, standard[name].K)
    assert not np.allclose(rigs[0]["left"].c2w, rigs[1]["left"].c2w)
    again = settings.episode_rig(episode_seed(0, 0))
    np.testing.assert_array_equal(again["left"].c2w, rigs[0]["left"].c2w)
    plain = RolloutSettings(height=64, width=64).episode_rig(episode_seed(0, 0))
    np.testing.assert_array_equal(plain["left"].c2w, standard["left"].c2w)

    check = TcpProjectionCheck()
    episode = run_episode(world, settings, episode_seed(0, 3), on_frame=check)
    assert episode.success
    np.testing.assert_array_equal(episode.cameras["left"].c2w, rigs[3]["left"].c2w)
    assert check.errors_px and float(np.median(check.errors_px)) < 1.0
