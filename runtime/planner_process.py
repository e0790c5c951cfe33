"""The planner in its own process, so the daemon outlives it.

The model is the part of the cell most likely to fail (a CUDA error, an out-of-memory, a
corrupt engine, a bug in a new backend) and the heaviest to hold. `PlannerProcess` runs a
`Policy` in a spawned server (`aimg.robot.remote.spawn_server`) and offers the same `plan()` as
`Policy`, so the `Scheduler` cannot tell the difference. When the process dies mid-plan,
`plan()` raises `PlannerDied` at once (the pipe closes) and the daemon stops the task and
starts a new process; nothing of the daemon's state lives in the planner.

Observations travel by pipe (pickled arrays: 2 x 128 x 128 x 3 B in the simulator, ~2 MB for two
640 x 480 RealSense frames, well under a millisecond either way next to a plan's 100s of ms).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aimg.robot.remote import Channel, RemoteError, spawn_server
from aimg.runtime.waypoints import Waypoints


@dataclass(frozen=True)
class DecodedSummary:
    """The decoded actions of a plan, [T, 7] (`DecodedActions.actions`)."""

    actions: np.ndarray


@dataclass
class PlanSummary:
    """A `Policy` plan as the daemon receives it: what the scheduler, the episode and the live
    page use, in types that unpickle without torch (the daemon process never imports it).

    Same fields as `aimg.runtime.policy.Plan` minus the model observation; `decoded` keeps only
    the actions.
    """

    waypoints: Waypoints
    observation_ns: int
    ready_ns: int
    action_images: np.ndarray
    decoded: DecodedSummary
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def latency_s(self) -> float:
        """Capture -> plan ready."""
        return (self.ready_ns - self.observation_ns) / 1e9


class PlannerDied(RuntimeError):
    """The planner process exited (crash, kill, out of memory) while or before planning."""


class PlannerServer:
    """Lives in the planner process: holds the backend and answers `plan` calls."""

    exposed_methods = frozenset({"plan", "info"})

    def __init__(self, model: Path, backend: str, threads: int) -> None:
        from aimg.runtime.backends import load
        from aimg.runtime.policy import Policy

        self.policy = Policy(load(model, backend, threads=threads))

    def info(self) -> dict[str, Any]:
        backend = self.policy.backend
        return {
            "spec": dataclasses.asdict(self.policy.spec),  # plain: unpickles without torch
            "dt_s": self.policy.dt_s,
            "views": self.policy.views,
            "backend": getattr(backend, "name", type(backend).__name__),
            "frames": backend.model_config.frames,
            "config": backend.config,
        }

    def plan(self, *args: Any, **kwargs: Any) -> PlanSummary:
        plan = self.policy.plan(*args, **kwargs)
        return PlanSummary(
            plan.waypoints,
            plan.observation_ns,
            plan.ready_ns,
            np.asarray(plan.action_images, dtype=np.float32),
            DecodedSummary(np.asarray(plan.decoded.actions, dtype=np.float64)),
            _plain_timings(plan.timings),
        )


def _plain_timings(timings: Mapping[str, Any]) -> dict[str, Any]:
    """Seconds as Python floats (lists of them for per-step timings)."""
    out: dict[str, Any] = {}
    for key, value in timings.items():
        if isinstance(value, (list, tuple, np.ndarray)):
            out[key] = [float(v) for v in value]
        elif isinstance(value, (int, float, np.number)):
            out[key] = float(value)
        else:
            out[key] = value
    return out


def _planner_devices(model: Path, backend: str, threads: int) -> dict[str, object]:
    # Before torch loads: its OpenMP pool otherwise keeps a second busy thread even with
    # torch.set_num_threads(1), and on a small robot computer that core belongs to the cell.
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(name, str(threads))
    return {"planner": PlannerServer(model, backend, threads)}


class PlannerProcess:
    """A `Policy` in a child process: `start()`, `plan(...)`, `restart()`, `close()`.

    `info` (spec, dt_s, views, backend name) is read once the model has loaded. Thread-safe:
    one plan at a time; `restart()` may be called from another thread while nothing plans.
    """

    def __init__(self, model: Path, backend: str = "auto", threads: int = 1) -> None:
        self.model, self.backend_name, self.threads = Path(model), backend, threads
        self._channel: Channel | None = None
        self._lock = threading.Lock()
        self.info: dict[str, Any] = {}
        self.restarts = 0
        self.state = "stopped"  # stopped | loading | ready | dead
        self.load_s: float | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PlannerProcess:
        """Spawn the process and wait until the model has loaded (raises what loading raised)."""
        self.state = "loading"
        t0 = time.monotonic()
        factory = functools.partial(_planner_devices, self.model, self.backend_name, self.threads)
        channel = spawn_server(factory)
        try:
            info = channel.call("planner", "info")  # answered once the model is built
        except Exception as exc:
            channel.close(timeout_s=2.0)
            self.state = "dead"
            raise PlannerDied(f"the planner process failed to load {self.model}: {exc}") from exc
        with self._lock:
            self._channel, self.info = channel, info
        self.load_s = time.monotonic() - t0
        self.state = "ready"
        return self

    def restart(self) -> PlannerProcess:
        """A fresh process (the old one is closed or already gone)."""
        self.close()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close(timeout_s=5.0)
        self.state = "stopped"

    @property
    def process(self) -> Any:
        channel = self._channel
        return channel.process if channel is not None else None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        channel = self._channel
        return channel is not None and channel.server_alive

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode if self.process is not None else None

    # -- what the scheduler uses -----------------------------------------------------------

    @property
    def spec(self) -> Any:
        """The model's `InputSpec` fields (views, height, width, ...) as attributes."""
        return types.SimpleNamespace(**self.info["spec"])

    @property
    def dt_s(self) -> float:
        return float(self.info["dt_s"])

    def plan(self, *args: Any, **kwargs: Any) -> PlanSummary:
        """`Policy.plan` (same arguments) in the planner process; raises `PlannerDied` if it
        is gone."""
        channel = self._channel
        if channel is None or not channel.server_alive:
            raise PlannerDied(self.death_reason())
        try:
            return channel.call("planner", "plan", *args, **kwargs)
        except RemoteError as exc:
            if isinstance(exc.__cause__, (EOFError, OSError)):  # the pipe closed: it died
                if channel.process is not None:
                    channel.process.join(2.0)  # reap it, so its exit code says how it died
                self.state = "dead"
                raise PlannerDied(self.death_reason()) from exc
            raise

    def death_reason(self) -> str:
        code = self.exitcode
        if code is None:
            return "the planner process is not running"
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"the planner process died ({how})"
