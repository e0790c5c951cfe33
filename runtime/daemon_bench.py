"""`aimg bench daemon`: the daemon under a burst of API requests while a task runs.

Starts a real daemon (sim cell) in a subprocess, starts a task, waits for plans, then fires
`requests` GET /status calls from `clients` threads (kept-alive connections, like dashboards)
and reports request latency, the servo loop's tick jitter over the burst, plan latency, and how
long SIGTERM takes from the signal to the arm holding and to the process exiting. Prints JSON.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def spawn_daemon(
    config: Path,
    workdir: Path,
    token: str,
    overrides: dict[str, Any] | None = None,
    episodes: Path | None = None,
    cwd: Path | None = None,
) -> tuple[subprocess.Popen, str, Path]:
    """`aimg daemon` in a subprocess with its own port, token file, episodes dir and log
    (under `workdir`); returns (process, url, log path). `wait_healthy` waits for it."""
    workdir.mkdir(parents=True, exist_ok=True)
    token_file = workdir / "token"
    token_file.write_text(token + "\n")
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "aimg",
        "daemon",
        "--config",
        str(config),
        "--port",
        str(port),
        "--token-file",
        str(token_file),
        "--episodes-dir",
        str(episodes or workdir / "episodes"),
    ]
    for key, value in (overrides or {}).items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    log_path = workdir / "daemon.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    return process, f"http://127.0.0.1:{port}", log_path


def wait_healthy(process: subprocess.Popen, url: str, log_path: Path, timeout_s: float) -> None:
    """Block until GET /health answers 200; raise with the log's tail if the daemon exits."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise RuntimeError(f"the daemon exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    process.kill()
    raise TimeoutError(f"the daemon did not become healthy within {timeout_s:g} s")


def run_daemon_bench(
    config: Path, requests: int = 1000, clients: int = 16, plans: int = 3
) -> dict[str, Any]:
    import httpx

    token = os.urandom(16).hex()
    auth = {"Authorization": f"Bearer {token}"}
    workdir = Path(tempfile.mkdtemp(prefix="aimg-bench-daemon-"))
    overrides = {"tasks.max_duration_s": 600}
    process, url, log_path = spawn_daemon(config, workdir, token, overrides)
    try:
        started = time.monotonic()
        wait_healthy(process, url, log_path, 300.0)
        startup_s = time.monotonic() - started
        client = httpx.Client(base_url=url, timeout=60.0)
        task_started = time.monotonic()
        client.post("/tasks", json={"instruction": "reach the red cube"}, headers=auth)
        while client.get("/status").json()["task"]["plans"] < plans:
            time.sleep(0.2)
        # Keep the scene reset at the task start out of the 10 s jitter window.
        time.sleep(max(0.0, 10.5 - (time.monotonic() - task_started)))
        before = client.get("/status").json()
        local = threading.local()

        def fetch(_: int) -> float:
            if not hasattr(local, "client"):
                local.client = httpx.Client(base_url=url, timeout=60.0)
            t0 = time.perf_counter()
            code = local.client.get("/status").status_code
            return time.perf_counter() - t0 if code == 200 else float("nan")

        burst_started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            latencies = np.array(list(pool.map(fetch, range(requests))))
        burst_s = time.monotonic() - burst_started
        time.sleep(0.6)  # the next servo stats refresh covers the burst
        after = client.get("/status").json()
        signal_ns = time.time_ns()
        process.send_signal(signal.SIGTERM)
        code = process.wait(120)
        exit_s = (time.time_ns() - signal_ns) / 1e9
        hold_s = _first_log_time(log_path, "task stopping") - signal_ns / 1e9
        ok = latencies[np.isfinite(latencies)]
        return {
            "config": str(config),
            "startup_s": round(startup_s, 2),
            "requests": requests,
            "clients": clients,
            "answered_200": int(len(ok)),
            "burst_s": round(burst_s, 3),
            "requests_per_s": round(requests / burst_s, 1),
            "request_latency_ms": {
                "p50": round(float(np.percentile(ok, 50)) * 1e3, 2),
                "p99": round(float(np.percentile(ok, 99)) * 1e3, 2),
                "max": round(float(ok.max()) * 1e3, 2),
            },
            "servo_jitter_p99_ms": {
                "before_burst_10s": before["servo"]["jitter_ms_p99"],
                "window_with_burst_10s": after["servo"]["jitter_ms_p99"],
            },
            "servo_overruns": after["servo"]["overruns"],
            "servo_realtime": after["servo"]["realtime"],
            "plan_latency_s": after["latency_s"],
            "plans": after["task"]["plans"] if after["task"] else None,
            "sigterm_to_hold_s": round(hold_s, 4),
            "sigterm_to_exit_s": round(exit_s, 2),
            "exit_code": code,
        }
    finally:
        if process.poll() is None:
            process.kill()


def _first_log_time(log_path: Path, event: str) -> float:
    """Unix time of the first JSON log line with `event` (the daemon logs in UTC)."""
    import calendar

    for line in log_path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and record.get("event") == event:
                stamp, fraction = record["time"].rstrip("Z").split(".")
                parsed = time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")
                return calendar.timegm(parsed) + int(fraction) / 1000.0
    return float("nan")
