"""The xArm controller's wire format, as `xarm-python-sdk` 1.18.4 speaks it (facts:
`shared/reference/xarm-protocol.md`): command frames on port 502, the 30002 "rich" report.

Header fields and report integers are big-endian; every fp32 is little-endian; units on the wire
are mm, rad, kg, s. Only `aimg.robot.xarm` uses this; it imports nothing from the SDK, so the
emulator cannot accidentally share the client's code (or its bugs).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

CONTROL_PORT = 502
REPORT_NORMAL_PORT = 30001
REPORT_RICH_PORT = 30002
#: The SDK (on Linux, unless `forbid_uds=True`) connects here instead of TCP when the file exists.
UDS_PATH = "/tmp/xarmcontroller_uds_{port}"

RICH_REPORT_SIZE = 587
NORMAL_REPORT_SIZE = 145
VERSION_DATA_SIZE = 40

#: Status byte bits of a reply (the SDK's `check_private_protocol`).
STATUS_NOT_READY = 0x10  # motion impossible: motion calls return 9
STATUS_ERROR = 0x40  # controller error: motion calls return 1
STATUS_WARNING = 0x20

HEARTBEAT_PROTOCOL = 1
FEEDBACK_REGISTER = 0xFF

GRIPPER_HOST_ID = 9  # tool RS485
GRIPPER_SLAVE_ID = 8
GRIPPER_BAUD_INDEX = 11  # 2 Mbps, what the SDK expects for the xArm Gripper
GRIPPER_MAX_PULSES = 850


class Reg(enum.IntEnum):
    """Registers (function codes) of the private Modbus-TCP protocol that aimg uses."""

    GET_VERSION = 1
    GET_ROBOT_SN = 2
    MOTION_EN = 11
    SET_STATE = 12
    GET_STATE = 13
    GET_CMDNUM = 14
    GET_ERROR = 15
    CLEAN_ERR = 16
    CLEAN_WAR = 17
    SET_MODE = 19
    MOVE_SERVO_CART = 30
    SET_TCP_OFFSET = 35
    SET_LOAD_PARAM = 36
    SET_COLLIS_SENS = 37
    SET_TEACH_SENS = 38
    GET_TCP_POSE = 41
    GET_JOINT_POS = 42
    SET_REDUCED_TRSV = 47
    SET_REDUCED_P2PV = 48
    GET_REDUCED_MODE = 49
    SET_REDUCED_MODE = 50
    SET_LIMIT_XYZ = 52
    SET_FENCE_ON = 59
    SET_COLLIS_REB = 60
    RS485_RTU = 124
    TGPIO_W16B = 127
    TGPIO_R16B = 128
    FEEDBACK_CHECK = 253
    SET_FEEDBACK_TYPE = 254


def fp32(values: Sequence[float]) -> bytes:
    """fp32 little-endian, as every float on the wire."""
    return struct.pack(f"<{len(values)}f", *values)


def read_fp32(data: bytes, count: int, offset: int = 0) -> list[float]:
    return list(struct.unpack_from(f"<{count}f", data, offset))


@dataclass(frozen=True)
class Request:
    """One command frame: transaction id, protocol id, register, payload."""

    tid: int
    protocol: int
    register: int
    payload: bytes


def split_requests(buffer: bytearray) -> list[Request]:
    """Take every complete frame off the front of `buffer` (a TCP stream has no boundaries)."""
    requests = []
    while len(buffer) >= 6:
        tid, protocol, length = struct.unpack_from(">HHH", buffer, 0)
        if len(buffer) < 6 + length:
            break
        frame = bytes(buffer[: 6 + length])
        del buffer[: 6 + length]
        if length >= 1:
            requests.append(Request(tid, protocol, frame[6], frame[7:]))
    return requests


def reply(request: Request, status: int, data: bytes = b"") -> bytes:
    """The reply frame: same tid, protocol and register; status byte; data."""
    header = struct.pack(">HHH", request.tid, request.protocol, 2 + len(data))
    return header + bytes([request.register, status]) + data


def feedback_frame(request: Request, kind: int = 2, result: int = 0, time_us: int = 0) -> bytes:
    """An unsolicited feedback frame (byte 6 = 0xFF) telling that `request`'s task ended."""
    body = bytes([0, kind, request.register]) + struct.pack(">HBQ", 0, result, time_us)
    return (
        struct.pack(">HHH", request.tid, request.protocol, 1 + len(body))
        + bytes([FEEDBACK_REGISTER])
        + body
    )


