"""A daemon task becomes one atomic episode: frames, arm, commands, plans, events, outcome."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from artifact_fixtures import SIM_TINY
from PIL import Image

from aimg.episodes import list_episodes, read_episode, remove_stale_temp_dirs
from aimg.geometry import action_to_matrix, matrix_to_action
from aimg.robot.sim.cameras import default_camera_specs
from aimg.runtime.backends import load
from aimg.runtime.policy import Plan, Policy
from aimg.runtime.safety import Command, SafetyEvent
from aimg.runtime.task_recording import TaskRecording, json_safe

#: the daemon's sim rig: views "left" and "right" at 128 x 128
CAMERAS = {spec.name: spec.camera(128, 128) for spec in default_camera_specs(2)}
START_NS = 5_000_000_000
FRAME_NS = 100_000_000
FRAMES = 6
INSTRUCTION = "reach the red cube"


def _images(t: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(t)
    return {view: rng.integers(0, 256, (128, 128, 3), dtype=np.uint8) for view in CAMERAS}


def _action(t: int) -> np.ndarray:
    """Tool pose of frame t as an action vector (gripper closing over the task)."""
    return np.array([0.35 + 0.01 * t, 0.02 * t, 0.25, np.pi, 0.1, 0.2 * t, 1.0 - 0.15 * t])


@pytest.fixture(scope="module")
def plans() -> list[Plan]:
    """Two real plans of the bundled model from frames 0 and 2."""
    policy = Policy(load(SIM_TINY, "torch", threads=1))
    return [
        policy.plan(_images(t), CAMERAS, _action(t), START_NS + t * FRAME_NS, INSTRUCTION, seed=t)
        for t in (0, 2)
    ]


def _commands(first: int, count: int, segment: int) -> list[Command]:
    return [
        Command(START_NS + k * 10_000_000, action_to_matrix(_action(k % FRAMES)), 0.5, segment)
        for k in range(first, first + count)
    ]


def _events() -> list[SafetyEvent]:
    return [
        SafetyEvent(START_NS + 1, "clamp_speed", "clamp", "speed 0.31 m/s clamped to 0.25 m/s"),
        SafetyEvent(START_NS + 2, "stale_plan", "hold", "no plan for 1.2 s: holding"),
    ]


def _record(root: Path, plans: list[Plan]) -> TaskRecording:
    """A whole task: 6 frames at 10 Hz, arm states at 20 Hz, 2 command batches, plans, events."""
    recording = TaskRecording(root, INSTRUCTION, "reach_cube", CAMERAS, {"task_id": "task-000007"})
    for t in range(FRAMES):
        pose = action_to_matrix(_action(t))
        assert recording.add_frames(_images(t), START_NS + t * FRAME_NS, pose, _action(t)[6])
        for half in (0, 1):
            time_ns = START_NS + t * FRAME_NS + half * FRAME_NS // 2
            recording.add_arm_state(time_ns, pose, _action(t)[6], 3 * half)
    recording.add_commands(_commands(0, 30, segment=0))
    recording.add_commands(_commands(30, 25, segment=1))
    recording.add_plan(plans[0], submitted=3)
    recording.add_plan(plans[1])
    for event in _events():
        recording.add_event(event)
    return recording


def test_a_committed_task_reads_back_with_every_stream_and_the_metadata(tmp_path, plans):
    recording = _record(tmp_path, plans)
    assert (recording.num_frames, recording.num_plans) == (FRAMES, 2)
    path = recording.commit("succeeded", None, "the cube was reached", {"duration_s": 0.6})
    episode = read_episode(path, verify=True)

    assert (episode.instruction, episode.task, episode.view_names) == (
        INSTRUCTION,
        "reach_cube",
        ("left", "right"),
    )
    assert episode.success is False  # success unknown (None) -> False; metadata keeps None
    np.testing.assert_array_equal(episode.timestamps_ns, START_NS + np.arange(FRAMES) * FRAME_NS)
    np.testing.assert_allclose(episode.poses, np.stack([_action(t) for t in range(FRAMES)]))
    np.testing.assert_array_equal(episode.frames("right")[4], _images(4)["right"])
    np.testing.assert_array_equal(episode.camera("left").K, CAMERAS["left"].K)
    np.testing.assert_array_equal(episode.camera("left").c2w, CAMERAS["left"].c2w)

    stream = episode.stream
    arm_times = START_NS + np.arange(2 * FRAMES) * FRAME_NS // 2
    np.testing.assert_array_equal(stream("arm_time_ns"), arm_times)
    assert stream("arm_action").shape == (12, 7)
    np.testing.assert_allclose(stream("arm_action")[2], _action(1))
    np.testing.assert_array_equal(stream("arm_error"), np.tile([0, 3], FRAMES))
    commands = _commands(0, 30, 0) + _commands(30, 25, 1)
    np.testing.assert_array_equal(stream("command_time_ns"), [c.time_ns for c in commands])
    np.testing.assert_allclose(
        stream("command_action"), [matrix_to_action(c.pose, c.gripper) for c in commands]
    )
    np.testing.assert_array_equal(stream("command_segment"), [0] * 30 + [1] * 25)
    np.testing.assert_array_equal(stream("plan_observation_ns"), [p.observation_ns for p in plans])
    np.testing.assert_array_equal(stream("plan_ready_ns"), [p.ready_ns for p in plans])
    np.testing.assert_array_equal(stream("plan_times_ns"), [p.waypoints.times_ns for p in plans])
    np.testing.assert_array_equal(stream("plan_actions"), [p.decoded.actions for p in plans])
    np.testing.assert_array_equal(
        stream("plan_confidence"), [p.waypoints.confidence.astype(np.float32) for p in plans]
    )
    images = np.stack([np.round(p.action_images * 255) for p in plans]).astype(np.uint8)
    assert images.shape == (2, 5, 2, 64, 64, 3)  # sim-tiny: 5 frames x 2 views at 64 x 64
    np.testing.assert_array_equal(stream("plan_action_images"), images)
    dtypes = {name: str(stream(name).dtype) for name in episode.stream_names}
    assert dtypes == {
        "arm_time_ns": "int64",
        "arm_action": "float64",
        "arm_error": "int32",
        "command_time_ns": "int64",
        "command_action": "float64",
        "command_segment": "int64",
        "plan_observation_ns": "int64",
        "plan_ready_ns": "int64",
        "plan_times_ns": "int64",
        "plan_actions": "float64",
        "plan_confidence": "float32",
        "plan_action_images": "uint8",
    }

    meta = episode.metadata
    assert {key: meta[key] for key in ("task_id", "duration_s", "recorded_by")} == {
        "task_id": "task-000007",
        "duration_s": 0.6,
        "recorded_by": "aimg daemon",
    }
    assert (meta["outcome"], meta["reason"], meta["success"]) == (
        "succeeded",
        "the cube was reached",
        None,
    )
    assert meta["plans"] == [
        {
            "plan_id": plan.waypoints.plan_id,
            "source": "model",
            "latency_s": plan.latency_s,
            "timings": json_safe(plan.timings),
            "submitted": submitted,
            "stream_index": index,
        }
        for index, (plan, submitted) in enumerate(zip(plans, (3, None), strict=True))
    ]
    assert isinstance(meta["plans"][0]["timings"]["steps"], list)  # per-step seconds kept
    assert meta["plans_not_in_streams"] == 0 and meta["frames_skipped"] == 0
    assert meta["safety_events"] == [dataclasses.asdict(event) for event in _events()]


def test_success_is_stored_as_given_when_known(tmp_path, plans):
    path = _record(tmp_path, plans).commit("failed", False, "timed out")
    episode = read_episode(path)
    assert episode.success is False and episode.metadata["success"] is False
    path = _record(tmp_path, plans).commit("succeeded", True)
    episode = read_episode(path)
    assert episode.success is True and episode.metadata["reason"] is None


def test_frames_not_after_the_previous_one_or_without_a_pose_are_skipped_and_counted(tmp_path):
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    pose = action_to_matrix(_action(0))
    assert recording.add_frames(_images(0), START_NS, pose, 1.0)
    assert not recording.add_frames(_images(1), START_NS, pose, 1.0)
    assert not recording.add_frames(_images(1), START_NS - 1, pose, 1.0)
    assert not recording.add_frames(_images(1), START_NS + 1, np.full((4, 4), np.nan), 1.0)
    assert not recording.add_frames(_images(1), START_NS + 1, pose, float("nan"))
    assert recording.add_frames(_images(1), START_NS + 1, pose, 1.0 + 1e-9)  # clipped to 1
    episode = read_episode(recording.commit("ended", None))
    assert episode.num_frames == 2 and episode.metadata["frames_skipped"] == 4
    assert episode.gripper[1] == 1.0


def test_unknown_arm_poses_are_stored_as_nan(tmp_path):
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    recording.add_frames(_images(0), START_NS, action_to_matrix(_action(0)), 1.0)
    recording.add_arm_state(START_NS, np.zeros((4, 4)), 0.0, 0)  # before the arm reported
    recording.add_arm_state(START_NS + 1, np.full((4, 4), np.nan), 1.0, 31)
    recording.add_arm_state(START_NS + 2, action_to_matrix(_action(1)), _action(1)[6], 0)
    episode = read_episode(recording.commit("failed", False, "arm error 31"))
    actions = episode.stream("arm_action")
    assert np.isnan(actions[:2]).all()
    np.testing.assert_allclose(actions[2], _action(1))
    np.testing.assert_array_equal(episode.stream("arm_error"), [0, 31, 0])


def test_plan_action_images_go_to_disk_as_plans_arrive(tmp_path, plans):
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    file = recording.temp_dir / "stream_plan_action_images.npy"
    recording.add_plan(plans[0])
    recording.add_plan(plans[1])
    assert file.stat().st_size == 128 + 2 * plans[0].action_images.size  # header + 2 plans
    recording.abort()
    assert not recording.temp_dir.exists()


def test_plans_shaped_unlike_the_first_are_kept_out_of_the_streams_and_counted(tmp_path, plans):
    short = plans[1]
    short = dataclasses.replace(
        short,
        waypoints=short.waypoints.after(int(short.waypoints.times_ns[1])),
        decoded=dataclasses.replace(short.decoded, actions=short.decoded.actions[2:]),
        action_images=short.action_images[2:],
    )
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    recording.add_frames(_images(0), START_NS, action_to_matrix(_action(0)), 1.0)
    recording.add_plan(plans[0])
    recording.add_plan(short)
    recording.add_plan(plans[1])
    episode = read_episode(recording.commit("ended", None), verify=True)
    assert episode.stream("plan_action_images").shape == (2, 5, 2, 64, 64, 3)
    assert episode.stream("plan_times_ns").shape == (2, 5)
    assert [p["stream_index"] for p in episode.metadata["plans"]] == [0, None, 1]
    assert episode.metadata["plans_not_in_streams"] == 1


def test_a_task_without_plans_commands_or_arm_states_has_empty_streams(tmp_path):
    recording = TaskRecording(tmp_path, "", "reach_cube", CAMERAS)
    recording.add_frames(_images(0), START_NS, action_to_matrix(_action(0)), 1.0)
    episode = read_episode(recording.commit("stopped", None, "stopped by the operator"))
    shapes = {name: episode.stream(name).shape for name in episode.stream_names}
    assert shapes["plan_action_images"] == (0, 0, 0, 0, 0, 3)
    assert shapes["plan_actions"] == (0, 0, 7) and shapes["command_action"] == (0, 7)
    assert shapes["arm_time_ns"] == (0,) and len(shapes) == 12


def test_committing_without_frames_returns_none_and_leaves_nothing(tmp_path, plans):
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    recording.add_plan(plans[0])
    recording.add_commands(_commands(0, 5, 0))
    assert recording.commit("failed", False, "no camera frames") is None
    assert list(tmp_path.iterdir()) == []


def test_calls_after_the_end_are_ignored_and_a_second_commit_is_refused(tmp_path, plans):
    recording = _record(tmp_path, plans)
    path = recording.commit("succeeded", True)
    assert not recording.add_frames(_images(9), START_NS + 10**10, np.eye(4), 1.0)
    recording.add_arm_state(START_NS + 10**10, np.eye(4), 1.0, 0)
    recording.add_plan(plans[0])
    recording.add_event(_events()[0])
    with pytest.raises(RuntimeError, match="already committed"):
        recording.commit("succeeded", True)
    read_episode(path, verify=True)
    assert list_episodes(tmp_path) == [path]


def test_bad_commit_arguments_leave_the_recording_open(tmp_path, plans):
    recording = _record(tmp_path, plans)
    with pytest.raises(ValueError, match="written by the recorder"):
        recording.commit("succeeded", True, metadata={"outcome": "mine"})
    with pytest.raises(ValueError, match="outcome"):
        recording.commit("", True)
    with pytest.raises(ValueError, match="JSON"):
        recording.commit("succeeded", True, metadata={"nan": float("nan")})
    assert recording.commit("succeeded", True) is not None
    with pytest.raises(ValueError, match="written by the recorder"):
        TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS, {"plans": []})


def test_threads_may_record_at_once(tmp_path, plans):
    recording = TaskRecording(tmp_path, INSTRUCTION, "reach_cube", CAMERAS)
    pose = action_to_matrix(_action(0))

    def frames() -> None:
        for t in range(40):
            recording.add_frames(_images(t % 3), START_NS + t * FRAME_NS, pose, 1.0)

    def arm() -> None:
        for t in range(400):
            recording.add_arm_state(START_NS + t, pose, 1.0, 0)

    def commands() -> None:
        for k in range(20):
            recording.add_commands(_commands(10 * k, 10, segment=0))

    def planner() -> None:
        for _ in range(10):
            recording.add_plan(plans[0])
            recording.add_event(_events()[0])

    threads = [threading.Thread(target=f) for f in (frames, arm, commands, planner)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    episode = read_episode(recording.commit("succeeded", True), verify=True)
    assert episode.num_frames == 40 and episode.stream("arm_time_ns").shape == (400,)
    assert episode.stream("command_time_ns").shape == (200,)
    assert episode.stream("plan_action_images").shape[0] == 10
    assert len(episode.metadata["safety_events"]) == 10


_KILLED_RECORDER = """
import os, signal, sys, time
from pathlib import Path
import numpy as np
from aimg.episodes import writer
from aimg.geometry import action_to_matrix
from aimg.robot.sim.cameras import default_camera_specs
from aimg.runtime.safety import Command, SafetyEvent
from aimg.runtime.task_recording import TaskRecording

