"""`aimg ctl` as a user runs it (the console script, a subprocess) against a real daemon."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from urllib.parse import unquote

import pytest
from daemon_fixtures import AIMG, TASK_END_TIMEOUT_S, run_daemon

from aimg.runtime.daemon_bench import free_port


def needs_daemon(test):
    """Marks a test that talks to the module's real daemon (slow; one daemon at a time)."""
    return pytest.mark.slow(pytest.mark.xdist_group("cell")(test))


def ctl(
    *args: str, url: str, token_file: str, timeout: float = TASK_END_TIMEOUT_S
) -> subprocess.CompletedProcess:
    """Run `aimg ctl ARGS` with the daemon's address and token file from the environment."""
    env = {**os.environ, "AIMG_URL": url, "AIMG_TOKEN_FILE": token_file}
    env.pop("AIMG_TOKEN", None)
    return subprocess.run(
        [str(AIMG), "ctl", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with run_daemon(tmp_path_factory.mktemp("ctl-daemon")) as running:
        yield running


@pytest.fixture
def idle(daemon):
    """The module's daemon, brought back to idle before the test."""
    daemon.make_idle()
    return daemon


def run(daemon, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return ctl(*args, url=daemon.url, token_file=str(daemon.token_file), **kwargs)


def test_an_unreachable_daemon_exits_2_and_says_how_to_start_one(tmp_path):
    result = ctl("status", url=f"http://127.0.0.1:{free_port()}", token_file=str(tmp_path / "t"))
    assert result.returncode == 2
    assert "not reachable" in result.stderr
    assert "aimg daemon --config configs/cell-sim.yaml" in result.stderr


def test_a_missing_token_file_exits_2_and_names_it(tmp_path):
    absent = tmp_path / "absent"
    result = ctl("stop", url=f"http://127.0.0.1:{free_port()}", token_file=str(absent))
    assert result.returncode == 2
    assert str(absent) in result.stderr


@needs_daemon
def test_status_summarises_state_arm_and_processes(idle):
    result = run(idle, "status")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("daemon   idle")
    assert any(line.startswith("arm ") and " mm" in line for line in lines)
    assert any(line.startswith("procs ") and "servo up" in line for line in lines)


@needs_daemon
def test_status_json_is_the_daemons_status_object(idle):
    result = run(idle, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["state"] == "idle"
    assert set(status["processes"]) == {"camera", "servo", "planner"}


@needs_daemon
def test_page_prints_the_address_with_the_token_in_the_fragment(idle):
    result = run(idle, "page")
    assert result.returncode == 0, result.stderr
    address, _, token = result.stdout.strip().partition("#token=")
    assert address == idle.url + "/"
    assert unquote(token) == idle.token


@needs_daemon
def test_a_wrong_token_exits_1_with_the_daemons_detail(idle, tmp_path):
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token\n")
    result = ctl("estop", url=idle.url, token_file=str(wrong))
    assert result.returncode == 1
    assert "401" in result.stderr and "wrong token" in result.stderr
    assert idle.status()["state"] == "idle"


@needs_daemon
def test_start_runs_a_task_and_stop_ends_it_as_stopped(idle):
    result = run(idle, "start", "reach the red cube", "--max-duration", "120")
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.split()[0]
    assert task_id.startswith("task-")
    assert idle.status()["task"]["id"] == task_id

    result = run(idle, "stop")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"stopped {task_id}"
    status = idle.wait_for(
        lambda s: (s["last_task"] or {}).get("id") == task_id, TASK_END_TIMEOUT_S, "the task to end"
    )
    assert status["last_task"]["outcome"] == "stopped"


@needs_daemon
def test_start_wait_prints_the_outcome_and_exits_3_unless_it_succeeded(idle):
    result = run(idle, "start", "reach the red cube", "--max-duration", "2", "--wait", timeout=180)
    printed = result.stdout.splitlines()[-1]
    task_id = printed.split()[0]
    # `--wait` returns when the task ends; the status names it as last_task a moment later.
    status = idle.wait_for(
        lambda s: s["last_task"] is not None and s["last_task"]["id"] == task_id,
        TASK_END_TIMEOUT_S,
        f"{task_id} recorded as the last task",
    )
    task = status["last_task"]
    assert result.returncode == (0 if task["success"] else 3), result.stderr
    assert printed.startswith(f'{task["id"]} "reach the red cube" ')
    assert task["outcome"] in result.stdout


#: Ctrl-C reached `aimg ctl` in these tests under plain pytest but not in children of a
#: pytest-xdist worker (CI), for a reason not yet found; they run with `pytest` alone.
needs_plain_pytest = pytest.mark.skipif(
    "PYTEST_XDIST_WORKER" in os.environ,
    reason="SIGINT to a child of an xdist worker did not arrive in CI; run without -n",
)


def _default_sigint() -> None:
    """xdist workers ignore SIGINT and children inherit that: give `aimg ctl` a terminal's."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@needs_plain_pytest
@needs_daemon
def test_deadman_keeps_the_task_alive_and_ctrl_c_stops_it(idle):
    env = {**os.environ, "AIMG_URL": idle.url, "AIMG_TOKEN_FILE": str(idle.token_file)}
    command = [str(AIMG), "ctl", "start", "reach the red cube", "--deadman", "1.0"]
    command += ["--max-duration", "120"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, text=True, preexec_fn=_default_sigint
    )
    try:
        status = idle.wait_for(
            lambda s: s["task"] is not None and s["task"]["elapsed_s"] > 3.0,
            60.0,
            "a dead-man task to outlive its interval several times",
        )
        assert status["state"] == "running"
        task_id = status["task"]["id"]
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=TASK_END_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert f"interrupted: stopped {task_id}" in out
    status = idle.wait_for(
        lambda s: (s["last_task"] or {}).get("id") == task_id, TASK_END_TIMEOUT_S, "the task to end"
    )
    assert status["last_task"]["outcome"] == "stopped"


@needs_daemon
def test_estop_holds_start_is_refused_and_reset_returns_to_idle(idle):
    result = run(idle, "estop")
    assert result.returncode == 0, result.stderr
    assert idle.status()["state"] == "estopped"

    refused = run(idle, "start", "reach the red cube")
    assert refused.returncode == 1
    assert "409" in refused.stderr

    result = run(idle, "reset")
    assert result.returncode == 0, result.stderr
    idle.wait_for(lambda s: s["state"] == "idle", 60.0, "idle after reset")


@needs_plain_pytest
@needs_daemon
def test_watch_shows_live_status_and_exits_cleanly_on_ctrl_c(idle):
    env = {**os.environ, "AIMG_URL": idle.url, "AIMG_TOKEN_FILE": str(idle.token_file)}
    process = subprocess.Popen(
        [str(AIMG), "ctl", "watch"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
        text=True,
    )  # fmt: skip
    time.sleep(4.0)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "daemon   idle" in out
