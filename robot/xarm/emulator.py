"""A loopback xArm controller that the unmodified `xarm-python-sdk` drives; its arm is PyBullet.

`XArmEmulator` serves the command socket (502) and the normal and rich report sockets
(30001, 30002) on a 127.x.y.z address, and optionally the unix sockets
`/tmp/xarmcontroller_uds_<port>` that the SDK prefers when they exist (reference §1.1). Behind
them sits a controller model (mode, state, error and warning codes, the reduced-mode boundary
and TCP speed, TCP offset and load, collision sensitivity, the xArm Gripper on the tool RS485)
driving a `SimWorld`, so servo targets become real physics and the world's own faults (C21-C24,
C31, C35) reach the SDK as controller errors. Faults can be injected (`inject_error`,
`stall_report`, `stall_servo`, `drop_connections`, `ignore_setting`) for tests.

Firmware behaviour modelled here (from `shared/reference/xarm-protocol.md` §5 where known,
otherwise our choice, marked so): idle state is 2; MOTION_EN, CLEAN_ERR and SET_MODE leave the
arm stopped (state 4) until SET_STATE(0); replies carry 0x10 while the arm cannot move, 0x40
while an error is latched; an error stops the arm and stays until CLEAN_ERR (C1-C3 also while
their cause persists), after which MOTION_EN is needed again. Servo mode follows only the
latest target; with no new targets the arm stays at the last one (that is the firmware's
dead-man: it never extrapolates). [our choice] A target outside the boundary with reduced or
fence mode on is C35; the commanded TCP follows targets at most at the TCP speed limit (reduced
limit in reduced mode, else 1000 mm/s) and a target more than `lag_s` of motion ahead of it is
C24; when the command connection drops, the arm holds; a rebuilt world (an episode start in
the sim cell) drops the servo target.

Run it in a process other than the SDK's: the SDK sets a process-wide default socket timeout.
`make_emulator_devices` builds one on its own world (a device factory for
`aimg.robot.remote.spawn_server`, as the tests use it); `make_xarm_sim_cell` puts one beside the
arm in the sim cell's physics server, so the servo process can drive the cell through the SDK.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial.transform import Rotation

from aimg.geometry import euler_xyz_to_matrix, invert_pose, matrix_to_euler_xyz, pose_to_matrix
from aimg.robot.interfaces import ArmErrorCode, ArmState
from aimg.robot.xarm import protocol as wire
from aimg.robot.xarm.protocol import Reg, Request

if TYPE_CHECKING:
    from aimg.robot.sim.mirror import SimCell
    from aimg.robot.sim.world import CellConfig, SimWorld
    from aimg.robot.xarm.arm import XArmConfig

DEFAULT_VERSION = "6,6,XI1304000001,AC1303000001,v2.6.0"
ROBOT_SN = "XI1304000001"
BOX_SN = "AC1303000001"
MAX_TCP_SPEED_MM_S = 1000.0
#: Gripper firmware version (>= 3.4.3 makes the SDK poll the status register while waiting).
GRIPPER_VERSION = (3, 4, 3)
#: Settings `ignore_setting` can make the controller acknowledge without applying.
SETTINGS = {
    "tcp_offset": Reg.SET_TCP_OFFSET,
    "tcp_load": Reg.SET_LOAD_PARAM,
    "collision_sensitivity": Reg.SET_COLLIS_SENS,
    "reduced_mode": Reg.SET_REDUCED_MODE,
    "boundary": Reg.SET_LIMIT_XYZ,
    "reduced_tcp_speed": Reg.SET_REDUCED_TRSV,
}


@dataclass(frozen=True)
class _Measured:
    """The world as the motion thread last read it: the only world reads the sockets use, so
    a world busy elsewhere (an episode being laid out) never blocks a reply or a report."""

    world_tcp: np.ndarray
    joints: np.ndarray
    gripper: float
    grasped: bool
    rng: object


def _toward(point: np.ndarray, goal: np.ndarray, step: float) -> np.ndarray:
    """`point` moved at most `step` (metres) toward `goal`."""
    delta = goal - point
    distance = float(np.linalg.norm(delta))
    return goal.copy() if distance <= step else point + delta * (step / distance)


def _is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.")


class XArmEmulator:
    """The emulated controller on `world` (started and owned by the caller unless `owns_world`).

    host: a loopback address, or None for a free random 127.x.y.z (what parallel tests use);
    ports: the SDK only ever connects to 502 / 30001 / 30002, other ports serve other clients;
    uds: also listen on `/tmp/xarmcontroller_uds_<port>` (one emulator per machine at a time);
    tcp: listen on TCP at all (False: unix sockets only, no root needed for port 502);
    report_hz: push rate of both report sockets (the real rich report is 5 Hz; runtime use
    wants more: state for the servo loop comes from it).
    """

    exposed_methods = (
        "host",
        "inject_error",
        "release_error",
        "set_warning",
        "stall_report",
        "stall_servo",
        "drop_connections",
        "ignore_setting",
        "servo_arrivals_ns",
        "clear_servo_log",
        "status",
        "arm_state",
        "reset",
    )

    def __init__(
        self,
        world: SimWorld,
        host: str | None = "127.0.0.1",
        control_port: int = wire.CONTROL_PORT,
        rich_port: int = wire.REPORT_RICH_PORT,
        normal_port: int = wire.REPORT_NORMAL_PORT,
        uds: bool = False,
        tcp: bool = True,
        report_hz: float = 100.0,
        servo_hz: float = 250.0,
        lag_s: float = 0.1,
        version: str = DEFAULT_VERSION,
        owns_world: bool = False,
    ) -> None:
        if host is not None and not _is_loopback(host):
            raise ValueError(f"the emulator binds loopback addresses only (127.x.y.z), got {host}")
        if report_hz <= 0 or servo_hz <= 0:
            raise ValueError("report_hz and servo_hz must be positive")
        wire.version_data(version)  # validates
        from aimg.robot.sim.world import tcp_offset as sim_tcp_offset

        self.world = world
        self._owns_world = owns_world
        self._sim_tcp = sim_tcp_offset()
        self._ports = {"control": control_port, "rich": rich_port, "normal": normal_port}
        self._uds = uds
        self._tcp = tcp
        if not (tcp or uds):
            raise ValueError("serve TCP, unix sockets or both")
        self._report_period = 1.0 / report_hz
        self._servo_period = 1.0 / servo_hz
        self._lag_s = lag_s
        self._version = version
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []
        self._clients: set[socket.socket] = set()
        self._uds_paths: list[tuple[str, int]] = []
        self._arrivals: list[int] = []
        self._measured = self._measure()
        self._reset_controller()
        self._host = self._bind(host)
        self._start()

    # -- public API (also callable through aimg.robot.remote) ----------------------------------

    @property
    def host(self) -> str:
        """The loopback address the TCP sockets listen on (pass it to `XArmAPI`)."""
        return self._host

    def inject_error(self, code: int, persistent: bool = False) -> None:
        """Latch controller error `code` (1..255) as the firmware would: the arm stops.

        `persistent`: CLEAN_ERR fails until `release_error()` (an e-stop button still pressed).
        """
        if not 0 < code < 256:
            raise ValueError(f"controller error codes are 1..255 (one report byte), got {code}")
        with self._lock:
            self._error = code
            self._error_persists = persistent
            self._halt()
            if code in (1, 2, 3):
                self._motors = False

    def release_error(self) -> None:
        """The cause of a persistent error is gone: CLEAN_ERR now clears it."""
        with self._lock:
            self._error_persists = False

    def set_warning(self, code: int) -> None:
        with self._lock:
            self._warning = int(code)

    def stall_report(self, seconds: float) -> None:
        """Send no report for `seconds` (sockets stay open, as a hung controller's would)."""
        with self._lock:
            self._report_stall_until = time.monotonic() + seconds

    def stall_servo(self, count: int = 1, seconds: float = 0.19) -> None:
        """Answer the next `count` servo commands `seconds` late (a controller hiccup)."""
        with self._lock:
            self._servo_stalls = [seconds] * count

    def drop_connections(self) -> None:
        """Close every client connection at once (a cable pulled); listeners stay up."""
        with self._lock:
            clients, self._clients = list(self._clients), set()
            self._halt(state=self._state)
        for client in clients:
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                client.close()

    def ignore_setting(self, name: str) -> None:
        """Acknowledge `name` (a key of `SETTINGS`) from now on without applying it."""
        if name not in SETTINGS:
            raise ValueError(f"unknown setting {name!r}: one of {sorted(SETTINGS)}")
        with self._lock:
            self._ignored.add(SETTINGS[name])

    def servo_arrivals_ns(self) -> list[int]:
        """`time.monotonic_ns()` at which each servo command arrived since the last clear."""
        with self._lock:
            return list(self._arrivals)

    def clear_servo_log(self) -> None:
        with self._lock:
            self._arrivals = []

    def status(self) -> dict:
        """The controller's settings and state, in wire units (mm, rad), for tests and tools."""
        with self._lock:
            return {
                "mode": self._mode,
                "state": self._reported_state(),
                "error": self._error_code(),
                "warning": self._warning,
                "motors": self._motors,
                "reduced_mode": self._reduced_mode,
                "fence_mode": self._fence_mode,
                "boundary_mm": list(self._boundary),
                "reduced_tcp_speed": self._reduced_tcp_speed,
                "collision_sensitivity": self._collision_sensitivity,
                "tcp_offset": list(self._tcp_offset_wire),
                "tcp_load": list(self._tcp_load),
                "gripper_enabled": self._gripper_enabled,
                "gripper_target": self._gripper_target,
                "servo_commands": self._servo_count,
                "clients": len(self._clients),
            }

    def arm_state(self) -> ArmState:
        """The simulated arm as the world measures it (TCP of the sim, not the user offset)."""
        return self.world.arm_state()

    def reset(self, seed: int = 0) -> None:
        """Power-cycle: rebuild the world (`seed`) and forget every setting and fault."""
        self.drop_connections()
        self.world.reset(seed)
        with self._lock:
            self._measured = self._measure()
            self._reset_controller()

    def close(self) -> None:
        """Stop serving, close every socket, remove the unix socket files we created."""
        self._stop.set()
        self.drop_connections()
        for listener in self._listeners:
            with contextlib.suppress(OSError):
                listener.close()
        for path, inode in self._uds_paths:
            with contextlib.suppress(OSError):
                if os.stat(path).st_ino == inode:
                    os.unlink(path)
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self._owns_world:
            self.world.close()

    disconnect = close  # `aimg.robot.remote.serve` disconnects its devices on exit

    def __enter__(self) -> XArmEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- controller model -----------------------------------------------------------------------

    def _reset_controller(self) -> None:
        self._mode = 0
        self._state = 4
        self._motors = True
        self._armed = True
        self._error = 0
        self._error_persists = False
        self._warning = 0
        self._reduced_mode = False
        self._fence_mode = False
        self._boundary = [9999, -9999, 9999, -9999, 9999, -9999]
        self._reduced_tcp_speed = 250.0
        self._reduced_joint_speed = math.pi
        self._collision_sensitivity = 3
        self._teach_sensitivity = 3
        self._tcp_offset_wire = [0.0] * 6
        self._user_tcp = np.eye(4)
        self._tcp_load = [0.0, 0.0, 0.0, 0.0]
        self._world_rng = self._measured.rng
        self._world_ops: list[Callable[[], None]] = []  # run by the motion thread, in order
        self._generation = 0  # bumped by every halt
        self._target: np.ndarray | None = None  # user-frame TCP target, metres
        # the commanded TCP position (metres) that the arm is sent, and where an unstarved
        # trajectory generator would be: the speed check uses the latter (this process may be
        # starved on a loaded machine; a controller is not), the arm the former (never jumps)
        self._follow: np.ndarray | None = None
        self._follow_t = time.monotonic()
        self._ideal: np.ndarray | None = None
        self._ideal_t = time.monotonic()
        self._last_servo = 0.0
        self._servo_count = 0
        self._servo_stalls: list[float] = []
        self._report_stall_until = 0.0
        self._report_counter = 0
        self._ignored: set[int] = set()
        self._gripper_enabled = False
        self._gripper_mode = 0
        self._gripper_speed = 0
        self._gripper_target = wire.GRIPPER_MAX_PULSES
        self._gripper_error = 0
        self._arrivals = []

    def _error_code(self) -> int:
        return self._error or int(self.world.error_code)

    def _reported_state(self) -> int:
        if self._error_code():
            return 4
        if self._state in (1, 2):
            moving = self._mode == 1 and time.monotonic() - self._last_servo < 0.1
            return 1 if moving else 2
        return self._state

    def _status_byte(self) -> int:
        status = 0
        if self._error_code():
            status |= wire.STATUS_ERROR
        if self._warning:
            status |= wire.STATUS_WARNING
        if self._reported_state() in (4, 5):
            status |= wire.STATUS_NOT_READY
        return status

    def _follow_world_resets(self) -> None:
        """Forget the servo target when someone rebuilt the world (`SimWorld.reset` makes a new
        `rng`; the sim supervisor does so to lay out an episode): the arm was teleported, and
        driving it back to a target from before would be a jump."""
        if self._measured.rng is not self._world_rng:
            self._world_rng = self._measured.rng
            self._target = None
            self._follow = self._ideal = None

    def _halt(self, state: int = 4) -> None:
        """Stop: hold the measured pose (on the motion thread's next tick), drop the target."""
        self._world_ops.append(self.world.hold)
        self._generation += 1
        self._target = None
        self._follow = self._ideal = None
        self._state = state

    def _measure(self) -> _Measured:
        with self.world.lock:
            return _Measured(
                world_tcp=self.world.tool_pose(),
                joints=self.world.joints(),
                gripper=self.world.gripper_openness(),
                grasped=self.world.grasped,
                rng=self.world.rng,
            )

    def _user_pose(self) -> np.ndarray:
        """Measured TCP in the user's frame (the configured TCP offset), metres."""
        flange = self._measured.world_tcp @ invert_pose(self._sim_tcp)
        return flange @ self._user_tcp

    def _to_world_target(self, user_target: np.ndarray) -> np.ndarray:
        return user_target @ invert_pose(self._user_tcp) @ self._sim_tcp

    def _speed_limit_m_s(self) -> float:
        speed = self._reduced_tcp_speed if self._reduced_mode else MAX_TCP_SPEED_MM_S
        return max(speed, 1.0) / 1000.0

    def _outside_boundary(self, position_m: np.ndarray) -> bool:
        if not (self._reduced_mode or self._fence_mode):
            return False
        x, y, z = (position_m * 1000.0).tolist()
        b = self._boundary
        return not (b[1] <= x <= b[0] and b[3] <= y <= b[2] and b[5] <= z <= b[4])

    def _fault(self, code: int) -> None:
        if not self._error_code():
            self._error = code
        self._halt()

    def _servo(self, values: list[float], arrival_ns: int) -> int:
        """MOVE_SERVO_CART: check and take a target; returns the reply status."""
        self._arrivals.append(arrival_ns)
        self._servo_count += 1
        self._follow_world_resets()
        if self._error_code():
            return self._status_byte()
        if self._mode != 1 or self._state not in (1, 2) or not self._motors:
            return self._status_byte() | wire.STATUS_NOT_READY
        current = self._user_pose() if self._target is None else self._target
        cur_xyz = current[:3, 3] * 1000.0
        cur_rpy = matrix_to_euler_xyz(current[:3, :3])
        xyz = [v if math.isfinite(v) else c for v, c in zip(values[:3], cur_xyz, strict=True)]
        rpy = [v if math.isfinite(v) else c for v, c in zip(values[3:6], cur_rpy, strict=True)]
        target = pose_to_matrix(np.array(xyz) / 1000.0, euler_xyz_to_matrix(np.array(rpy)))
        if values[8] >= 0.5:  # is_tool_coord: relative to the current TCP
            target = self._user_pose() @ target
        if self._outside_boundary(target[:3, 3]):
            self._fault(int(ArmErrorCode.BOUNDARY))
            return self._status_byte()
        now = time.monotonic()
        limit = self._speed_limit_m_s()
        if self._ideal is None:
            self._ideal = self._follow = self._user_pose()[:3, 3]
            self._ideal_t = self._follow_t = now
        step = limit * max(0.0, now - self._ideal_t)
        self._ideal, self._ideal_t = _toward(self._ideal, target[:3, 3], step), now
        if np.linalg.norm(target[:3, 3] - self._ideal) > limit * self._lag_s + 0.005:
            self._fault(int(ArmErrorCode.SPEED_LIMIT))
            return self._status_byte()
        self._target = target
        self._last_servo = now
        return self._status_byte()

    def _step_follow(self, now: float) -> np.ndarray:
        """Move the commanded position toward the target at the TCP speed limit; a late tick
        moves at most two ticks' worth, so a starved emulator slows the arm, never jumps it."""
        if self._follow is None:
            self._follow = self._user_pose()[:3, 3]
            self._follow_t = now
        dt = min(max(0.0, now - self._follow_t), 2.0 * self._servo_period)
        self._follow_t = now
        self._follow = _toward(self._follow, self._target[:3, 3], self._speed_limit_m_s() * dt)
        return self._follow

    def _motion_loop(self) -> None:
        """Feed the world the speed-limited target (the firmware's trajectory generator)."""
        next_tick = time.monotonic()
        while not self._stop.is_set():
            next_tick += self._servo_period
            delay = next_tick - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                next_tick = time.monotonic()
            measured = self._measure()  # world lock only: replies never wait on physics
            command = None
            with self._lock:
                self._measured = measured
                self._follow_world_resets()
                ops, self._world_ops = self._world_ops, []
                if self._target is not None and not self._error_code() and self._mode == 1:
                    user = self._target.copy()
                    user[:3, 3] = self._step_follow(time.monotonic())
                    command = self._to_world_target(user)
            for op in ops:
                with contextlib.suppress(ValueError):  # enable() on a world that faulted
                    op()
            if command is not None:
                self.world.set_servo_target(command)  # a halt meanwhile holds on the next tick
                if self.world.error_code:
                    with self._lock:
                        self._halt()

    # -- registers ------------------------------------------------------------------------------

    def _handle(self, request: Request, send: Callable[[bytes], None]) -> None:
        if request.protocol == wire.HEARTBEAT_PROTOCOL:
            return
        if request.protocol == 0:  # standard Modbus-TCP: not implemented, say so
            pdu = bytes([request.register | 0x80, 0x01])
            send(struct.pack(">HHHB", request.tid, 0, 1 + len(pdu), 1) + pdu)
            return
        reg, payload = request.register, request.payload
        if reg == Reg.MOVE_SERVO_CART:
            arrival = time.monotonic_ns()
            with self._lock:
                stall = self._servo_stalls.pop(0) if self._servo_stalls else 0.0
            if stall:
                time.sleep(stall)
            with self._lock:
                status = self._servo(wire.read_fp32(payload.ljust(36, b"\0"), 9), arrival)
            send(wire.reply(request, status))
            return
        with self._lock:
            data = self._register(reg, payload)
            status = self._status_byte()
        send(wire.reply(request, status, data))
        if reg == Reg.FEEDBACK_CHECK:
            send(wire.feedback_frame(request, time_us=time.monotonic_ns() // 1000))

    def _register(self, reg: int, payload: bytes) -> bytes:
        """Apply one non-servo command (lock held); returns the reply data."""
        if reg in self._ignored:
            return b""
        u8 = payload[0] if payload else 0
        if reg == Reg.GET_VERSION:
            return wire.version_data(self._version)
        if reg == Reg.GET_ROBOT_SN:
            return (ROBOT_SN.encode() + b"\0" + BOX_SN.encode()).ljust(40, b"\0")
        if reg == Reg.GET_STATE:
            return bytes([self._reported_state()])
        if reg == Reg.GET_CMDNUM:
            return struct.pack(">H", 0)
        if reg == Reg.GET_ERROR:
            return bytes([self._error_code() & 0xFF, self._warning & 0xFF])
        if reg == Reg.GET_TCP_POSE:
            pose = self._user_pose()
            return wire.fp32([*(pose[:3, 3] * 1000.0), *matrix_to_euler_xyz(pose[:3, :3])])
        if reg == Reg.GET_JOINT_POS:
            return wire.fp32([*self._measured.joints, 0.0])
        if reg == Reg.MOTION_EN:
            enable = len(payload) > 1 and payload[1] == 1
            self._halt()
            if enable and not self._error_code():
                self.world.enable()
                self._motors = self._armed = True
            elif not enable:
                self._motors = False
            return b""
        if reg == Reg.SET_STATE:
            if u8 == 0:
                ready = self._motors and self._armed and not self._error_code()
                self._state = 2 if ready else 4
                if ready:
                    self._world_ops.append(self.world.hold)
                    self._follow = self._ideal = None
            elif u8 in (3, 4, 6):
                self._halt(state=3 if u8 == 3 else 4)
            return b""
        if reg == Reg.CLEAN_ERR:
            if not self._error_persists:
                self._error = 0
                self.world.clear_errors()
            self._armed = False  # the recovery sequence goes on with MOTION_EN
            self._halt()
            return b""
        if reg == Reg.CLEAN_WAR:
            self._warning = 0
            return b""
        if reg == Reg.SET_MODE:
            self._mode = u8 if u8 <= 11 else self._mode
            self._halt()
            return b""
        if reg == Reg.SET_TCP_OFFSET:
            values = wire.read_fp32(payload.ljust(24, b"\0"), 6)
            self._tcp_offset_wire = values
            self._user_tcp = pose_to_matrix(
                np.array(values[:3]) / 1000.0, euler_xyz_to_matrix(np.array(values[3:6]))
            )
            self._halt(state=self._state)
            return b""
        if reg == Reg.SET_LOAD_PARAM:
            self._tcp_load = wire.read_fp32(payload.ljust(16, b"\0"), 4)
            return b""
        if reg == Reg.SET_COLLIS_SENS:
            self._collision_sensitivity = min(u8, 5)
            return b""
        if reg == Reg.SET_TEACH_SENS:
            self._teach_sensitivity = min(u8, 5)
            return b""
        if reg == Reg.SET_REDUCED_MODE:
            self._reduced_mode = bool(u8)
            return b""
        if reg == Reg.GET_REDUCED_MODE:
            return bytes([int(self._reduced_mode)])
        if reg == Reg.SET_LIMIT_XYZ:
            self._boundary = list(struct.unpack("<6i", payload.ljust(24, b"\0")[:24]))
            return b""
        if reg == Reg.SET_REDUCED_TRSV:
            self._reduced_tcp_speed = wire.read_fp32(payload.ljust(4, b"\0"), 1)[0]
            return b""
        if reg == Reg.SET_REDUCED_P2PV:
            self._reduced_joint_speed = wire.read_fp32(payload.ljust(4, b"\0"), 1)[0]
            return b""
        if reg == Reg.SET_FENCE_ON:
            self._fence_mode = bool(u8)
            return b""
        if reg == Reg.RS485_RTU:
            return self._rs485(payload)
        if reg == Reg.TGPIO_R16B:
            addr = struct.unpack(">H", payload[1:3])[0] if len(payload) >= 3 else 0
            value = wire.GRIPPER_BAUD_INDEX if addr == 0x0A0B else 0
            return struct.pack(">i", value)
        # TGPIO_W16B, SET_COLLIS_REB, feedback registers and anything else: acknowledged.
        return b""

    def _rs485(self, payload: bytes) -> bytes:
        """Tool RS485 pass-through to the xArm Gripper (Modbus-RTU without CRC)."""
        if len(payload) < 3 or payload[0] != wire.GRIPPER_HOST_ID:
            return payload[:2] + bytes([(payload[2] if len(payload) > 2 else 0) | 0x80, 0x0B])
        host, slave, fc = payload[0], payload[1], payload[2]
        if slave != wire.GRIPPER_SLAVE_ID:
            return bytes([host, slave, fc | 0x80, 0x0B])
        if fc == 0x03 and len(payload) >= 7:
            addr, count = struct.unpack(">HH", payload[3:7])
            words = [self._gripper_read(addr + i) for i in range(count)]
            return bytes([host, slave, fc, 2 * count]) + struct.pack(f">{count}H", *words)
        if fc == 0x10 and len(payload) >= 8:
            addr, count = struct.unpack(">HH", payload[3:7])
            words = struct.unpack(f">{count}H", payload[8 : 8 + 2 * count].ljust(2 * count, b"\0"))
            self._gripper_write(addr, list(words))
            return bytes([host, slave, fc]) + struct.pack(">HH", addr, count)
        if fc == 0x06 and len(payload) >= 7:
            addr, value = struct.unpack(">HH", payload[3:7])
            self._gripper_write(addr, [value])
            return payload[:7]
        return bytes([host, slave, fc | 0x80, 0x01])

    def _gripper_position(self) -> int:
        return round(self._measured.gripper * wire.GRIPPER_MAX_PULSES)

    def _gripper_read(self, addr: int) -> int:
        if addr == 0x0000:
            if self._measured.grasped:
                return 2
            return int(abs(self._gripper_position() - self._gripper_target) > 10)
        if addr == 0x000F:
            return self._gripper_error
        if addr == 0x0100:
            return int(self._gripper_enabled)
        if addr == 0x0101:
            return self._gripper_mode
        if addr == 0x0303:
            return self._gripper_speed
        if addr in (0x0700, 0x0701):
            raw = struct.pack(">i", self._gripper_target)
            return struct.unpack(">H", raw[(addr - 0x0700) * 2 :][:2])[0]
        if addr in (0x0702, 0x0703):
            raw = struct.pack(">i", self._gripper_position())
            return struct.unpack(">H", raw[(addr - 0x0702) * 2 :][:2])[0]
        if 0x0801 <= addr <= 0x0803:
            return GRIPPER_VERSION[addr - 0x0801]
        return 0

    def _gripper_write(self, addr: int, words: list[int]) -> None:
        for offset, word in enumerate(words):
            register = addr + offset
            if register == 0x0100:
                self._gripper_enabled = bool(word)
            elif register == 0x0101:
                self._gripper_mode = word
            elif register == 0x0109:
                self._gripper_error = 0
            elif register == 0x0303:
                self._gripper_speed = word
        if addr == 0x0700 and len(words) >= 2 and self._gripper_enabled:
            pulses = struct.unpack(">i", struct.pack(">HH", words[0], words[1]))[0]
            self._gripper_target = max(0, min(wire.GRIPPER_MAX_PULSES, pulses))
            openness = self._gripper_target / wire.GRIPPER_MAX_PULSES
            self._world_ops.append(lambda: self.world.set_gripper_target(openness))

    # -- report -------------------------------------------------------------------------------

    def _report_fields(self) -> wire.ReportFields:
        pose = self._user_pose()
        rotation = pose[:3, :3]
        motors = 0x3F if self._motors else 0
        self._report_counter += 1
        return wire.ReportFields(
            state=self._reported_state(),
            mode=self._mode,
            joints=[*self._measured.joints, 0.0],
            pose=[*(pose[:3, 3] * 1000.0), *matrix_to_euler_xyz(rotation)],
            brake_bits=motors,
            enable_bits=motors,
            error=self._error_code(),
            warning=self._warning,
            tcp_offset=self._tcp_offset_wire,
            tcp_load=self._tcp_load,
            collision_sensitivity=self._collision_sensitivity,
            teach_sensitivity=self._teach_sensitivity,
            version=self._version.rsplit(",", 1)[-1],
            counter=self._report_counter,
            axis_angle=Rotation.from_matrix(rotation).as_rotvec().tolist(),
            reduced_mode=self._reduced_mode,
            fence_mode=self._fence_mode,
            boundary_mm=self._boundary,
            reduced_tcp_speed=self._reduced_tcp_speed,
            reduced_joint_speed=self._reduced_joint_speed,
        )

    def _report_loop(
        self, client: socket.socket, build: Callable[[wire.ReportFields], bytes]
    ) -> None:
        next_tick = time.monotonic()
        try:
            while not self._stop.is_set():
                with self._lock:
                    if client not in self._clients:
                        return
                    stalled = time.monotonic() < self._report_stall_until
                    packet = None if stalled else build(self._report_fields())
                if packet is not None:
                    client.sendall(packet)
                next_tick += self._report_period
                delay = next_tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_tick = time.monotonic()
        except OSError:
            pass
        finally:
            self._forget(client)

    # -- sockets ------------------------------------------------------------------------------

    def _bind(self, host: str | None) -> str:
        """Listen on every port at `host` (or at a free random 127.x.y.z) and the UDS paths."""
        if not self._tcp:
            self._listeners = [self._listen_uds(port) for port in self._ports.values()]
            return host or "127.0.0.1"
        attempts = 64 if host is None else 1
        for _ in range(attempts):
            candidate = host or f"127.{random.randint(1, 254)}.{random.randint(1, 254)}." + str(
                random.randint(2, 254)
            )
            listeners = []
            try:
                for port in self._ports.values():
                    listeners.append(self._listen_tcp(candidate, port))
            except OSError as exc:
                for listener in listeners:
                    listener.close()
                if exc.errno == errno.EACCES:
                    raise PermissionError(
                        f"binding port {port} needs root or CAP_NET_BIND_SERVICE "
                        "(`sudo setcap cap_net_bind_service=+ep $(readlink -f $(which python))`),"
                        " or use uds=True and the SDK's unix-socket path"
                    ) from exc
                if exc.errno == errno.EADDRINUSE and host is None:
                    continue
                raise OSError(
                    exc.errno, f"cannot listen on {candidate}:{port}: {exc.strerror}"
                ) from exc
            self._listeners = listeners
            break
        else:
            raise OSError(errno.EADDRINUSE, "no free 127.x.y.z address found for the emulator")
        if self._uds:
            for port in self._ports.values():
                self._listeners.append(self._listen_uds(port))
        return candidate

    def _listen_tcp(self, host: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        sock.settimeout(0.2)
        return sock

    def _listen_uds(self, port: int) -> socket.socket:
        path = wire.UDS_PATH.format(port=port)
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            probe.settimeout(0.5)
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: nobody listens there
            else:
                raise OSError(
                    errno.EADDRINUSE,
                    f"{path} is served by another controller or emulator: stop it first "
                    "(only one UDS emulator per machine; use TCP on a 127.x.y.z address instead)",
                )
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(8)
        sock.settimeout(0.2)
        self._uds_paths.append((path, os.stat(path).st_ino))
        return sock

    def _start(self) -> None:
        roles = ["control", "rich", "normal"]
        for index, listener in enumerate(self._listeners):
            role = roles[index % len(roles)]
            self._spawn(self._accept_loop, listener, role)
        self._spawn(self._motion_loop)

    def _spawn(self, target: Callable, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self, listener: socket.socket, role: str) -> None:
        while not self._stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if client.family == socket.AF_INET:
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.add(client)
            if role == "control":
                self._spawn(self._command_loop, client)
            else:
                build = wire.rich_report if role == "rich" else wire.normal_report
                self._spawn(self._report_loop, client, build)

    def _command_loop(self, client: socket.socket) -> None:
        buffer = bytearray()
        try:
            while not self._stop.is_set():
                chunk = client.recv(4096)
                if not chunk:
                    break
                buffer += chunk
                for request in wire.split_requests(buffer):
                    self._handle(request, client.sendall)
        except OSError:
            pass
        finally:
            if self._forget(client):
                with self._lock:  # the client is gone: hold where the arm is [our choice]
                    self._halt(state=self._state)

    def _forget(self, client: socket.socket) -> bool:
        """Drop `client`; True when it was still registered (it went away by itself)."""
        with self._lock:
            known = client in self._clients
            self._clients.discard(client)
        with contextlib.suppress(OSError):
            client.close()
        return known


#: The emulator is the robot controller, a box of its own that never starves: SCHED_FIFO at
#: this priority when permitted (below a servo loop's 50, as the sim's physics server).
EMULATOR_PRIORITY = 40


def make_emulator_devices(
    host: str | None = None,
    uds: bool = False,
    tcp: bool = True,
    report_hz: float = 100.0,
    seed: int = 0,
    config: CellConfig | None = None,
    realtime: bool = True,
) -> dict[str, object]:
    """Device factory for `aimg.robot.remote.spawn_server`: an emulator on its own real-time
    world, so tests drive it with the SDK from their own process (call its `exposed_methods`
    through `RemoteDevice(channel, "emulator")`). `realtime`: ask for SCHED_FIFO (else nice -5)
    before any thread starts, so a loaded machine delays the controller less than its client.
    """
    import sys

    from aimg.robot.sim.world import SimWorld

    if realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(EMULATOR_PRIORITY))
        except (OSError, AttributeError):
            with contextlib.suppress(OSError):
                os.nice(-5)
        sys.setswitchinterval(0.001)  # bound how long the physics thread holds up a reply
    world = SimWorld(config, seed=seed)
    world.start_real_time()
    try:
        emulator = XArmEmulator(
            world, host=host, uds=uds, tcp=tcp, report_hz=report_hz, owns_world=True
        )
    except BaseException:
        world.close()
        raise
    return {"emulator": emulator}


def make_xarm_physics_devices(
    host: str | None = None,
    report_hz: float = 100.0,
    uds: bool = False,
    **physics: object,
) -> dict[str, object]:
    """The sim cell's physics server devices (`aimg.robot.sim.mirror.make_physics_devices`:
    "arm", "supervisor") plus "xarm_emulator" on the same world, so the servo process can drive
    the simulated arm through the SDK (`XArm`) instead of `SimArm`. Use one of the two arms,
    never both. `physics`: keyword arguments of `make_physics_devices`."""
    from aimg.robot.sim.mirror import make_physics_devices

    devices = make_physics_devices(**physics)
    world = devices["arm"].world  # started: the emulator's threads inherit its priority
    devices["xarm_emulator"] = XArmEmulator(world, host=host, uds=uds, report_hz=report_hz)
    return devices


def make_xarm_sim_cell(
    views: int = 2,
    height: int = 128,
    width: int = 128,
    seed: int = 0,
    config: CellConfig | None = None,
    host: str | None = None,
    report_hz: float = 100.0,
) -> tuple[SimCell, str]:
    """Spawn the sim cell's physics server with the emulator beside the arm; returns the
    `SimCell` and the emulator's address (give `XArm` an `xarm_config_for_cell(...)`)."""
    import functools

    from aimg.robot.remote import RemoteDevice, spawn_server
    from aimg.robot.sim.mirror import SimCell

    factory = functools.partial(
        make_xarm_physics_devices,
        host=host,
        report_hz=report_hz,
        real_time=True,
        seed=seed,
        height=height,
        width=width,
        config=config,
    )
    cell = SimCell(spawn_server(factory, listen=True), views, height, width)
    try:
        address = RemoteDevice(cell.channel, "xarm_emulator").call("host")
    except BaseException:
        cell.close()
        raise
    return cell, address


def xarm_config_for_cell(
    host: str, config: CellConfig | None = None, **overrides: object
) -> XArmConfig:
    """An `XArmConfig` for the emulated sim cell: its workspace as the reduced-mode boundary,
    the sim TCP (0.172 m) as the TCP offset, no payload (the sim's gripper has no load model)."""
    from aimg.robot.sim.world import TCP_OFFSET_M, CellConfig
    from aimg.robot.xarm.arm import XArmConfig

    cell = config or CellConfig()
    settings: dict[str, object] = {
        "boundary_low": tuple(cell.workspace_low),
        "boundary_high": tuple(cell.workspace_high),
        "tcp_offset": (0.0, 0.0, TCP_OFFSET_M, 0.0, 0.0, 0.0),
        "tcp_load_kg": 0.0,
        "tcp_load_cog": (0.0, 0.0, 0.0),
        **overrides,
    }
    return XArmConfig(host, **settings)