root, when = Path(sys.argv[1]), sys.argv[2]
cameras = {spec.name: spec.camera(128, 128) for spec in default_camera_specs(2)}
pose = action_to_matrix(np.array([0.35, 0.0, 0.25, np.pi, 0.0, 0.0, 1.0]))
images = {view: np.full((128, 128, 3), 90, np.uint8) for view in cameras}

def record(t0):
    recording = TaskRecording(root, "reach", "reach_cube", cameras)
    for t in range(5):
        recording.add_frames(images, t0 + t, pose, 1.0)
        recording.add_arm_state(t0 + t, pose, 1.0, 0)
    recording.add_commands([Command(t0 + k, pose, 1.0, 0) for k in range(50)])
    recording.add_event(SafetyEvent(t0, "clamp_speed", "clamp", "clamped"))
    return recording

record(0).commit("succeeded", True)
recording = record(100)
if when == "mid-commit":  # die after some stream files are written, before meta.json
    add_stream, calls = writer.EpisodeWriter.add_stream, []
    def dying_add_stream(self, name, array):
        calls.append(name)
        if len(calls) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
        add_stream(self, name, array)
    writer.EpisodeWriter.add_stream = dying_add_stream
    recording.commit("succeeded", True)
print("recording", flush=True)
t = 200
while True:  # mid-task: frames keep coming until the parent kills this process
    recording.add_frames(images, t, pose, 1.0)
    t += 1
    time.sleep(0.002)
