"""`ServoProcess`: the arm's fixed-rate servo loop in a dedicated process.

The planner and the cameras never block the arm: the loop runs alone in its own (spawned)
process at `rate_hz` on an absolute schedule, samples the executing `Trajectory`, passes every
target through the `SafetyFilter` and commands the arm. The client talks to it without waiting:

- client -> loop: a `multiprocessing.Queue` of small tuples, drained by the loop once per tick
  (`put` returns at once: a feeder thread does the pickling and writing):
  `("submit", Waypoints)`, `("hold", reason)`, `("pause", reason)`, `("estop", reason)`,
  `("reset",)`,
  `("heartbeat", frame_age_s | None, planner_ok | None, sent_ns)`,
  `("tick_delay", seconds, ticks)` (a test hook that makes ticks slow), `("stop",)`.
  Of several submits waiting at one tick, only the newest is joined.
- loop -> client: a seqlocked shared-memory status block (`state()`), shared-memory rings of
  per-tick timing (`stats()`) and of every command sent to the arm (`commands()`), and a queue
  of `SafetyEvent`s (`events()`). No lock is shared, so neither side can stall the other.

The loop connects the arm, clears errors and enables it, asks for real-time scheduling
(SCHED_FIFO, else a lower nice value, else a warning; `state().realtime` says what it got) and
then, each tick: drains the inbox, reads the arm, samples the trajectory at now (+ lead), filters
and commands. An arm error holds and stops commanding until `reset()`; any exception stops the
arm softly and ends the process with a reason the client reads in `state().exit_reason`. The
loop also ends (stopping the arm) when the client process dies.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import json
import logging
import math
import multiprocessing
import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.sharedctypes import RawArray
from typing import Any

import numpy as np

from aimg.robot.interfaces import Arm, ArmErrorCode
from aimg.robot.remote import RemoteArm, ServerAddress
from aimg.runtime.safety import Command, Health, SafetyEvent, SafetyFilter, SafetyLimits
from aimg.runtime.trajectory import Trajectory, join
from aimg.runtime.waypoints import GRIPPER_RAMP_S, Waypoints

log = logging.getLogger(__name__)

MODES = ("starting", "idle", "tracking", "holding", "paused", "estopped", "error", "stopped")
MIN_RATE_HZ, MAX_RATE_HZ = 50.0, 250.0
#: Sleep until this long before a tick, then spin: wake-up latency of a sleeping thread is
#: tens of microseconds with SCHED_FIFO and up to ~1 ms without.
SPIN_NS = 500_000
#: The servo process's GIL switch interval (Python's default is 5 ms).
GIL_SWITCH_S = 1e-4
GC_EVERY_TICKS = 256
STATS_CAPACITY = 1 << 15
COMMAND_CAPACITY = 1 << 16
_TEXT_BYTES = 4096

# Status block layout: int64 slots, then float64 slots.
_I_SEQ, _I_TICK, _I_MODE, _I_PLAN, _I_OVERRUNS, _I_CONSECUTIVE = range(6)
_I_ERROR, _I_STATE_NS, _I_LOOP_NS, _I_COMMAND_NS, _I_SEGMENT, _I_COMMANDS = range(6, 12)
_I_STATS, _I_PHASE, _I_START_NS, _I_MISSED, _I_PLANS = range(12, 17)
_N_INTS = 17
_F_POSE, _F_GRIPPER, _F_COMMAND, _F_COMMAND_GRIPPER = 0, 16, 17, 33
_F_SEAM_POSITION, _F_SEAM_VELOCITY = 34, 35
_N_FLOATS = 36
_PHASE_STARTING, _PHASE_RUNNING, _PHASE_EXITED = 0, 1, 2


@dataclass(frozen=True)
class ServoState:
    """The loop's latest published status (poses [4, 4] TCP-to-base, metres).

    mode: one of MODES; realtime: the scheduling the loop obtained; exit_reason: why the loop
    ended ("" while it runs); alive: whether the process is running.
    """

    time_ns: int
    tick: int
    mode: str
    tool_pose: np.ndarray
    gripper: float
    error_code: int
    command_pose: np.ndarray
    command_gripper: float
    plan_id: int
    overruns: int
    consecutive_overruns: int
    missed_ticks: int
    plans: int
    state_time_ns: int
    command_time_ns: int
    segment: int
    seam_position_jump_m: float
    seam_velocity_jump_m_s: float
    realtime: str
    exit_reason: str
    alive: bool

    @property
    def error_name(self) -> str:
        try:
            return ArmErrorCode(self.error_code).name
        except ValueError:
            return f"C{self.error_code}"


class _Shared:
    """The shared-memory blocks (created by the client, handed to the loop at spawn)."""

    def __init__(self, log_commands: bool) -> None:
        self.ints = RawArray("q", _N_INTS)
        self.floats = RawArray("d", _N_FLOATS)
        self.text = RawArray("c", _TEXT_BYTES)
        self.timing = RawArray("q", 2 * STATS_CAPACITY)
        capacity = COMMAND_CAPACITY if log_commands else 1
        self.command_ints = RawArray("q", 2 * capacity)
        self.command_floats = RawArray("d", 17 * capacity)
        self.command_capacity = capacity

    def views(self) -> None:
        self.i = np.frombuffer(self.ints, dtype=np.int64)
        self.f = np.frombuffer(self.floats, dtype=np.float64)
        self.timing_view = np.frombuffer(self.timing, dtype=np.int64).reshape(-1, 2)
        self.cmd_i = np.frombuffer(self.command_ints, dtype=np.int64).reshape(-1, 2)
        self.cmd_f = np.frombuffer(self.command_floats, dtype=np.float64).reshape(-1, 17)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k in _PICKLED}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


_PICKLED = (
    "ints",
    "floats",
    "text",
    "timing",
    "command_ints",
    "command_floats",
    "command_capacity",
)


@dataclass(frozen=True)
class _Config:
    arm_factory: Callable[[], Arm]
    limits: SafetyLimits
    rate_hz: float
    realtime: bool
    cpu: int | None
    priority: int
    log_commands: bool
    command_lead_s: float
    blend_s: float
    gripper_follows_arm: bool = True
    gripper_ramp_s: float | None = GRIPPER_RAMP_S


def connect_remote_arm(address: ServerAddress, name: str = "arm") -> Arm:
    """An arm factory for an arm served by another process (`spawn_server(..., listen=True)`):
    `functools.partial(connect_remote_arm, channel.address)` opens the servo loop's own
    connection, so it never queues behind the camera process's calls."""
    return RemoteArm(address.connect(), name)


