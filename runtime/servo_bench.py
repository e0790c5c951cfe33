"""`bench_servo_jitter`: how punctual the servo loop is, alone or beside a busy planner.

The loop drives the real simulated xArm along a circle that is replanned twice a second, the
way the planner feeds it. The arm is either `arm="server"`: the simulator in its own device
server (`spawn_server(make_sim_devices, listen=True)`, as the runtime shares it with the
cameras) at real-time priority just below the loop, standing in for a real arm's controller,
which is separate hardware that no planner slows down; or `arm="process"`: a `SimArm` inside
the servo process, its physics thread competing with the loop for the GIL. With load
"planner", another process runs the sim-tiny checkpoint's torch backend flat out on one thread
(whole plans: encode, denoise, decode), the CPU pressure a deployed planner puts on the
machine. Jitter is a tick's start minus its scheduled time.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from aimg.robot.remote import spawn_server
from aimg.robot.sim.devices import SimArm, make_sim_devices
from aimg.robot.sim.world import top_down_pose
from aimg.runtime.safety import SafetyLimits, check_commands
from aimg.runtime.servo import GIL_SWITCH_S, ServoProcess, connect_remote_arm
from aimg.runtime.waypoints import Waypoints

LOADS = ("none", "planner")
ARMS = ("server", "process")
DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "sim-tiny"
CENTRE = np.array([0.38, 0.0, 0.25])
RADIUS_M = 0.06
PERIOD_S = 4.0


def circle_plan(t0_ns: int, horizon_s: float = 1.0, step_s: float = 0.1, plan_id: int = 0):
    """Waypoints on a horizontal circle (radius 6 cm, 4 s a turn: ~0.09 m/s), from t0 on."""
    times = t0_ns + np.round(np.arange(0.0, horizon_s + 1e-9, step_s) * 1e9).astype(np.int64)
    phase = 2.0 * math.pi * (times * 1e-9 % PERIOD_S) / PERIOD_S
    positions = CENTRE + RADIUS_M * np.stack(
        [np.cos(phase), np.sin(phase), np.zeros_like(phase)], axis=1
    )
    rotations = np.stack(
        [
            top_down_pose(p, yaw=0.3 * math.sin(a))[:3, :3]
            for p, a in zip(positions, phase, strict=True)
        ]
    )
    k = len(times)
    return Waypoints(
        times, positions, rotations, np.ones(k), np.ones(k), plan_id=plan_id, source="bench"
    )


def _planner_load(checkpoint: str, ready, stop, plans) -> None:
    """Plan with the torch backend on one thread until `stop` is set."""
    import torch

    from aimg.observation import synthetic_observation
    from aimg.runtime.backends import load

    torch.set_num_threads(1)
    backend = load(checkpoint, "torch", threads=1)
    obs = synthetic_observation(backend.spec)
    backend.plan(obs, "reach the red cube", seed=0)  # warm-up (caches, allocator)
    ready.set()
    seed = 1
    while not stop.is_set():
        backend.plan(obs, "reach the red cube", seed=seed)
        seed += 1
        with plans.get_lock():
            plans.value += 1


def realtime_sim_devices(**kwargs: Any) -> dict[str, Any]:
    """`make_sim_devices` with a short GIL switch interval (Python's default is 5 ms): the
    server's physics thread and the threads answering the servo loop share one GIL."""
    sys.setswitchinterval(GIL_SWITCH_S)
    return make_sim_devices(**kwargs)


def _raise_priority(pid: int, priority: int) -> str:
    """SCHED_FIFO `priority` for every thread of process `pid` (threads it starts inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        for tid in tids:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return f"normal (SCHED_FIFO refused: {exc})"
    return f"SCHED_FIFO {priority}"


def _wait_listening(path: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sim device server did not listen at {path} in {timeout_s} s")
        time.sleep(0.02)


def bench_servo_jitter(
    rate_hz: float,
    seconds: float,
    load: str = "none",
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    realtime: bool = True,
    cpu: int | None = None,
    arm: str = "server",
    priority: int = 50,
) -> dict[str, Any]:
    """Run the servo loop on the simulated arm for `seconds` and report its timing.

    Returns rate_hz, load, arm, realtime (what the loop obtained) and arm_priority, jitter_ms
    and work_ms (p50 / p99 / max over the measured window), overruns and missed ticks in the
    window, ticks, violations (of the commands sent, by `check_commands`: should be 0) and,
    with the planner load, plans_per_s.
    """
    if load not in LOADS:
        raise ValueError(f"load must be one of {list(LOADS)}, got {load!r}")
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {list(ARMS)}, got {arm!r}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    context = multiprocessing.get_context("spawn")
    planner = None
    stop, plans = context.Event(), context.Value("q", 0)
    if load == "planner":
        if not (Path(checkpoint) / "config.json").is_file():
            raise FileNotFoundError(f"no checkpoint at {checkpoint} (the planner load runs one)")
        ready = context.Event()
        planner = context.Process(
            target=_planner_load, args=(str(checkpoint), ready, stop, plans), daemon=True
        )
        planner.start()
        if not ready.wait(180.0):
            planner.terminate()
            raise TimeoutError("the planner load did not start within 180 s")
    limits = SafetyLimits()
    server = None
    arm_priority = "the servo loop's"
    try:
        if arm == "server":
            server = spawn_server(
                functools.partial(realtime_sim_devices, real_time=True, views=1), listen=True
            )
            _wait_listening(server.address.path)
            arm_priority = (
                _raise_priority(server._process.pid, max(1, priority - 1)) if realtime else "normal"
            )
            factory = functools.partial(connect_remote_arm, server.address)
        else:
            factory = functools.partial(SimArm, real_time=True)
        servo = ServoProcess(
            factory, limits, rate_hz=rate_hz, realtime=realtime, cpu=cpu, priority=priority
        )
        with servo:
            servo.submit(circle_plan(time.monotonic_ns(), plan_id=1))
            time.sleep(1.0)  # reach the circle; then measure
            first = servo.stats()
            plans_before = plans.value
            start = time.monotonic()
            plan_id = 2
            while time.monotonic() - start < seconds:
                servo.submit(circle_plan(time.monotonic_ns() + 50_000_000, plan_id=plan_id))
                plan_id += 1
                time.sleep(min(0.5, max(0.0, seconds - (time.monotonic() - start))))
            elapsed = time.monotonic() - start
            window = servo.stats(window_s=elapsed)
            commands = servo.commands()
            events = servo.events()
            state = servo.state()
    finally:
        if server is not None:
            server.close()
        stop.set()
        if planner is not None:
            planner.join(30.0)
            if planner.is_alive():
                planner.terminate()
    result: dict[str, Any] = {
        "rate_hz": float(rate_hz),
        "seconds": round(elapsed, 3),
        "load": load,
        "arm": arm,
        "realtime": window["realtime"],
        "arm_priority": arm_priority,
        "jitter_ms": window["jitter_ms"],
        "work_ms": window["work_ms"],
        "overruns": window["overruns"] - first["overruns"],
        "missed_ticks": window["missed_ticks"] - first["missed_ticks"],
        "ticks": window["samples"],
        "violations": len(check_commands(commands, limits, 1.0 / rate_hz)),
        "holds": sorted({e.kind for e in events if e.severity in ("hold", "estop")}),
        "final_mode": state.mode,
        "cpus": os.cpu_count(),
    }
    if load == "planner":
        result["plans_per_s"] = round((plans.value - plans_before) / elapsed, 3)
    return result