"""


@pytest.mark.parametrize("when", ["mid-task", "mid-commit"])
def test_a_killed_recorder_loses_no_committed_episode_and_publishes_no_half_one(tmp_path, when):
    script = textwrap.dedent(_KILLED_RECORDER)
    process = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path), when],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if when == "mid-task":
            assert process.stdout.readline() == "recording\n", process.stderr.read()
            os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=120) == -signal.SIGKILL, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()

    first = tmp_path / "episode_000000"
    assert list_episodes(tmp_path) == [first]
    episode = read_episode(first, verify=True)
    assert episode.num_frames == 5 and episode.stream("command_time_ns").shape == (50,)
    leftovers = [path for path in tmp_path.iterdir() if path != first]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".episode_next.tmp-")
    assert any(leftovers[0].glob("frames_*.npy"))
    # the daemon's next start
    assert remove_stale_temp_dirs(tmp_path) == leftovers
    recording = TaskRecording(tmp_path, "reach", "reach_cube", CAMERAS)
    recording.add_frames(_images(0), 0, np.eye(4), 1.0)
    assert recording.commit("succeeded", True) == tmp_path / "episode_000001"


def test_a_recorded_task_renders_with_sim_show_and_feeds_the_training_loader(tmp_path, plans):
    from aimg.robot.sim.show import contact_sheet
    from aimg.training.config import DataConfig
    from aimg.training.dataset import EpisodeClipDataset, find_episodes, frame_rate

    path = _record(tmp_path / "episodes", plans).commit("succeeded", True)
    sheet = contact_sheet(path, tmp_path / "sheet.png", columns=4, scale=1)
    assert Image.open(sheet).size[0] == 4 * 128

    episodes = find_episodes([tmp_path / "episodes"])
    assert episodes == [path] and frame_rate(episodes) == pytest.approx(10.0)
    config = DataConfig(roots=[tmp_path / "episodes"], stride=2, views=["left", "right"])
    item = EpisodeClipDataset(episodes, config, 5, 32, 32)[(0, 1)]
    assert item["video"].shape == (2, 3, 5, 32, 32) and item["poses"].shape == (5, 7)
    assert item["instruction"] in (INSTRUCTION, "")
