"""`XArm`: the `Arm` interface on a UFACTORY xArm through `xarm.wrapper.XArmAPI` (servo mode).

One process owns the SDK: `XArmAPI` calls `socket.setdefaulttimeout(1)`, which changes the
default timeout of every socket the process creates afterwards, and it runs its own report and
receive threads. Build `XArm` in the servo process (the runtime's `arm_factory`), never in a
process that also serves sockets (the emulator, the daemon's API).

What it does, and why:
- `connect()` opens the SDK with a deadline (a controller that accepts TCP but never answers
  would otherwise block the SDK for minutes) and says what to check when nothing answers; then
  runs the vendor recovery sequence and configures the firmware's own safety from `XArmConfig`
  (reduced-mode TCP boundary and TCP speed, collision sensitivity, TCP offset and load) and
  reads every value back from the report: a setting that did not take raises `ArmError`.
- `enable()` is the recovery sequence into servo mode: clean_error, clean_warn, motion_enable,
  set_mode(1), set_state(0), each return code checked; an `ArmError` names the failing step.
- `servo(pose)` streams a TCP pose with `set_servo_cartesian` (metres -> mm, rotation matrix ->
  extrinsic-xyz roll/pitch/yaw in radians, `is_radian=True`).
- `read_state()` returns the SDK's cached report values, stamped with the host
  `time.monotonic_ns()` at which that report arrived. A report older than `stale_report_s`
  reads as `ArmErrorCode.REPORT_STALE`, a lost connection as `CONNECTION_LOST`: the servo loop
  treats both as faults and holds.
- A dead-man watchdog thread holds the arm (`stop()`) when no servo command arrived for
  `deadman_s` while streaming. It protects against a stalled servo loop in this process; if the
  whole process dies, the firmware's servo mode is the remaining dead-man: it only ever moves
  to the last target it received and then stays there (the emulator does the same).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from aimg.geometry import euler_xyz_to_matrix, matrix_to_euler_xyz, pose_to_matrix
from aimg.optional import require
from aimg.robot.interfaces import Arm, ArmError, ArmErrorCode, ArmState
from aimg.robot.xarm.codes import error_meaning
from aimg.robot.xarm.protocol import GRIPPER_MAX_PULSES

#: `set_servo_cartesian` results that mean "the controller refused the target": its error or
#: stopped state is in the report, so `read_state()` tells the caller.
_REFUSED = (1, 9)
_SDK_CODES = {
    -1: "not connected",
    1: "controller has an error",
    2: "controller has a warning",
    3: "reply timeout",
    9: "arm not ready to move (stopped or not enabled)",
    102: "end effector has a fault",
}


@dataclass(frozen=True)
class XArmConfig:
    """How to reach the arm and the firmware safety to configure (metres, radians, seconds).

    boundary_low / boundary_high: reduced-mode TCP boundary in the base frame (None: reduced
    mode off, no boundary); max_tcp_speed: reduced-mode TCP speed (m/s); tcp_offset: TCP in the
    flange frame `[x, y, z, roll, pitch, yaw]` (the xArm Gripper's TCP is 0.172 m along z);
    tcp_load_kg / tcp_load_cog: payload mass and centre of gravity in the flange frame (m).
    """

    ip: str
    connect_timeout_s: float = 5.0
    use_uds: bool = False
    boundary_low: tuple[float, float, float] | None = (0.12, -0.5, -0.01)
    boundary_high: tuple[float, float, float] | None = (0.80, 0.5, 0.65)
    max_tcp_speed: float = 0.25
    collision_sensitivity: int = 3
    tcp_offset: tuple[float, float, float, float, float, float] = (0.0, 0.0, 0.172, 0, 0, 0)
    tcp_load_kg: float = 0.82
    tcp_load_cog: tuple[float, float, float] = (0.0, 0.0, 0.048)
    gripper: bool = True
    gripper_speed: int = 5000
    gripper_poll_s: float = 0.1
    deadman_s: float = 0.3
    stale_report_s: float = 0.5

    def __post_init__(self) -> None:
        if (self.boundary_low is None) != (self.boundary_high is None):
            raise ValueError("give both boundary_low and boundary_high, or neither")
        if self.boundary_low is not None and any(
            lo >= hi for lo, hi in zip(self.boundary_low, self.boundary_high, strict=True)
        ):
            raise ValueError(
                f"boundary_low {self.boundary_low} must be below boundary_high "
                f"{self.boundary_high} on every axis"
            )
        if not 0 <= self.collision_sensitivity <= 5:
            raise ValueError(f"collision_sensitivity is 0..5, got {self.collision_sensitivity}")
        if not 0.0 < self.max_tcp_speed <= 1.0:
            raise ValueError(f"max_tcp_speed must be in (0, 1] m/s, got {self.max_tcp_speed}")
        for name in ("connect_timeout_s", "deadman_s", "stale_report_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


@dataclass(frozen=True)
class _Report:
    """The SDK's cached report values at one report, with the host time it arrived."""

    host_ns: int
    position: tuple[float, ...]
    angles: tuple[float, ...]
    error: int
    warning: int
    state: int
    mode: int
    motors: tuple[int, ...]
    count: int


class XArm(Arm):
    """A real xArm (or the emulator) in servo mode. See the module docstring for the why.

    `deadman_trips` counts the holds the watchdog made; `gripper_fault` is set while the
    gripper reports a fault (cleared by `enable()`).
    """

    def __init__(self, config: XArmConfig | str) -> None:
        self.config = XArmConfig(config) if isinstance(config, str) else config
        self._api: Any = None
        self._report: _Report | None = None
        self._reports = 0
        self._lock = threading.RLock()  # serialises servo/stop decisions with the watchdog
        self._estopped = False
        self._streaming = False
        self._last_servo_ns = 0
        self._gripper = 1.0  # openness last read from the gripper (1 until the first read)
        self._gripper_sent: int | None = None  # the last target sent (pulses)
        self.gripper_fault = False
        self._watchdog: threading.Thread | None = None
        self._stop_watchdog = threading.Event()
        self.deadman_trips = 0

    # -- connection -----------------------------------------------------------------------------

    def connect(self) -> None:
        if self._api is not None:
            return
        wrapper = require("xarm.wrapper", "robot", package="xarm-python-sdk")
        cfg = self.config
        api = wrapper.XArmAPI(cfg.ip, is_radian=True, do_not_open=True, forbid_uds=not cfg.use_uds)
        api.register_report_callback(self._on_report)
        failure: list[BaseException] = []

        def open_sdk() -> None:
            try:
                api.connect()
            except BaseException as exc:  # reported below, in the caller's thread
                failure.append(exc)

        opener = threading.Thread(target=open_sdk, daemon=True, name="xarm-connect")
        opener.start()
        opener.join(cfg.connect_timeout_s)
        if opener.is_alive() or failure or not api.connected:
            with contextlib.suppress(Exception):
                api.disconnect()
            reason = (
                f"no answer within {cfg.connect_timeout_s:g} s"
                if opener.is_alive()
                else f"{failure[0] if failure else 'not connected'}"
            )
            raise ArmError(
                f"cannot connect to the xArm controller at {cfg.ip} ({reason}): check that the "
                f"control box is powered on and its emergency stop released, that this machine "
                f"reaches it (`ping {cfg.ip}`; same subnet, cable in the box's LAN port), that "
                "the IP is the one UFACTORY Studio shows, and that no other program (Studio, "
                "another aimg) holds the arm"
            )
        self._api = api
        try:
            self._wait_report(lambda r: True, cfg.connect_timeout_s, "a first state report")
            self._recover(mode=0)
            self._configure_safety()
        except BaseException:
            self._close_api()
            raise
        self._stop_watchdog.clear()
        self._watchdog = threading.Thread(target=self._watch, daemon=True, name="xarm-deadman")
        self._watchdog.start()

    def disconnect(self) -> None:
        if self._api is None:
            return
        if self._api.connected:
            with contextlib.suppress(Exception):
                self.stop()
        self._close_api()

    def _close_api(self) -> None:
        self._stop_watchdog.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=2.0)
        self._watchdog = None
        api, self._api = self._api, None
        self._report = None
        self._streaming = False
        if api is not None:
            with contextlib.suppress(Exception):
                api.disconnect()

    @property
    def is_connected(self) -> bool:
        return self._api is not None and bool(self._api.connected)

    def _require(self) -> Any:
        if self._api is None:
            raise ArmError("XArm is not connected: call connect() (or use `with arm:`)")
        if not self._api.connected:
            raise ArmError(
                f"connection to the xArm at {self.config.ip} lost: the arm holds its last servo "
                "target; check the network, then disconnect() and connect() again"
            )
        return self._api

    # -- report ---------------------------------------------------------------------------------

    def _on_report(self, item: dict) -> None:
        """SDK report callback (its report thread): snapshot the cached values atomically."""
        api = self._api
        if api is None:
            return
        self._reports += 1
        self._report = _Report(
            host_ns=time.monotonic_ns(),
            position=tuple(item["cartesian"]),
            angles=tuple(item["joints"]),
            error=int(item["error_code"]),
            warning=int(item["warn_code"]),
            state=int(item["state"]),
            mode=int(api.mode),
            motors=tuple(int(m) for m in item["mtable"]),
            count=self._reports,
        )

    def _wait_report(self, accept, timeout_s: float, what: str) -> _Report:
        """Wait for a report that `accept`s; raise an ArmError naming `what` otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            report = self._report
            if report is not None and accept(report):
                return report
            if time.monotonic() > deadline:
                raise ArmError(
                    f"the xArm at {self.config.ip} accepted commands but sent no {what} within "
                    f"{timeout_s:g} s on its report port (30002): check that nothing blocks "
                    "TCP port 30002 and that the firmware is 1.8.6 or newer"
                )
            time.sleep(0.005)

    def _fresh_report(self, timeout_s: float = 2.0) -> _Report:
        """The first report that started after now (two counts on: one may be in flight)."""
        start = self._reports
        return self._wait_report(lambda r: r.count >= start + 2, timeout_s, "new state report")

    # -- recovery and configuration -------------------------------------------------------------

    def _check(self, step: str, code: Any) -> None:
        code = code[0] if isinstance(code, (list, tuple)) else code
        if code == 0:
            return
        api = self._api
        controller = ""
        with contextlib.suppress(Exception):
            error = int(api.get_err_warn_code()[1][0])
            if error:
                controller = f"; controller error {error_meaning(error)}"
        meaning = _SDK_CODES.get(int(code), "see the SDK's API code table")
        raise ArmError(f"xArm {step} failed: SDK code {code} ({meaning}){controller}")

    def _recover(self, mode: int) -> None:
        api = self._require()
        self._check("clean_error", api.clean_error())
        self._check("clean_warn", api.clean_warn())
        self._check("motion_enable", api.motion_enable(True))
        self._check(f"set_mode({mode})", api.set_mode(mode))
        self._check("set_state(0)", api.set_state(0))
        code, state = api.get_state()
        self._check("get_state", code)
        if state not in (0, 1, 2):
            raise ArmError(f"xArm set_state(0) left the arm in state {state} (not ready to move)")
        self._wait_report(
            lambda r: r.mode == mode and r.state in (0, 1, 2) and r.error == 0,
            2.0,
            f"report showing mode {mode} and a ready state",
        )
        # The pose the caller reads next must be measured after the recovery: an arm moved
        # while it was stopped (by hand, or the simulator laying out an episode) would else be
        # commanded from where it was, a jump the firmware refuses with C24.
        self._fresh_report()

    def _configure_safety(self) -> None:
        """Write the firmware safety settings, then read them back from a fresh report."""
        api, cfg = self._require(), self.config
        offset_mm = [*(v * 1000.0 for v in cfg.tcp_offset[:3]), *cfg.tcp_offset[3:]]
        self._check("set_tcp_offset", api.set_tcp_offset(offset_mm, is_radian=True, wait=False))
        cog_mm = [v * 1000.0 for v in cfg.tcp_load_cog]
        self._check("set_tcp_load", api.set_tcp_load(cfg.tcp_load_kg, cog_mm))
        if api.collision_sensitivity != cfg.collision_sensitivity:  # it waits 0.5 s: only if needed
            self._check(
                "set_collision_sensitivity",
                api.set_collision_sensitivity(cfg.collision_sensitivity),
            )
        reduced = cfg.boundary_low is not None
        if reduced:
            self._check("set_reduced_tcp_boundary", api.set_reduced_tcp_boundary(self._boundary()))
            self._check(
                "set_reduced_max_tcp_speed", api.set_reduced_max_tcp_speed(cfg.max_tcp_speed * 1e3)
            )
        self._check("set_reduced_mode", api.set_reduced_mode(reduced))
        deadline = time.monotonic() + 2.0  # reports built before the settings may be queued
        while True:
            self._fresh_report()
            problems = self._safety_mismatches(offset_mm, cog_mm, reduced)
            if not problems or time.monotonic() > deadline:
                break
        if problems:
            raise ArmError(
                "the xArm did not take its safety settings (asked for vs. read back from its "
                f"report): {'; '.join(problems)}. Check the firmware version (>= 1.2 for reduced "
                "mode) and that no other program changes the settings"
            )

    def _boundary(self) -> list[int]:
        lo, hi = self.config.boundary_low, self.config.boundary_high
        return [round(v * 1000.0) for axis in range(3) for v in (hi[axis], lo[axis])]

    def _safety_mismatches(self, offset_mm: list[float], cog_mm: list[float], reduced: bool):
        api, cfg = self._api, self.config
        problems = []
        if bool(api.is_reduced_mode) != reduced:
            problems.append(f"reduced mode {reduced}, read {bool(api.is_reduced_mode)}")
        if reduced:
            if list(api.reduced_tcp_boundary) != self._boundary():
                problems.append(
                    f"TCP boundary {self._boundary()} mm, read {list(api.reduced_tcp_boundary)}"
                )
            if abs(api.reduced_max_tcp_speed - cfg.max_tcp_speed * 1e3) > 0.5:
                problems.append(
                    f"reduced TCP speed {cfg.max_tcp_speed * 1e3:g} mm/s, "
                    f"read {api.reduced_max_tcp_speed}"
                )
        if api.collision_sensitivity != cfg.collision_sensitivity:
            problems.append(
                f"collision sensitivity {cfg.collision_sensitivity}, "
                f"read {api.collision_sensitivity}"
            )
        read_offset = list(api.tcp_offset)
        if not np.allclose(read_offset[:3], offset_mm[:3], atol=0.01) or not np.allclose(
            read_offset[3:], offset_mm[3:], atol=1e-4
        ):
            problems.append(f"TCP offset {offset_mm} (mm, rad), read {read_offset}")
        mass, cog = api.tcp_load
        if abs(mass - cfg.tcp_load_kg) > 1e-3 or not np.allclose(cog, cog_mm, atol=0.01):
            problems.append(f"TCP load {cfg.tcp_load_kg} kg at {cog_mm} mm, read {mass} at {cog}")
        return problems

    # -- Arm ------------------------------------------------------------------------------------

    def enable(self) -> None:
        api = self._require()
        if self._estopped:
            raise ArmError("the arm was emergency-stopped: call clear_errors() before enable()")
        code, (error, _) = api.get_err_warn_code()
        self._check("get_err_warn_code", code)
        if error:
            raise ArmError(
                f"the arm is in error {error_meaning(int(error))}; call clear_errors() first"
            )
        with self._lock:
            self._streaming = False
            self._recover(mode=1)
        if self.config.gripper:
            self._check("set_gripper_enable", api.set_gripper_enable(True))
            self._check("set_gripper_mode", api.set_gripper_mode(0))
            self._check("set_gripper_speed", api.set_gripper_speed(self.config.gripper_speed))
            self.gripper_fault = False
            self._gripper_sent = None  # after a fault or a re-enable, send the next target again

    def read_state(self) -> ArmState:
        api = self._api
        if api is None:
            raise ArmError("XArm is not connected: call connect() (or use `with arm:`)")
        report = self._report
        if report is None:
            raise ArmError("no state report from the xArm yet")
        now = time.monotonic_ns()
        if not api.connected:
            error = int(ArmErrorCode.CONNECTION_LOST)
        elif now - report.host_ns > self.config.stale_report_s * 1e9:
            error = int(ArmErrorCode.REPORT_STALE)
        elif report.error:
            error = report.error
        elif self._estopped:
            error = int(ArmErrorCode.EMERGENCY_STOP)
        else:
            error = 0
        axes = len(report.motors) if report.motors else 6
        axes = min(int(getattr(api, "axis", 6) or 6), axes)
        motors_on = all(report.motors[:axes]) if report.motors else False
        enabled = error == 0 and report.mode == 1 and report.state in (0, 1, 2) and motors_on
        x, y, z, roll, pitch, yaw = report.position[:6]
        pose = pose_to_matrix(
            np.array([x, y, z]) / 1000.0, euler_xyz_to_matrix(np.array([roll, pitch, yaw]))
        )
        return ArmState(
            tool_pose=pose,
            joints=np.array(report.angles[:axes], dtype=np.float64),
            gripper=self._gripper,
            error_code=error,
            warning_code=report.warning,
            timestamp_ns=report.host_ns,
            enabled=enabled,
        )

    def servo(self, tool_pose: np.ndarray) -> None:
        tool_pose = np.asarray(tool_pose, dtype=np.float64)
        if tool_pose.shape != (4, 4) or not np.all(np.isfinite(tool_pose)):
            raise ValueError(f"servo needs a finite [4, 4] TCP pose, got shape {tool_pose.shape}")
        api = self._require()
        xyz = tool_pose[:3, 3] * 1000.0
        rpy = matrix_to_euler_xyz(tool_pose[:3, :3])
        with self._lock:
            code = api.set_servo_cartesian([*xyz.tolist(), *rpy.tolist()], is_radian=True)
            self._last_servo_ns = time.monotonic_ns()
            self._streaming = code == 0
        if code == 0 or code in _REFUSED:
            return
        self._require()  # a lost connection raises its own message
        raise ArmError(
            f"xArm set_servo_cartesian failed: SDK code {code} "
            f"({_SDK_CODES.get(code, 'see the SDK API codes')})"
        )

    def set_gripper(self, openness: float) -> None:
        if not math.isfinite(openness):
            raise ValueError(f"gripper openness must be finite in [0, 1], got {openness}")
        if not self.config.gripper:
            raise ArmError("this xArm has no gripper configured (XArmConfig.gripper=False)")
        api = self._require()
        pulses = round(min(1.0, max(0.0, float(openness))) * GRIPPER_MAX_PULSES)
        if pulses == self._gripper_sent:
            # The servo loop calls this every tick; each call is an RS485 round trip through
            # the control box, so only changes go out.
            return
        code = api.set_gripper_position(pulses, wait=False, wait_motion=False)
        self._gripper_sent = pulses if code == 0 else None
        if code != 0:
            self._require()
            raise ArmError(
                f"xArm gripper command failed: SDK code {code} "
                f"({_SDK_CODES.get(code, 'see the SDK API codes')}); check the gripper cable"
            )

    def stop(self) -> None:
        """Hold: the firmware stops at once (state 4) and is made ready again (state 0)."""
        api = self._require()
        with self._lock:
            self._streaming = False
            steps = [("set_state(4)", api.set_state(4))]  # both even if the first times out:
            if not self._estopped and not api.error_code:  # the box may still have done it
                steps.append(("set_state(0)", api.set_state(0)))
        for step, code in steps:
            self._check(step, code)

    def emergency_stop(self) -> None:
        """Stop at once (the SDK's emergency_stop: state 4) and latch C1 until clear_errors()."""
        api = self._require()
        with self._lock:
            self._estopped = True
            self._streaming = False
            api.emergency_stop()

    def clear_errors(self) -> None:
        """Clear the controller's error and warning and the host e-stop latch; never raises for
        an error that persists (`enable()` does, naming it)."""
        api = self._require()
        self._estopped = False
        api.clean_error()
        api.clean_warn()

    # -- watchdog -------------------------------------------------------------------------------

    def _watch(self) -> None:
        """Dead-man and gripper polling, until disconnect."""
        cfg = self.config
        period = min(cfg.deadman_s / 5.0, 0.05)
        next_poll = time.monotonic()
        while not self._stop_watchdog.wait(period):
            api = self._api
            if api is None or not api.connected:
                continue
            with self._lock:
                silent_ns = time.monotonic_ns() - self._last_servo_ns
                if self._streaming and silent_ns > cfg.deadman_s * 1e9:
                    self._streaming = False
                    with contextlib.suppress(ArmError):
                        self.stop()
                    self.deadman_trips += 1
            if cfg.gripper and cfg.gripper_poll_s > 0 and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + cfg.gripper_poll_s
                self._poll_gripper(api)

    def _poll_gripper(self, api: Any) -> None:
        result = api.get_gripper_position()
        if isinstance(result, int):  # the SDK returns a bare 102 on a gripper fault
            self.gripper_fault = True
            return
        code, pulses = result
        if code == 0 and pulses is not None:
            self._gripper = min(1.0, max(0.0, float(pulses) / GRIPPER_MAX_PULSES))
