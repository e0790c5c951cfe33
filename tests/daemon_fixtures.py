"""Start a real `aimg daemon` (sim cell, bundled model) in a subprocess for tests.

    with run_daemon(tmp_path, {"tasks.max_duration_s": 300}) as daemon:
        daemon.post("/tasks", {"instruction": "reach the red cube"})
        daemon.status()["state"]

Every test that needs a daemon goes through here, so they all start it the same way: its own
port, token file and episodes directory, JSON logs captured to `daemon.log_path`, and a stop
that sends SIGTERM and waits (then kills what is left, never leaving a cell running).
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from aimg.runtime.daemon_bench import spawn_daemon, wait_healthy

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The `aimg` console script of the interpreter running the tests (what a user runs).
AIMG = Path(sys.executable).with_name("aimg")
TOKEN = "test-token-0123456789abcdef"
#: The model loads in ~10 s on a quiet 2-core machine; under a loaded CI worker much longer.
START_TIMEOUT_S = 240.0
#: A stop holds the arm at once, but the task record closes (episode committed) only when the
#: plan in flight returns; on a CI worker whose other core exports models that took 90 s.
TASK_END_TIMEOUT_S = 300.0
#: The cell for tests: cameras rendered at the model's own 64 px (a quarter of the renderer's
#: work) at 5 fps, so on a 2-core CI machine, whose other core runs other tests, the planner
#: keeps enough CPU to plan faster than its 3.2 s horizon and the arm really moves.
CHEAP_CELL = {
    "model.path": str(REPO_ROOT / "assets" / "sim-tiny"),
    "devices.sim.image_size": 64,
    "rates.camera_fps": 5,
}


@dataclass
class Daemon:
    process: subprocess.Popen
    url: str
    token: str
    episodes: Path
    log_path: Path
    token_file: Path
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def post(self, path: str, body: Any = None, token: str | None = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return self.client.post(path, json=body, headers=headers)

    def status(self) -> dict[str, Any]:
        response = self.client.get("/status")
        response.raise_for_status()
        return response.json()

    def wait_for(self, predicate: Any, timeout_s: float, what: str, period_s: float = 0.2) -> dict:
        """Poll /status until `predicate(status)` holds; fails with the last status and log."""
        deadline = time.monotonic() + timeout_s
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = self.status()
            if predicate(status):
                return status
            time.sleep(period_s)
        raise AssertionError(
            f"timed out after {timeout_s} s waiting for {what}; last status:\n"
            f"{json.dumps(status, indent=1)[:3000]}\nlog tail:\n{self.log_tail()}"
        )

    def make_idle(self, timeout_s: float = TASK_END_TIMEOUT_S) -> dict[str, Any]:
        """Stop any task, reset an e-stop or fault, and wait for `idle`."""
        status = self.status()
        if status["task"] is not None:
            self.post("/stop")
            status = self.wait_for(lambda s: s["task"] is None, timeout_s, "the task to end")
        if status["state"] in ("estopped", "fault"):
            self.post("/reset").raise_for_status()
        return self.wait_for(lambda s: s["state"] == "idle", timeout_s, "idle")

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    lines.append(record)
        return lines

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def stop(self, timeout_s: float = TASK_END_TIMEOUT_S) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
                raise
        return self.process.returncode


def start_daemon(
    tmp: Path, overrides: dict[str, Any] | None = None, episodes: Path | None = None
) -> Daemon:
    """A daemon on a free loopback port, ready (GET /health 200) when this returns;
    `overrides` are cell-config keys (`{"tasks.max_duration_s": 300}`, passed as --set)."""
    config = REPO_ROOT / "configs" / "cell-sim.yaml"
    overrides = {**CHEAP_CELL, **(overrides or {})}
    episodes = episodes or tmp / "episodes"
    process, url, log_path = spawn_daemon(config, tmp, TOKEN, overrides, episodes, REPO_ROOT)
    daemon = Daemon(process, url, TOKEN, episodes, log_path, tmp / "token")
    try:
        wait_healthy(process, url, log_path, START_TIMEOUT_S)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(str(exc)) from exc
    return daemon


@contextlib.contextmanager
def run_daemon(
    tmp: Path, overrides: dict[str, Any] | None = None, episodes: Path | None = None
) -> Iterator[Daemon]:
    """`start_daemon`, stopped (SIGTERM, then kill) when the block ends."""
    daemon = start_daemon(tmp, overrides, episodes)
    try:
        yield daemon
    finally:
        with contextlib.suppress(Exception):
            daemon.stop()
        if daemon.process.poll() is None:
            daemon.process.kill()