@dataclass
class ReportFields:
    """What one report says (wire units: mm, rad, kg). Fields the SDK ignores keep defaults."""

    state: int = 4
    mode: int = 0
    cmdnum: int = 0
    joints: Sequence[float] = (0.0,) * 7
    pose: Sequence[float] = (0.0,) * 6
    torques: Sequence[float] = (0.0,) * 7
    brake_bits: int = 0
    enable_bits: int = 0
    error: int = 0
    warning: int = 0
    tcp_offset: Sequence[float] = (0.0,) * 6
    tcp_load: Sequence[float] = (0.0,) * 4
    collision_sensitivity: int = 3
    teach_sensitivity: int = 3
    device_type: int = 6
    axis: int = 6
    version: str = "v2.6.0"
    tcp_speed_range: tuple[float, float] = (0.1, 1000.0)
    counter: int = 0
    axis_angle: Sequence[float] = (0.0,) * 3
    reduced_mode: bool = False
    fence_mode: bool = False
    boundary_mm: Sequence[int] = (9999, -9999, 9999, -9999, 9999, -9999)
    reduced_tcp_speed: float = 0.0
    reduced_joint_speed: float = 0.0
    joint_speeds: Sequence[float] = (0.0,) * 7
    tcp_speed: float = 0.0


def rich_report(f: ReportFields) -> bytes:
    """A 587-byte 30002 report (the SDK's `_Report30002DataStructure` layout)."""
    if not (0 <= f.state <= 9 and 0 <= f.mode <= 11):
        raise ValueError(f"the SDK drops reports with state {f.state} / mode {f.mode}")
    b = bytearray(RICH_REPORT_SIZE)
    struct.pack_into(">IBH", b, 0, RICH_REPORT_SIZE, (f.mode << 4) | f.state, f.cmdnum)
    b[7:35] = fp32(_pad(f.joints, 7))
    b[35:59] = fp32(_pad(f.pose, 6))
    b[59:87] = fp32(_pad(f.torques, 7))
    b[87:91] = bytes([f.brake_bits, f.enable_bits, f.error & 0xFF, f.warning & 0xFF])
    b[91:115] = fp32(_pad(f.tcp_offset, 6))
    b[115:131] = fp32(_pad(f.tcp_load, 4))
    b[131:133] = bytes([f.collision_sensitivity, f.teach_sensitivity])
    b[133:145] = fp32((0.0, 0.0, -1.0))
    b[145:151] = bytes([f.device_type, f.axis, 0xAA, 0x55, 0, 0])
    version = f.version.encode()[:29]
    b[151 : 151 + len(version)] = version
    b[181:201] = fp32((1000.0, 1.0, 50000.0, *f.tcp_speed_range))
    b[201:221] = fp32((20.0, 0.01, 20.0, 0.0001, 4.0))
    b[221:229] = fp32((2.3, 2.7))
    b[245:252] = bytes([30] * 7)
    b[252:284] = fp32((f.tcp_speed, *_pad(f.joint_speeds, 7)))
    struct.pack_into(">I", b, 284, f.counter & 0xFFFFFFFF)
    b[341:355] = struct.pack(">7H", *([4800] * 7))
    b[482:494] = fp32(_pad(f.axis_angle, 3))
    b[494] = int(f.reduced_mode) | (int(f.fence_mode) << 1)
    b[495] = int(f.reduced_mode)
    b[496:508] = struct.pack(">6h", *(max(-32768, min(32767, int(v))) for v in f.boundary_mm))
    b[508:516] = fp32((f.reduced_tcp_speed, f.reduced_joint_speed))
    b[516:572] = fp32([v for _ in range(7) for v in (-2.0 * math.pi, 2.0 * math.pi)])
    b[572] = int(f.fence_mode)
    return bytes(b)


def normal_report(f: ReportFields) -> bytes:
    """The 145-byte 30001 report: the rich report's common head with its own length."""
    head = bytearray(rich_report(f)[:NORMAL_REPORT_SIZE])
    struct.pack_into(">I", head, 0, NORMAL_REPORT_SIZE)
    return bytes(head)


def _pad(values: Sequence[float], n: int) -> list[float]:
    out = [float(v) for v in values][:n]
    return out + [0.0] * (n - len(out))


def version_data(version: str) -> bytes:
    """GET_VERSION data: the string NUL-padded to 40 bytes (an empty string hangs the SDK)."""
    raw = version.encode()
    if not raw or len(raw) >= VERSION_DATA_SIZE:
        raise ValueError(f"version string must be 1..39 bytes, got {version!r}")
    return raw.ljust(VERSION_DATA_SIZE, b"\0")
