"""Use an `Arm` or a `CameraRig` that lives in another process, through a multiprocessing pipe.

The runtime runs the arm in its own process (DESIGN.md "Processes"). A server process builds its
devices with a picklable factory and answers calls; `RemoteArm` / `RemoteCameraRig` are the
client-side proxies and implement the same interfaces, so callers cannot tell the difference.
Several devices may share one server (the simulator's arm and cameras share one world):

    channel = spawn_server(functools.partial(make_sim_devices, real_time=True))
    arm, rig = RemoteArm(channel, "arm"), RemoteCameraRig(channel, "rig")

Devices other than arms and rigs (the simulator's episode supervisor) name the methods a client
may call in an `exposed_methods` attribute; `RemoteDevice.call` reaches them. Any other call is
refused, as is a method outside the `Arm` / `CameraRig` interface.

A server started with `spawn_server(factory, listen=True)` also accepts further clients on a
unix socket (`channel.address`, a picklable `ServerAddress` with a random auth key): another
process opens its own channel with `address.connect()`, and every connection is answered by its
own thread, so a slow client (a camera process fetching snapshots) never queues behind another
(the servo process). Closing such an extra channel closes only that connection; closing the
channel `spawn_server` returned stops the server.

Errors raised by a device are raised again in the client with the same type when it is one of
the interface's own (`ArmError`, `ValueError`), otherwise as `RemoteError` with the message.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import AuthenticationError, Client, Connection, Listener
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


@dataclass(frozen=True)
class ServerAddress:
    """Where a listening device server accepts more clients: a unix socket and its auth key.

    Picklable, so a factory given to another process can carry it and connect from there.
    """

    path: str
    authkey: bytes = field(repr=False)

    def connect(self, timeout_s: float = 30.0) -> Channel:
        """Open a new channel to the server, waiting up to `timeout_s` for it to listen."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return Channel(Client(self.path, family="AF_UNIX", authkey=self.authkey))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                if time.monotonic() > deadline:
                    raise RemoteError(
                        f"no device server listens at {self.path} after {timeout_s:g} s: "
                        "start it with spawn_server(..., listen=True) and keep it running"
                    ) from exc
                time.sleep(0.05)


def _allowed_methods(device: object) -> frozenset[str]:
    if isinstance(device, Arm):
        return _ARM_METHODS
    if isinstance(device, CameraRig):
        return _RIG_METHODS
    return frozenset(getattr(device, "exposed_methods", ()))


def _answer(devices: Mapping[str, object], connection: Connection) -> bool:
    """Answer calls on one connection; True when the client asked the server to stop."""
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return False
        if message is None:
            with contextlib.suppress(OSError):
                connection.send(("ok", None))
            return True
        device, method, args, kwargs = message
        try:
            target = devices[device]
            if method not in _allowed_methods(target):
                raise ValueError(f"{method!r} is not part of the {device!r} interface")
            value = getattr(target, method)
            is_value = method in _PROPERTIES or not callable(value)
            result = value if is_value else value(*args, **kwargs)
            reply: tuple = ("ok", result)
        except Exception as exc:  # the client decides what to raise
            detail = (
                f"{exc}\n{traceback.format_exc()}"
                if type(exc).__name__ not in _ERRORS
                else str(exc)
            )
            reply = ("error", type(exc).__name__, detail)
        try:
            connection.send(reply)
        except (OSError, ValueError):
            return False


def _answer_extra(devices: Mapping[str, object], connection: Connection) -> None:
    with connection:
        _answer(devices, connection)


def _accept(listener: Listener, devices: Mapping[str, object]) -> None:
    """Give every client that connects to `listener` its own answering thread."""
    while True:
        try:
            connection = listener.accept()
        except AuthenticationError:
            continue
        except (OSError, EOFError):
            return
        threading.Thread(target=_answer_extra, args=(devices, connection), daemon=True).start()


def serve(
    factory: DeviceFactory, connection: Connection, address: ServerAddress | None = None
) -> None:
    """Build the devices and answer `(device, method, args, kwargs)` calls until told to stop.

    Replies are `("ok", result)` or `("error", type name, message)`. A `None` message or a closed
    pipe on `connection` ends the server; every device that has `disconnect` is then
    disconnected. With an `address`, the server also listens there for more clients, each
    answered by its own thread (a `None` from one of them closes only its connection).
    """
    devices = dict(factory())
    listener = None
    try:
        if address is not None:
            listener = Listener(address.path, family="AF_UNIX", authkey=address.authkey)
            threading.Thread(target=_accept, args=(listener, devices), daemon=True).start()
        _answer(devices, connection)
    finally:
        if listener is not None:
            listener.close()
        for device in devices.values():
            disconnect = getattr(device, "disconnect", None)
            if disconnect is not None:
                disconnect()


class Channel:
    """The client end of a server: one request at a time (thread-safe), plus process control.

    `address` is where the server accepts more channels (None unless it was spawned listening).
    """

    def __init__(
        self,
        connection: Connection,
        process: multiprocessing.Process | None = None,
        address: ServerAddress | None = None,
    ):
        self._connection = connection
        self._process = process
        self.address = address
        self._lock = threading.Lock()

    def call(self, device: str, method: str, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if self._connection.closed:
                raise ArmError("the remote device server is closed")
            try:
                self._connection.send((device, method, args, kwargs))
                reply = self._connection.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError) as exc:
                raise RemoteError("the remote device server died (no reply)") from exc
        if reply[0] == "ok":
            return reply[1]
        _, name, detail = reply
        raise _ERRORS.get(name, RemoteError)(detail)

    @property
    def process(self) -> multiprocessing.Process | None:
        """The server process this channel started (None for `ServerAddress.connect()`)."""
        return self._process

    @property
    def server_alive(self) -> bool:
        """Whether the server process (if this channel started one) is still running."""
        return self._process is not None and self._process.is_alive()

    def close(self, timeout_s: float = 10.0) -> None:
        """Ask the server to disconnect its devices and exit; then wait for its process.

        On a channel from `ServerAddress.connect()` this closes only that connection.
        """
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
            if self.address is not None:
                shutil.rmtree(os.path.dirname(self.address.path), ignore_errors=True)

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spawn_server(factory: DeviceFactory, listen: bool = False) -> Channel:
    """Start `serve(factory, ...)` in a fresh (spawned) process; returns its channel.

    With `listen`, the server also accepts more channels at `channel.address` (a unix socket in
    a private temporary directory, removed again by `channel.close()`).
    """
    address = None
    if listen:
        directory = tempfile.mkdtemp(prefix="aimg-devices-")
        address = ServerAddress(os.path.join(directory, "server.sock"), os.urandom(32))
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=serve, args=(factory, child, address), daemon=True)
    process.start()
    child.close()
    return Channel(parent, process, address)


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


class RemoteDevice:
    """Any device behind `channel` (device `name`): `call` reaches its `exposed_methods`."""

    def __init__(self, channel: Channel, name: str) -> None:
        self._channel = channel
        self._name = name

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self._channel.call(self._name, method, *args, **kwargs)


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
