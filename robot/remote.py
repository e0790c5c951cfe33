"""Use an `Arm` or a `CameraRig` that lives in another process, through a multiprocessing pipe.

The runtime runs the arm in its own process (DESIGN.md "Processes"). A server process builds its
devices with a picklable factory and answers calls; `RemoteArm` / `RemoteCameraRig` are the
client-side proxies and implement the same interfaces, so callers cannot tell the difference.
Several devices may share one server (the simulator's arm and cameras share one world):

    channel = spawn_server(functools.partial(make_sim_devices, real_time=True))
    arm, rig = RemoteArm(channel, "arm"), RemoteCameraRig(channel, "rig")

Errors raised by a device are raised again in the client with the same type when it is one of
the interface's own (`ArmError`, `ValueError`), otherwise as `RemoteError` with the message.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback
from collections.abc import Callable, Mapping
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from aimg.geometry import Camera
from aimg.robot.interfaces import Arm, ArmError, ArmState, CameraRig, RigFrames

DeviceFactory = Callable[[], Mapping[str, object]]

_ARM_METHODS = frozenset(
    {
        "connect",
        "disconnect",
        "is_connected",
        "enable",
        "read_state",
        "servo",
        "set_gripper",
        "stop",
        "emergency_stop",
        "clear_errors",
    }
)
_RIG_METHODS = frozenset({"connect", "disconnect", "view_names", "cameras", "read"})
_PROPERTIES = frozenset({"is_connected", "view_names", "cameras"})
_ERRORS: dict[str, type[Exception]] = {"ArmError": ArmError, "ValueError": ValueError}


class RemoteError(RuntimeError):
    """A device in the server process raised an unexpected error (message has its traceback)."""


def serve(factory: DeviceFactory, connection: Connection) -> None:
    """Build the devices and answer `(device, method, args, kwargs)` calls until told to stop.

    Replies are `("ok", result)` or `("error", type name, message)`. A `None` message or a closed
    pipe ends the loop; every device that has `disconnect` is then disconnected.
    """
    devices = dict(factory())
    try:
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                break
            if message is None:
                connection.send(("ok", None))
                break
            device, method, args, kwargs = message
            try:
                target = devices[device]
                allowed = _ARM_METHODS if isinstance(target, Arm) else _RIG_METHODS
                if method not in allowed:
                    raise ValueError(f"{method!r} is not part of the {device!r} interface")
                value = getattr(target, method)
                result = value if method in _PROPERTIES else value(*args, **kwargs)
                connection.send(("ok", result))
            except Exception as exc:  # the client decides what to raise
                detail = (
                    f"{exc}\n{traceback.format_exc()}"
                    if type(exc).__name__ not in _ERRORS
                    else str(exc)
                )
                connection.send(("error", type(exc).__name__, detail))
    finally:
        for device in devices.values():
            disconnect = getattr(device, "disconnect", None)
            if disconnect is not None:
                disconnect()


class Channel:
    """The client end of a server: one request at a time (thread-safe), plus process control."""

    def __init__(self, connection: Connection, process: multiprocessing.Process | None = None):
        self._connection = connection
        self._process = process
        self._lock = threading.Lock()

    def call(self, device: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._connection.closed:
                raise ArmError("the remote device server is closed")
            self._connection.send((device, method, args, kwargs))
            try:
                reply = self._connection.recv()
            except EOFError as exc:
                raise RemoteError("the remote device server died (no reply)") from exc
        if reply[0] == "ok":
            return reply[1]
        _, name, detail = reply
        raise _ERRORS.get(name, RemoteError)(detail)

    @property
    def server_alive(self) -> bool:
        """Whether the server process (if this channel started one) is still running."""
        return self._process is not None and self._process.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the server to disconnect its devices and exit; then wait for its process."""
        with self._lock:
            if not self._connection.closed:
                try:
                    self._connection.send(None)
                    self._connection.recv()
                except (EOFError, OSError, BrokenPipeError):
                    pass
                self._connection.close()
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout_s)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_server(factory: DeviceFactory) -> Channel:
    """Start `serve(factory, ...)` in a fresh (spawned) process; returns its channel."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve, args=(factory, child), daemon=True)
    process.start()
    child.close()
    return Channel(parent, process)


class _RemoteDevice:
    """Client side of one device behind `channel`: forwards calls to the server's `name`.

    Listed before the interface in the proxies' bases, so its `connect` / `disconnect`
    implement the interface's abstract methods.
    """

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel = channel
        self._name = name

    def _call(self, method: str, *args: Any) -> Any:
        return self._channel.call(self._name, method, *args)

    def connect(self) -> None:
        self._call("connect")

    def disconnect(self) -> None:
        self._call("disconnect")


class RemoteArm(_RemoteDevice, Arm):
    """An `Arm` whose implementation runs in the server behind `channel` (device `name`)."""

    def __init__(self, channel: Channel, name: str = "arm") -> None:
        super().__init__(channel, name)

    @property
    def is_connected(self) -> bool:
        return bool(self._call("is_connected"))

    def enable(self) -> None:
        self._call("enable")

    def read_state(self) -> ArmState:
        return self._call("read_state")

    def servo(self, tool_pose: np.ndarray) -> None:
        self._call("servo", np.asarray(tool_pose, dtype=np.float64))

    def set_gripper(self, openness: float) -> None:
        self._call("set_gripper", float(openness))

    def stop(self) -> None:
        self._call("stop")

    def emergency_stop(self) -> None:
        self._call("emergency_stop")

    def clear_errors(self) -> None:
        self._call("clear_errors")


class RemoteCameraRig(_RemoteDevice, CameraRig):
    """A `CameraRig` whose implementation runs in the server behind `channel` (device `name`)."""

    def __init__(self, channel: Channel, name: str = "rig") -> None:
        super().__init__(channel, name)

    @property
    def view_names(self) -> tuple[str, ...]:
        return tuple(self._call("view_names"))

    @property
    def cameras(self) -> dict[str, Camera]:
        return dict(self._call("cameras"))

    def read(self) -> RigFrames:
        return self._call("read")
