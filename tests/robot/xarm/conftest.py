"""The xArm emulator in its own process (the SDK's process-wide socket timeout stays here).

Parallel runs cannot collide: every emulator listens on TCP at its own random 127.x.y.z address
(we bind port 502, so this needs root or CAP_NET_BIND_SERVICE), and `XArm` passes
`forbid_uds=True` unless told otherwise, so a unix-socket emulator elsewhere on the machine
(machine-global paths) cannot hijack these connections. The one test that uses the unix
sockets sits in its own `xdist_group`.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterator

import pytest

from aimg.robot.remote import RemoteDevice, spawn_server
from aimg.robot.xarm.arm import XArm, XArmConfig
from aimg.robot.xarm.emulator import make_emulator_devices


@pytest.fixture(autouse=True)
def _restore_socket_timeout() -> Iterator[None]:
    """XArmAPI sets socket.setdefaulttimeout(1) for the whole process: undo it for other tests."""
    before = socket.getdefaulttimeout()
    yield
    socket.setdefaulttimeout(before)


@pytest.fixture(scope="module")
def emulator_server(port_502: None) -> Iterator[RemoteDevice]:
    """One emulator process (real-time PyBullet world) per test module."""
    channel = spawn_server(functools.partial(make_emulator_devices, host=None))
    yield RemoteDevice(channel, "emulator")
    channel.close()


@pytest.fixture
def emulator(emulator_server: RemoteDevice) -> RemoteDevice:
    """The module's emulator, power-cycled (fresh world, default settings, no faults)."""
    emulator_server.call("reset", 0)
    return emulator_server


@pytest.fixture
def host(emulator: RemoteDevice) -> str:
    """The emulator's address: what `XArmConfig.ip` gets."""
    return emulator.call("host")


@pytest.fixture
def arm(host: str) -> Iterator[XArm]:
    """A connected, enabled XArm on the emulator (default safety settings)."""
    xarm = XArm(XArmConfig(host))
    xarm.connect()
    xarm.enable()
    yield xarm
    xarm.disconnect()