def connect_xarm(config: Any) -> Arm:
    """An arm factory for an xArm through its SDK (`aimg.robot.xarm.XArm`), for the servo
    process, which must own the SDK (it sets a process-wide socket timeout). The SDK prints to
    stdout; here stdout goes to stderr, so `aimg run`'s JSON on stdout stays clean."""
    import sys

    from aimg.robot.xarm.arm import XArm

    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return XArm(config)


# -- the loop (servo process side) -------------------------------------------------------------


def _threads() -> set[int]:
    """Thread ids of this process (Linux /proc; empty elsewhere)."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return set()


def _make_realtime(priority: int, cpu: int | None, arm_threads: set[int]) -> str:
    """Ask for SCHED_FIFO at `priority`, else nice -10; pin to `cpu`. Returns what was got.

    `arm_threads` (those the arm started on connect: an SDK's report thread, the simulator's
    physics thread) get SCHED_FIFO one level below the loop: the loop waits on their locks and
    on the GIL they hold, so leaving them preemptible by the planner would be priority
    inversion. A short GIL switch interval bounds how long such a thread holds up the loop.
    """
    got = []
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
            got.append(f"cpu {cpu}")
        except (OSError, AttributeError, ValueError) as exc:
            got.append(f"cpu {cpu} refused ({exc})")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        fifo_error = exc
    else:
        helpers = 0
        for tid in sorted(arm_threads - {threading.get_native_id()}):
            with contextlib.suppress(OSError):
                os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(max(1, priority - 1)))
                helpers += 1
        sys.setswitchinterval(GIL_SWITCH_S)
        got.insert(0, f"SCHED_FIFO {priority} (+{helpers} arm threads at {max(1, priority - 1)})")
        return ", ".join(got)
    try:
        os.nice(-10)
        got.insert(0, f"nice {os.nice(0)} (SCHED_FIFO refused: {fifo_error})")
    except OSError as exc:
        log.warning("servo loop runs without real-time priority: %s; %s", fifo_error, exc)
        got.insert(0, f"none (SCHED_FIFO refused: {fifo_error}; nice refused: {exc})")
    return ", ".join(got)


def _wait_until(deadline_ns: int) -> None:
    """Sleep until SPIN_NS before `deadline_ns`, then spin to it."""
    remaining = deadline_ns - time.monotonic_ns()
    if remaining > SPIN_NS:
        time.sleep((remaining - SPIN_NS) * 1e-9)
    while time.monotonic_ns() < deadline_ns:
        pass


class _ServoLoop:
    """Everything the servo process does; runs only in that process."""

    def __init__(self, cfg: _Config, shared: _Shared, inbox, outbox) -> None:
        self.cfg = cfg
        self.shared = shared
        shared.views()
        self.inbox, self.outbox = inbox, outbox
        self.period_ns = round(1e9 / cfg.rate_hz)
        self.lead_ns = round(cfg.command_lead_s * 1e9)
        self.filter = SafetyFilter(cfg.limits, cfg.rate_hz)
        self.arm: Arm | None = None
        self.traj: Trajectory | None = None
        self.held = False
        self.paused = False
        self.stop_requested = False
        self.plan_id = 0
        self.plan_ns: int | None = None
        self.planner_ok_ns: int | None = None
        self.frame_age: tuple[float, int] | None = None
        self.delay: tuple[float, int] = (0.0, 0)
        self.tick = 0
        self.overruns = 0
        self.consecutive = 0
        self.missed = 0
        self.plans = 0
        self.segment = 0
        self.commands = 0
        self.stats = 0
        self.seam = (0.0, 0.0)
        self.info: dict[str, str] = {"realtime": "", "exit_reason": ""}
        self.last_state = None
        self.last_command: tuple[int, np.ndarray, float] | None = None
        self.gripper_sent: tuple[int, float] | None = None

    # -- publishing ---------------------------------------------------------------------------

    def emit(self, event: SafetyEvent) -> None:
        self.outbox.put(event)

    def publish(self, now_ns: int, mode: str, phase: int = _PHASE_RUNNING) -> None:
        """Write the status block under the seqlock (odd sequence = being written)."""
        sh = self.shared
        i, f = sh.i, sh.f
        i[_I_SEQ] += 1
        i[_I_TICK], i[_I_MODE], i[_I_PLAN] = self.tick, MODES.index(mode), self.plan_id
        i[_I_OVERRUNS], i[_I_CONSECUTIVE] = self.overruns, self.consecutive
        i[_I_MISSED], i[_I_PLANS] = self.missed, self.plans
        i[_I_LOOP_NS], i[_I_SEGMENT], i[_I_PHASE] = now_ns, self.segment, phase
        i[_I_COMMANDS], i[_I_STATS] = self.commands, self.stats
        state = self.last_state
        if state is not None:
            f[_F_POSE:_F_GRIPPER] = np.asarray(state.tool_pose, dtype=np.float64).ravel()
            f[_F_GRIPPER] = state.gripper
            i[_I_ERROR], i[_I_STATE_NS] = state.error_code, state.timestamp_ns
        if self.last_command is not None:
            t_ns, pose, gripper = self.last_command
            f[_F_COMMAND:_F_COMMAND_GRIPPER] = pose.ravel()
            f[_F_COMMAND_GRIPPER] = gripper
            i[_I_COMMAND_NS] = t_ns
        f[_F_SEAM_POSITION], f[_F_SEAM_VELOCITY] = self.seam
        i[_I_SEQ] += 1

    def publish_text(self) -> None:
        data = json.dumps(self.info).encode()[: _TEXT_BYTES - 1]
        i = self.shared.i
        i[_I_SEQ] += 1
        self.shared.text[: len(data)] = data
        self.shared.text[len(data)] = b"\0"
        i[_I_SEQ] += 1

    def record_command(self, now_ns: int, pose: np.ndarray, gripper: float) -> None:
        self.last_command = (now_ns, pose, gripper)
        if not self.cfg.log_commands:
            return
        sh = self.shared
        slot = self.commands % sh.command_capacity
        sh.cmd_i[slot] = (now_ns, self.segment)
        sh.cmd_f[slot, :16] = pose.ravel()
        sh.cmd_f[slot, 16] = gripper
        self.commands += 1
        sh.i[_I_COMMANDS] = self.commands

    def record_timing(self, late_ns: int, work_ns: int) -> None:
        sh = self.shared
        sh.timing_view[self.stats % STATS_CAPACITY] = (late_ns, work_ns)
        self.stats += 1
        sh.i[_I_STATS] = self.stats

    # -- messages ------------------------------------------------------------------------------

    def drain(self, now_ns: int) -> None:
        newest: Waypoints | None = None
        while True:
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                break
            kind = message[0]
            if kind == "submit":
                newest = message[1]
            elif kind == "hold":
                newest = None
                self.hold(f"client asked to hold: {message[1]}", now_ns)
            elif kind == "estop":
                newest = None
                self.estop(message[1], now_ns)
            elif kind == "reset":
                self.reset(now_ns)
            elif kind == "pause":
                newest = None
                self.traj = None
                self.paused = True
                self.emit(SafetyEvent(now_ns, "pause", "hold", f"paused: {message[1]}"))
            elif kind == "heartbeat":
                _, frame_age_s, planner_ok, _sent_ns = message
                if frame_age_s is not None:
                    self.frame_age = (float(frame_age_s), now_ns)
                if planner_ok:
                    self.planner_ok_ns = now_ns
            elif kind == "tick_delay":
                self.delay = (float(message[1]), int(message[2]))
            elif kind == "stop":
                self.stop_requested = True
        if newest is not None:
            self.submit(newest, now_ns)

    def submit(self, waypoints: Waypoints, now_ns: int) -> None:
        at_ns = now_ns + self.lead_ns
        if self.filter.estopped or self.filter.faulted or self.paused:
            why = (
                "estopped"
                if self.filter.estopped
                else "the arm is in error"
                if self.filter.faulted
                else "paused until reset"
            )
            self.emit(
                SafetyEvent(now_ns, "plan_ignored", "info", f"plan {waypoints.plan_id}: {why}")
            )
            return
        if len(waypoints) and not np.all(waypoints.finite):
            bad = np.flatnonzero(~waypoints.finite).tolist()
            self.hold_event(
                "reject_nonfinite",
                f"plan {waypoints.plan_id} has non-finite waypoints {bad}: rejected, holding",
                now_ns,
            )
            return
        if not np.any(waypoints.times_ns > at_ns):
            self.emit(
                SafetyEvent(
                    now_ns,
                    "stale_plan",
                    "info",
                    f"plan {waypoints.plan_id} ends before now: dropped (keeps executing)",
                )
            )
            return
        current = self.traj
        if current is None:
            previous = self.filter.previous
            if previous is None:
                pose, gripper = self.last_state.tool_pose, self.last_state.gripper
            else:
                pose, gripper = previous
            current = Trajectory.hold(pose, gripper, at_ns)
        ramp_s = self.cfg.gripper_ramp_s
        ramp_ns = None if ramp_s is None else round(ramp_s * 1e9)
        self.traj = join(current, waypoints, at_ns, self.cfg.blend_s, ramp_ns)
        seam = self.traj.seam
        self.seam = (seam.position_jump_m, seam.velocity_jump_m_s)
        self.plan_id = waypoints.plan_id
        self.plan_ns = now_ns
        self.planner_ok_ns = now_ns
        self.plans += 1
        self.held = False

    def hold(self, message: str, now_ns: int) -> None:
        self.hold_event("hold", message, now_ns)

    def hold_event(self, kind: str, message: str, now_ns: int) -> None:
        self.traj = None
        self.held = True
        self.emit(SafetyEvent(now_ns, kind, "hold", message))

    def estop(self, reason: str, now_ns: int) -> None:
        self.traj = None
        self.emit(self.filter.estop(reason, now_ns))
        self.arm.emergency_stop()

    def reset(self, now_ns: int) -> None:
        self.traj = None
        self.held = True
        self.paused = False
        self.arm.clear_errors()
        try:
            self.arm.enable()
        except Exception as exc:  # still in error: stay latched, say why
            self.emit(SafetyEvent(now_ns, "arm_error", "hold", f"reset failed: {exc}"))
            return
        self.emit(self.filter.reset(now_ns))
        self.segment += 1

    # -- the loop ------------------------------------------------------------------------------

    def health(self, now_ns: int, error_code: int) -> Health:
        active = self.traj is not None

        def age(t_ns: int | None) -> float | None:
            return None if t_ns is None or not active else (now_ns - t_ns) * 1e-9

        frame_age = None
        if self.frame_age is not None and active:
            frame_age = self.frame_age[0] + (now_ns - self.frame_age[1]) * 1e-9
        return Health(
            frame_age_s=frame_age,
            plan_age_s=age(self.plan_ns),
            planner_silence_s=age(self.planner_ok_ns),
            arm_error=error_code,
            consecutive_overruns=self.consecutive,
        )

    def step(self, now_ns: int) -> str:
        """One tick after the schedule woke us; returns the mode."""
        self.drain(now_ns)
        arm = self.arm
        state = arm.read_state()
        self.last_state = state
        if self.stop_requested:
            return "stopped"
        if self.paused:  # nothing is sent until reset(), which restarts from the measured pose
            return "paused"
        target = gripper = confidence = None
        t_ns = now_ns + self.lead_ns
        if self.traj is not None:
            target, gripper = self.traj.sample(t_ns)
            confidence = self.traj.confidence(t_ns)
            gripper = self.gripper_where_the_arm_is(gripper, t_ns)
        was_faulted = self.filter.faulted
        decision = self.filter.filter(
            target, gripper, confidence, state, now_ns, self.health(now_ns, state.error_code)
        )
        for event in decision.events:
            self.emit(event)
        if self.filter.faulted and not was_faulted:
            self.traj = None
            self.held = True
        if decision.mode == "hold" and set(decision.hold_reasons) - {"no_target"}:
            if self.traj is not None:
                self.held = True
            self.traj = None
        if decision.mode == "estop":
            return "estopped"
        if self.filter.faulted:
            return "error"
        previous = self.last_command
        arm.servo(decision.pose)
        if self.gripper_sent != (self.segment, decision.gripper):  # one round trip less
            arm.set_gripper(decision.gripper)
            self.gripper_sent = (self.segment, decision.gripper)
        self.record_command(now_ns, decision.pose, decision.gripper)
        if decision.mode == "move" and self.traj is not None:
            # still on the plan, or still catching up with its end
            moved = previous is None or not np.array_equal(previous[1], decision.pose)
            if t_ns < self.traj.end_ns or moved or previous[2] != decision.gripper:
                return "tracking"
        if self.traj is not None or self.held:
            return "holding"
        return "idle"

    def gripper_where_the_arm_is(self, planned: float, t_ns: int) -> float:
        """The plan's gripper at the arm's progress along it, not at the clock's.

        The safety filter can keep the arm up to about a second behind the plan (speed and
        acceleration limits), while the plan closes the hand at a time it expects the tool at
        the object: taken from the clock, the hand shuts above the cube. While the plan's
        gripper differs from the last command (a step or a ramp), this finds where along the
        path the commanded tool is and takes the gripper from there (`Trajectory.progress_ns`,
        about 400 path samples in one vectorised call; nothing while the gripper holds still).
        """
        last = self.last_command
        if not self.cfg.gripper_follows_arm or last is None:
            return planned
        if planned == last[2]:  # nothing to change; a ramp differs by a little every tick
            return planned
        return self.traj.gripper(self.traj.progress_ns(last[1][:3, 3], t_ns))

    def warm_up(self) -> None:
        """Run a tick's code paths once on a dummy plan: lazy imports and caches happen now,
        not in the first real tick, and their objects get frozen with the rest."""
        pose = np.asarray(self.last_state.tool_pose, dtype=np.float64)
        k = 4
        dummy = Waypoints(
            np.arange(1, k + 1, dtype=np.int64) * 100_000_000,
            np.repeat(pose[None, :3, 3], k, axis=0),
            np.repeat(pose[None, :3, :3], k, axis=0),
            np.ones(k),
            np.ones(k),
        )
        traj = join(Trajectory.hold(pose, 1.0, 0), dummy, 0, self.cfg.blend_s)
        traj.sample(50_000_000)
        traj.velocity(50_000_000)
        traj.confidence(50_000_000)
        traj.progress_ns(pose[:3, 3], 50_000_000)
        scratch = SafetyFilter(self.cfg.limits, self.cfg.rate_hz)
        scratch.filter(pose, 1.0, 1.0, self.last_state, 0, Health(plan_age_s=0.0))

    def start_arm(self) -> None:
        self.arm = self.cfg.arm_factory()
        self.arm.connect()
        state = self.arm.read_state()
        if state.error_code:
            self.arm.clear_errors()
        if state.error_code or not state.enabled:
            self.arm.enable()
        self.last_state = self.arm.read_state()

    def run(self) -> None:
        cfg = self.cfg
        self.publish(time.monotonic_ns(), "starting", _PHASE_STARTING)
        before = _threads()
        self.start_arm()
        arm_threads = _threads() - before
        realtime = _make_realtime(cfg.priority, cfg.cpu, arm_threads) if cfg.realtime else "off"
        self.info["realtime"] = realtime
        self.publish_text()
        self.emit(SafetyEvent(time.monotonic_ns(), "servo_started", "info", realtime))
        self.warm_up()
        # Automatic collections could start in any thread at any time (a full one took 12 ms
        # here); instead freeze what exists and collect the rest after ticks, where it is cheap.
        gc.collect()
        gc.freeze()
        gc.disable()
        parent = multiprocessing.parent_process()
        period = self.period_ns
        start = time.monotonic_ns() + period
        k = 0
        self.shared.i[_I_START_NS] = start
        mode = "idle"
        self.publish(time.monotonic_ns(), mode)
        while True:
            scheduled = start + k * period
            _wait_until(scheduled)
            now = time.monotonic_ns()
            late = now - scheduled
            if late > period:
                self.overruns += 1
                self.consecutive += 1
                skipped = late // period
                self.missed += skipped
                k += skipped
                if self.consecutive == 1 or self.consecutive == cfg.limits.max_consecutive_overruns:
                    self.emit(
                        SafetyEvent(
                            now,
                            "overrun",
                            "info",
                            f"tick started {late / 1e6:.2f} ms late (period "
                            f"{period / 1e6:.2f} ms); {self.consecutive} in a row",
                        )
                    )
            else:
                self.consecutive = 0
            mode = self.step(now)
            if self.delay[1] > 0:
                time.sleep(self.delay[0])
                self.delay = (self.delay[0], self.delay[1] - 1)
            self.tick += 1
            self.record_timing(late, time.monotonic_ns() - now)
            self.publish(now, mode)
            if mode == "stopped":
                return
            if self.tick % 64 == 0 and parent is not None and not parent.is_alive():
                self.info["exit_reason"] = "the client process died: arm stopped"
                return
            if self.tick % GC_EVERY_TICKS == 0:
                gc.collect()  # ~0.1 ms once the startup objects are frozen
            k += 1

    def shutdown(self) -> None:
        """Stop the arm softly and disconnect (errors here are reported, not raised)."""
        if self.arm is None:
            return
        for call in (self.arm.stop, self.arm.disconnect):
            try:
                call()
            except Exception as exc:
                if not self.info["exit_reason"]:
                    self.info["exit_reason"] = f"{call.__name__} failed: {exc}"


def _servo_main(cfg: _Config, shared: _Shared, inbox, outbox) -> None:
    """The servo process: run the loop; on any exception stop the arm and say why."""
    loop = _ServoLoop(cfg, shared, inbox, outbox)
    code = 0
    try:
        loop.run()
        loop.info["exit_reason"] = loop.info["exit_reason"] or "closed"
    except BaseException as exc:
        code = 1
        reason = f"{type(exc).__name__}: {exc}"
        loop.info["exit_reason"] = reason
        with contextlib.suppress(Exception):
            loop.emit(
                SafetyEvent(
                    time.monotonic_ns(),
                    "servo_failed",
                    "estop",
                    f"servo loop stopped: {reason}\n{traceback.format_exc()}",
                )
            )
    finally:
        loop.shutdown()
        mode = "stopped" if code == 0 else "error"
        with contextlib.suppress(Exception):
            loop.publish_text()
            loop.publish(time.monotonic_ns(), mode, _PHASE_EXITED)
        with contextlib.suppress(Exception):
            outbox.close()
            outbox.join_thread()  # the client drains events while it waits for the exit
    if code:
        sys.exit(code)


# -- the client ---------------------------------------------------------------------------------


def _percentiles(values_ns: np.ndarray) -> dict[str, float]:
    if len(values_ns) == 0:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ms = values_ns.astype(np.float64) / 1e6
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": float(p50), "p99": float(p99), "max": float(ms.max())}


class ServoProcess:
    """The client of the servo loop: start it, feed it plans, read its state (never blocks).

    arm_factory: a picklable callable returning an unconnected `Arm` (built in the servo
    process, e.g. `functools.partial(SimArm, real_time=True)`); rate_hz: 50..250; realtime:
    ask for SCHED_FIFO `priority` (else nice -10); cpu: pin the loop to this core;
    log_commands: keep every command for `commands()`; command_lead_s: sample the trajectory
    this far ahead (arm latency compensation); blend_s: replanning blend (see `join`);
    gripper_follows_arm: the gripper changes where the plan changes it, when the arm gets
    there, not at the plan's time for it (see `_ServoLoop.gripper_where_the_arm_is`);
    gripper_ramp_s: the gripper ramps over at most this before a waypoint (`GRIPPER_RAMP_S`;
    None: the plan's frame spacing).
    """

    def __init__(
        self,
        arm_factory: Callable[[], Arm],
        limits: SafetyLimits,
        rate_hz: float = 100.0,
        realtime: bool = True,
        cpu: int | None = None,
        log_commands: bool = True,
        command_lead_s: float = 0.0,
        blend_s: float = 0.3,
        priority: int = 50,
        gripper_follows_arm: bool = True,
        gripper_ramp_s: float | None = GRIPPER_RAMP_S,
    ) -> None:
        if not (isinstance(rate_hz, (int, float)) and MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ):
            raise ValueError(
                f"rate_hz must be in [{MIN_RATE_HZ:.0f}, {MAX_RATE_HZ:.0f}] "
                f"(xArm servo mode accepts at most 250 Hz), got {rate_hz}"
            )
        if not (math.isfinite(command_lead_s) and 0.0 <= command_lead_s <= 1.0):
            raise ValueError(f"command_lead_s must be in [0, 1] s, got {command_lead_s}")
        if not (math.isfinite(blend_s) and blend_s > 0.0):
            raise ValueError(f"blend_s must be > 0 s, got {blend_s}")
        if gripper_ramp_s is not None and not (0.0 < gripper_ramp_s <= 5.0):
            raise ValueError(
                f"gripper_ramp_s must be in (0, 5] s (about the hand's time to shut) or None "
                f"(the plan's frame spacing), got {gripper_ramp_s}"
            )
        if cpu is not None and cpu not in os.sched_getaffinity(0):
            raise ValueError(f"cpu {cpu} is not available here: {sorted(os.sched_getaffinity(0))}")
        self.config = _Config(
            arm_factory=arm_factory,
            limits=limits,
            rate_hz=float(rate_hz),
            realtime=realtime,
            cpu=cpu,
            priority=int(priority),
            log_commands=log_commands,
            command_lead_s=float(command_lead_s),
            blend_s=float(blend_s),
            gripper_follows_arm=bool(gripper_follows_arm),
            gripper_ramp_s=None if gripper_ramp_s is None else float(gripper_ramp_s),
        )
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.Process | None = None
        self._shared: _Shared | None = None
        self._inbox = self._outbox = None
        self._commands: list[Command] = []
        self._commands_read = 0
        self._commands_dropped = 0
        self._pending_events: list[SafetyEvent] = []
        self._atexit: Callable[[], None] | None = None

    @property
    def rate_hz(self) -> float:
        return self.config.rate_hz

    @property
    def limits(self) -> SafetyLimits:
        return self.config.limits

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.is_alive()

    def start(self, timeout_s: float = 60.0) -> ServoProcess:
        """Spawn the loop and wait until it runs (the arm connected); raises if it failed."""
        if self._process is not None:
            raise RuntimeError("this ServoProcess was already started")
        self._shared = _Shared(self.config.log_commands)
        self._shared.views()
        self._inbox = self._context.Queue()
        self._outbox = self._context.Queue()
        self._process = self._context.Process(
            target=_servo_main,
            args=(self.config, self._shared, self._inbox, self._outbox),
            name="aimg-servo",
            daemon=False,  # an arm factory may start its own device server process
        )
        self._process.start()
        self._atexit = functools.partial(ServoProcess.close, self)
        atexit.register(self._atexit)
        deadline = time.monotonic() + timeout_s
        while True:
            phase = int(self._shared.i[_I_PHASE])
            if phase == _PHASE_RUNNING and self._shared.i[_I_START_NS]:
                return self
            if phase == _PHASE_EXITED or not self._process.is_alive():
                self._process.join(5.0)
                reason = self._read_text().get("exit_reason") or (
                    f"exit code {self._process.exitcode}"
                )
                self.close()
                raise RuntimeError(f"the servo loop failed to start: {reason}")
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError(f"the servo loop did not start within {timeout_s} s")
            time.sleep(0.01)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loop (the arm stops softly and disconnects) and join the process."""
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None
        process = self._process
        if process is None:
            return
        if process.is_alive():
            with contextlib.suppress(Exception):
                self._inbox.put(("stop",))
            deadline = time.monotonic() + timeout_s
            while process.is_alive() and time.monotonic() < deadline:
                process.join(0.05)
                self._pending_events.extend(self._drain_events())
            if process.is_alive():
                log.error("servo loop did not stop within %s s: terminating it", timeout_s)
                process.terminate()
                process.join(timeout_s)
        for q in (self._inbox, self._outbox):
            with contextlib.suppress(Exception):
                q.cancel_join_thread()
                q.close()

    def __enter__(self) -> ServoProcess:
        return self.start() if self._process is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- messages ------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        if self._process is None:
            raise RuntimeError("start() the ServoProcess before sending it anything")
        if not self._process.is_alive():
            reason = self._read_text().get("exit_reason") or f"exit code {self._process.exitcode}"
            raise RuntimeError(f"the servo loop is not running: {reason}")
        self._inbox.put(message)

    def submit(self, waypoints: Waypoints) -> None:
        """Execute `waypoints` from the next tick on, joined to what is executing now."""
        self._send(("submit", waypoints))

    def hold(self, reason: str) -> None:
        """Drop the plan and come to rest (decelerating within the limits)."""
        self._send(("hold", str(reason)))

    def estop(self, reason: str) -> None:
        """Emergency stop: latches (the arm's emergency_stop) until `reset()`."""
        self._send(("estop", str(reason)))

    def pause(self, reason: str) -> None:
        """Stop sending commands at all until `reset()` (e.g. while a simulator teleports the
        arm to a new start pose); the arm holds by itself in servo mode."""
        self._send(("pause", reason))

    def reset(self) -> None:
        """Clear the estop / arm-error latch: clear_errors + enable, then hold where it is."""
        self._send(("reset",))

    def heartbeat(self, frame_age_s: float | None = None, planner_ok: bool | None = None) -> None:
        """Feed the health checks: age of the newest camera frame, the planner is alive."""
        self._send(("heartbeat", frame_age_s, planner_ok, time.monotonic_ns()))

    def inject_tick_delay(self, delay_s: float, ticks: int = 1) -> None:
        """Test hook: make the next `ticks` ticks take `delay_s` longer (forces overruns)."""
        self._send(("tick_delay", float(delay_s), int(ticks)))

    # -- reading -------------------------------------------------------------------------------

    def _read_text(self) -> dict[str, str]:
        raw = bytes(self._shared.text).split(b"\0", 1)[0]
        try:
            return json.loads(raw.decode()) if raw else {}
        except (ValueError, UnicodeDecodeError):
            return {}

    def _snapshot(self) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
        """A consistent copy of the status block (retries while the loop writes it)."""
        sh = self._shared
        for _ in range(10_000):
            before = int(sh.i[_I_SEQ])
            if before % 2 == 0:
                ints, floats, text = sh.i.copy(), sh.f.copy(), bytes(sh.text)
                if int(sh.i[_I_SEQ]) == before:
                    raw = text.split(b"\0", 1)[0]
                    info = json.loads(raw.decode()) if raw else {}
                    return ints, floats, info
            time.sleep(0)
        raise RuntimeError("could not read a consistent servo status (loop writing constantly?)")

    def state(self) -> ServoState:
        """The latest status the loop published."""
        if self._shared is None:
            raise RuntimeError("start() the ServoProcess first")
        ints, floats, info = self._snapshot()
        return ServoState(
            time_ns=int(ints[_I_LOOP_NS]),
            tick=int(ints[_I_TICK]),
            mode=MODES[int(ints[_I_MODE])],
            tool_pose=floats[_F_POSE:_F_GRIPPER].reshape(4, 4).copy(),
            gripper=float(floats[_F_GRIPPER]),
            error_code=int(ints[_I_ERROR]),
            command_pose=floats[_F_COMMAND:_F_COMMAND_GRIPPER].reshape(4, 4).copy(),
            command_gripper=float(floats[_F_COMMAND_GRIPPER]),
            plan_id=int(ints[_I_PLAN]),
            overruns=int(ints[_I_OVERRUNS]),
            consecutive_overruns=int(ints[_I_CONSECUTIVE]),
            missed_ticks=int(ints[_I_MISSED]),
            plans=int(ints[_I_PLANS]),
            state_time_ns=int(ints[_I_STATE_NS]),
            command_time_ns=int(ints[_I_COMMAND_NS]),
            segment=int(ints[_I_SEGMENT]),
            seam_position_jump_m=float(floats[_F_SEAM_POSITION]),
            seam_velocity_jump_m_s=float(floats[_F_SEAM_VELOCITY]),
            realtime=info.get("realtime", ""),
            exit_reason=info.get("exit_reason", ""),
            alive=self.alive,
        )

    def events(self) -> list[SafetyEvent]:
        """Safety events since the last call, oldest first."""
        out, self._pending_events = self._pending_events, []
        return out + self._drain_events()

    def _drain_events(self) -> list[SafetyEvent]:
        out: list[SafetyEvent] = []
        if self._outbox is None:
            return out
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except (queue.Empty, OSError, ValueError, EOFError):
                return out

    def commands(self) -> list[Command]:
        """Every command sent to the arm so far (needs log_commands), oldest first.

        The loop keeps the last COMMAND_CAPACITY in shared memory; call this at least that
        often (11 min at 100 Hz) or `commands_dropped` counts the ones lost.
        """
        self._commands.extend(self.drain_commands())
        return list(self._commands)

    def drain_commands(self) -> list[Command]:
        """The commands sent since the last `drain_commands` or `commands` call, oldest first;
        unlike `commands()` it keeps nothing, so a long-running daemon does not grow."""
        if not self.config.log_commands or self._shared is None:
            return []
        sh = self._shared
        written = int(sh.i[_I_COMMANDS])
        first = max(self._commands_read, written - sh.command_capacity + 256)
        if first > self._commands_read:
            self._commands_dropped += first - self._commands_read
        new: list[Command] = []
        if written > first:
            slots = np.arange(first, written) % sh.command_capacity
            ints, floats = sh.cmd_i[slots].copy(), sh.cmd_f[slots].copy()
            new = [
                Command(int(t), f[:16].reshape(4, 4), float(f[16]), int(seg))
                for (t, seg), f in zip(ints, floats, strict=True)
            ]
        self._commands_read = max(written, self._commands_read)
        return new

    @property
    def commands_dropped(self) -> int:
        return self._commands_dropped

    def stats(self, window_s: float | None = None) -> dict[str, Any]:
        """Timing of the loop: jitter (tick start minus its scheduled time) and tick work time
        in ms (p50 / p99 / max over the last `window_s` seconds of ticks, at most the last
        STATS_CAPACITY), overruns (ticks that started more than one period late, since the
        start), missed periods and counts."""
        if self._shared is None:
            raise RuntimeError("start() the ServoProcess first")
        sh = self._shared
        written = int(sh.i[_I_STATS])
        n = min(written, STATS_CAPACITY - 64)
        if window_s is not None:
            n = min(n, max(1, round(window_s * self.config.rate_hz)))
        slots = np.arange(written - n, written) % STATS_CAPACITY
        samples = sh.timing_view[slots].copy()
        ints, _, info = self._snapshot()
        return {
            "rate_hz": self.config.rate_hz,
            "period_ms": 1e3 / self.config.rate_hz,
            "ticks": int(ints[_I_TICK]),
            "samples": int(n),
            "jitter_ms": _percentiles(samples[:, 0]),
            "work_ms": _percentiles(samples[:, 1]),
            "overruns": int(ints[_I_OVERRUNS]),
            "missed_ticks": int(ints[_I_MISSED]),
            "commands": int(ints[_I_COMMANDS]),
            "realtime": info.get("realtime", ""),
        }
