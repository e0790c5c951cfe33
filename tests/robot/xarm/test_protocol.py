"""The wire format the emulator speaks, checked against the SDK's own parsers where it has them."""

from __future__ import annotations

import struct

import pytest

from aimg.robot.interfaces import ArmErrorCode
from aimg.robot.xarm import protocol as wire
from aimg.robot.xarm.codes import MAPPED_ERROR_CODES, error_info, error_meaning


def test_split_requests_reassembles_frames_across_tcp_segments():
    frame_a = struct.pack(">HHHB", 7, 3, 2, wire.Reg.SET_STATE) + b"\x00"
    frame_b = struct.pack(">HHHB", 8, 3, 1, wire.Reg.GET_STATE)
    buffer = bytearray(frame_a[:5])
    assert wire.split_requests(buffer) == []
    buffer += frame_a[5:] + frame_b[:3]
    (first,) = wire.split_requests(buffer)
    assert (first.tid, first.protocol, first.register, first.payload) == (7, 3, 12, b"\x00")
    buffer += frame_b[3:]
    (second,) = wire.split_requests(buffer)
    assert (second.tid, second.register, second.payload) == (8, 13, b"")
    assert buffer == bytearray()


def test_reply_echoes_tid_protocol_and_register_with_the_status_byte():
    request = wire.Request(tid=65535, protocol=3, register=wire.Reg.GET_ERROR, payload=b"")
    frame = wire.reply(request, wire.STATUS_ERROR, bytes([31, 0]))
    assert struct.unpack(">HHH", frame[:6]) == (65535, 3, 4)
    assert frame[6:] == bytes([15, 0x40, 31, 0])


def test_rich_report_is_parsed_by_the_sdk_into_the_same_values():
    """The SDK's own 30002 struct decodes what `rich_report` encodes (mm, rad, LE floats)."""
    report = pytest.importorskip("xarm.x3.report")
    fields = wire.ReportFields(
        state=2,
        mode=1,
        joints=[0.1, -0.2, 0.3, 0.0, 1.0, -1.0, 0.0],
        pose=[300.0, -20.0, 250.0, 3.1, 0.1, -0.2],
        enable_bits=0x3F,
        error=35,
        warning=11,
        tcp_offset=[0.0, 0.0, 172.0, 0.0, 0.0, 0.0],
        tcp_load=[0.82, 0.0, 0.0, 48.0],
        collision_sensitivity=4,
        reduced_mode=True,
        boundary_mm=[450, 120, 500, -500, 650, -10],
        reduced_tcp_speed=250.0,
    )
    packet = wire.rich_report(fields)
    assert len(packet) == wire.RICH_REPORT_SIZE == struct.unpack(">I", packet[:4])[0]
    assert packet[4] == (1 << 4) | 2 and packet[88:91] == bytes([0x3F, 35, 11])
    assert wire.read_fp32(packet, 6, 35) == pytest.approx(fields.pose, abs=1e-4)
    assert packet[131] == 4 and packet[495] == 1
    assert list(struct.unpack(">6h", packet[496:508])) == [450, 120, 500, -500, 650, -10]
    assert wire.read_fp32(packet, 1, 508) == [250.0]
    parsed = report.ReportDataStructure.create(wire.REPORT_RICH_PORT, is_radian=True)
    assert len(parsed) == len(packet)
    parsed.update(packet)
    assert parsed.get("data_size") == wire.RICH_REPORT_SIZE
    assert parsed.get("actual_tcp_pose") == pytest.approx(fields.pose, abs=1e-4)
    assert (parsed.get("error_code"), parsed.get("warn_code")) == (35, 11)
    assert parsed.get("collision_sens") == 4 and parsed.get("is_reduced_mode") == 1
    assert parsed.get("reduced_tcp_boundary") == [[120, 450], [-500, 500], [-10, 650]]
    assert parsed.get("tcp_offset") == pytest.approx(fields.tcp_offset, abs=1e-4)
    assert parsed.get("reduced_tcp_max_speed") == pytest.approx(250.0)


def test_normal_report_is_the_rich_head_with_its_own_length():
    packet = wire.normal_report(wire.ReportFields(state=2, error=31))
    assert len(packet) == wire.NORMAL_REPORT_SIZE == struct.unpack(">I", packet[:4])[0]
    assert packet[89] == 31


def test_report_refuses_states_the_sdk_would_drop_the_socket_for():
    with pytest.raises(ValueError, match="state"):
        wire.rich_report(wire.ReportFields(state=12))


def test_version_data_is_nul_padded_and_never_empty():
    assert wire.version_data("6,6,XI1304000001,AC1303000001,v2.6.0").endswith(b"\0")
    assert len(wire.version_data("v2.6.0")) == 40
    with pytest.raises(ValueError):
        wire.version_data("")


def test_feedback_frame_layout_is_what_the_sdk_reads():
    request = wire.Request(tid=42, protocol=3, register=wire.Reg.FEEDBACK_CHECK, payload=b"")
    frame = wire.feedback_frame(request, kind=2, result=0, time_us=123)
    assert struct.unpack(">H", frame[:2])[0] == 42 and frame[6] == 0xFF
    assert struct.unpack(">H", frame[4:6])[0] == len(frame) - 6
    assert (frame[8], frame[9], frame[12]) == (2, wire.Reg.FEEDBACK_CHECK, 0)


@pytest.mark.parametrize("code", [1, 2, 3, 21, 22, 23, 24, 31, 35])
def test_required_controller_codes_map_to_arm_error_codes_with_a_meaning(code):
    info = error_info(code)
    assert info.arm_code is not None and int(info.arm_code) == code
    assert code in MAPPED_ERROR_CODES
    assert error_meaning(code).startswith(f"C{code} ") and ":" in error_meaning(code)


def test_unknown_and_host_side_codes_still_say_something():
    assert error_info(99).arm_code is None and "C99" in error_meaning(99)
    assert error_info(13).title.endswith("joint 3")
    assert error_info(1001).arm_code == ArmErrorCode.REPORT_STALE
