"""The daemon under faults: the planner killed mid-task, SIGTERM mid-motion, kill -9 mid-task.

Real daemons (sim cell, bundled model) in subprocesses; see tests/daemon_fixtures.py.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from daemon_fixtures import TASK_END_TIMEOUT_S, run_daemon, start_daemon

from aimg.episodes import list_episodes, read_episode, remove_stale_temp_dirs
from aimg.episodes.schema import TEMP_DIR_RE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cell")]

PLAN_TIMEOUT_S = 240.0


def _planning(daemon, plans: int = 1) -> dict:
    return daemon.wait_for(
        lambda s: s["task"] is not None and s["task"]["plans"] >= plans,
        PLAN_TIMEOUT_S,
        f"{plans} plan(s)",
    )


def _speed_mm_s(daemon, seconds: float = 0.5) -> float:
    a = daemon.status()["arm"]["position_m"]
    time.sleep(seconds)
    b = daemon.status()["arm"]["position_m"]
    return 1000.0 * float(np.linalg.norm(np.subtract(a, b))) / seconds


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited; its parent just has not reaped it
        return f.read().split(")")[-1].split()[0] != "Z"


def _temp_dirs(root) -> list:
    return [p for p in root.iterdir() if TEMP_DIR_RE.match(p.name)] if root.is_dir() else []


def test_a_killed_planner_stops_the_task_says_why_and_comes_back(tmp_path):
    with run_daemon(tmp_path, {"tasks.max_duration_s": 300}) as daemon:
        assert daemon.post("/tasks", {"instruction": "reach the red cube"}).status_code == 202
        status = _planning(daemon)
        planner = status["processes"]["planner"]
        os.kill(planner["pid"], signal.SIGKILL)

        ended = daemon.wait_for(lambda s: s["task"] is None, TASK_END_TIMEOUT_S, "the task to end")
        last = ended["last_task"]
        assert last["outcome"] == "failed"
        assert "planner process died (killed by signal 9)" in last["reason"]
        assert "planner process died" in (ended["last_error"] or "")
        assert _speed_mm_s(daemon) < 2.0  # the arm holds

        back = daemon.wait_for(
            lambda s: (
                s["processes"]["planner"]["state"] == "ready" and s["processes"]["planner"]["alive"]
            ),
            PLAN_TIMEOUT_S,
            "the planner to restart",
        )
        assert back["processes"]["planner"]["restarts"] == 1
        assert back["processes"]["planner"]["pid"] != planner["pid"]
        episode = read_episode(last["episode"], verify=True)  # the failed task is recorded
        assert episode.metadata["outcome"] == "failed"

        # The cell takes the next task with the new planner.
        assert daemon.post("/tasks", {"instruction": "reach the blue cube"}).status_code == 202
        _planning(daemon)
        daemon.post("/stop")
        daemon.wait_for(lambda s: s["task"] is None, TASK_END_TIMEOUT_S, "the second task to end")
        events = [line.get("event") for line in daemon.log_lines()]
        assert "planner died" in events and "planner restarted" in events


def test_sigterm_mid_motion_stops_the_arm_commits_the_episode_and_exits_cleanly(tmp_path):
    daemon = start_daemon(tmp_path, {"tasks.max_duration_s": 300})
    try:
        assert daemon.post("/tasks", {"instruction": "reach the red cube"}).status_code == 202
        status = _planning(daemon, plans=2)
        children = [p["pid"] for p in status["processes"].values()]
        daemon.process.send_signal(signal.SIGTERM)
        code = daemon.process.wait(TASK_END_TIMEOUT_S)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    assert code == 0, daemon.log_tail()
    lines = daemon.log_lines()
    events = [line.get("event") for line in lines]
    assert "shutting down" in events and "daemon stopped" in events
    shutdown = events.index("shutting down")
    ended = next(line for line in lines if line.get("event") == "task ended")
    assert ended["outcome"] == "interrupted" and "SIGTERM" in ended["reason"]
    assert events.index("task ended") > shutdown
    episode = read_episode(ended["episode"], verify=True)
    assert episode.metadata["outcome"] == "interrupted"
    # After the stop request the servo loop sent no command that moves on: the last commands
    # come to rest (every command is in the episode).
    times = episode.stream("command_time_ns")
    actions = episode.stream("command_action")
    tail = actions[times >= times[-1] - 200_000_000]  # the last 0.2 s
    assert np.linalg.norm(tail[-1, :3] - tail[-2, :3]) < 1e-3
    assert not _temp_dirs(daemon.episodes)
    alive = [pid for pid in children if _alive(pid)]
    assert not alive, f"camera / servo / planner processes outlived the daemon: {alive}"


def test_kill_9_mid_task_loses_no_committed_episode_and_leaves_no_half_written_one(tmp_path):
    episodes = tmp_path / "episodes"
    with run_daemon(tmp_path / "first", {"tasks.max_duration_s": 300}, episodes) as daemon:
        assert daemon.post("/tasks", {"instruction": "reach the red cube"}).status_code == 202
        _planning(daemon)
        daemon.post("/stop")
        committed = daemon.wait_for(
            lambda s: s["task"] is None, TASK_END_TIMEOUT_S, "the task to end"
        )
    first = committed["last_task"]["episode"]
    assert [str(p) for p in list_episodes(episodes)] == [first]

    daemon = start_daemon(tmp_path / "second", {"tasks.max_duration_s": 300}, episodes)
    try:
        assert daemon.post("/tasks", {"instruction": "reach the red cube"}).status_code == 202
        _planning(daemon)
        daemon.wait_for(lambda s: len(_temp_dirs(episodes)) == 1, 30.0, "the episode in progress")
        daemon.process.kill()
        daemon.process.wait(30)
    finally:
        if daemon.process.poll() is None:
            daemon.process.kill()
    # The committed episode is intact; the one in progress is not listed, only hidden.
    assert [str(p) for p in list_episodes(episodes)] == [first]
    read_episode(first, verify=True)
    assert len(_temp_dirs(episodes)) == 1
    # What the next start does (Controller._clean_recordings): the dead writer's directory goes.
    assert len(remove_stale_temp_dirs(episodes)) == 1
    assert not _temp_dirs(episodes)
    assert [str(p) for p in list_episodes(episodes)] == [first]
