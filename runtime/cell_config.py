"""The cell config of `aimg daemon`: one YAML file that says what this robot cell is.

Devices (the simulator, or an xArm and RealSense cameras), calibration, the model, rates,
safety limits, recording and the API. It is validated once, at start, into frozen dataclasses;
every error names the file, the key and what to write instead, so a typo never surfaces as a
crash in the middle of a task. `configs/cell-sim.yaml` and `configs/cell-xarm-example.yaml` are
the two presets.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aimg.config import ConfigError, from_dict, load_yaml, to_dict
from aimg.robot.realsense.rig import RealSenseCamera  # plain records: no SDK is imported
from aimg.robot.xarm.arm import XArmConfig
from aimg.runtime.waypoints import GRIPPER_RAMP_S

DEFAULT_PORT = 8787
DEFAULT_TOKEN_FILE = Path("~/.config/aimg/token")


@dataclass(frozen=True)
class SimDevices:
    """The PyBullet cell: `task` decides the scenes it lays out (see `scene_for`)."""

    views: int = 2
    image_size: int = 128
    task: Literal["reach", "pick"] = "reach"
    scene_seed: int = 31000
    #: sim: the servo process drives the simulated arm directly; xarm-sdk: through the
    #: unmodified xArm SDK and the loopback controller emulator (aimg.robot.xarm), as a real
    #: xArm is driven.
    arm: Literal["sim", "xarm-sdk"] = "sim"

    def __post_init__(self) -> None:
        if not 1 <= self.views <= 4:
            raise ValueError(f"views must be 1..4 (the sim rig has 4 cameras), got {self.views}")
        if not 32 <= self.image_size <= 512:
            raise ValueError(f"image_size must be 32..512 px, got {self.image_size}")


@dataclass(frozen=True)
class XArmDevice(XArmConfig):
    """A UFACTORY xArm at `ip`: the driver's own `XArmConfig` (the firmware safety aimg sets at
    connect and reads back, in metres, m/s and radians; see docs/hardware.md) plus the model."""

    model: Literal["xarm5", "xarm6", "xarm7", "lite6", "850"] = "xarm6"

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.ip)
        except ValueError as exc:
            raise ValueError(f"ip {self.ip!r} is not an IP address (e.g. 192.168.1.185)") from exc
        super().__post_init__()


@dataclass(frozen=True)
class Devices:
    kind: Literal["sim", "xarm"] = "sim"
    sim: SimDevices = field(default_factory=SimDevices)
    xarm: XArmDevice | None = None
    cameras: tuple[RealSenseCamera, ...] = ()  # name (the model's view), serial, size, fps
    #: an `aimg realsense record` directory: its cameras (looped) instead of live ones
    camera_recording: Path | None = None
    #: lock every colour sensor's exposure (sensor units) / white balance (kelvin); null: auto
    camera_exposure: float | None = None
    camera_white_balance: float | None = None
    #: K from the device (factory) or from the calibration file (`aimg calib intrinsics`)
    camera_intrinsics: Literal["device", "calibration"] = "device"

    def __post_init__(self) -> None:
        if self.kind == "xarm":
            if self.xarm is None:
                raise ValueError("kind is xarm but there is no xarm section: add `xarm: {ip: ...}`")
            if not self.cameras and self.camera_recording is None:
                raise ValueError(
                    "kind is xarm but no cameras are listed: add `cameras:` (or "
                    "`camera_recording:` to replay an `aimg realsense record` directory)"
                )
            names = [c.name for c in self.cameras]
            if len(set(names)) != len(names):
                raise ValueError(f"camera names repeat: {names}")


@dataclass(frozen=True)
class ModelSection:
    """A checkpoint directory (`aimg train` output) or an exported artifact (`aimg export`)."""

    path: Path = Path("assets/sim-tiny-16")
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = "auto"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class DriftCheck:
    """Before every task, each camera's frame is compared with its static-scene reference in
    the calibration file (`aimg.calib.scene_drift`); a camera that moved refuses the task.
    On whenever a calibration file is set; `max_view_deg`: how far a camera's view may shift."""

    enabled: bool = True
    max_view_deg: float = 0.15

    def __post_init__(self) -> None:
        if not 0.01 <= self.max_view_deg <= 5.0:
            raise ValueError(f"max_view_deg must be in [0.01, 5] deg, got {self.max_view_deg}")


@dataclass(frozen=True)
class Rates:
    servo_hz: float = 100.0
    camera_fps: float = 10.0

    def __post_init__(self) -> None:
        if not 50.0 <= self.servo_hz <= 250.0:
            raise ValueError(f"servo_hz must be 50..250 (xArm servo mode), got {self.servo_hz}")
        if not 1.0 <= self.camera_fps <= 90.0:
            raise ValueError(f"camera_fps must be 1..90, got {self.camera_fps}")


@dataclass(frozen=True)
class SchedulerSection:
    """How plans are joined (see `aimg.runtime.scheduler.SchedulerConfig`)."""

    join: Literal["blend", "inpaint"] = "inpaint"
    blend_s: float = 0.3
    ensemble_s: float = 4.0
    own_grasp_height: bool = True
    replan_period_s: float | None = None
    gripper_settle_s: float = 1.0
    gripper_ramp_s: float | None = GRIPPER_RAMP_S

    def __post_init__(self) -> None:
        if not 0.0 < self.blend_s <= 2.0:
            raise ValueError(f"blend_s must be in (0, 2] s, got {self.blend_s}")
        if not 0.0 <= self.ensemble_s <= 30.0:
            raise ValueError(f"ensemble_s must be in [0, 30] s, got {self.ensemble_s}")
        if self.replan_period_s is not None and not 0.0 <= self.replan_period_s <= 5.0:
            raise ValueError(f"replan_period_s must be in [0, 5] s, got {self.replan_period_s}")
        if not 0.0 <= self.gripper_settle_s <= 5.0:
            raise ValueError(f"gripper_settle_s must be in [0, 5] s, got {self.gripper_settle_s}")
        if self.gripper_ramp_s is not None and not 0.0 < self.gripper_ramp_s <= 5.0:
            raise ValueError(
                f"gripper_ramp_s must be in (0, 5] s (about your hand's time to shut) or null "
                f"(over the model's frame spacing), got {self.gripper_ramp_s}"
            )


@dataclass(frozen=True)
class TasksSection:
    max_duration_s: float = 30.0
    limit_duration_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0.0 < self.max_duration_s <= self.limit_duration_s:
            raise ValueError(
                f"max_duration_s must be in (0, limit_duration_s={self.limit_duration_s}], "
                f"got {self.max_duration_s}"
            )


@dataclass(frozen=True)
class Recording:
    enabled: bool = True
    dir: Path = Path("runs/episodes/daemon")


@dataclass(frozen=True)
class Api:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    token_file: Path = DEFAULT_TOKEN_FILE
    max_body_bytes: int = 16384
    frame_rate_hz: float = 5.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if not 256 <= self.max_body_bytes <= 1 << 20:
            raise ValueError(f"max_body_bytes must be 256..1048576, got {self.max_body_bytes}")
        if not 0.5 <= self.frame_rate_hz <= 30.0:
            raise ValueError(f"frame_rate_hz must be 0.5..30, got {self.frame_rate_hz}")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


@dataclass(frozen=True)
class Logging:
    format: Literal["json", "text"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True)
class CellConfig:
    name: str = "cell"
    devices: Devices = field(default_factory=Devices)
    calibration: Path | None = None
    drift_check: DriftCheck = field(default_factory=DriftCheck)
    model: ModelSection = field(default_factory=ModelSection)
    rates: Rates = field(default_factory=Rates)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    safety: dict[str, Any] = field(default_factory=dict)
    tasks: TasksSection = field(default_factory=TasksSection)
    recording: Recording = field(default_factory=Recording)
    api: Api = field(default_factory=Api)
    logging: Logging = field(default_factory=Logging)
    source: str = "defaults"

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_cell_config(path: str | Path, overrides: dict[str, Any] | None = None) -> CellConfig:
    """Read, merge `overrides` ("api.port" -> 9000) and validate a cell config; relative paths
    in it are relative to the working directory, `~` is expanded."""
    path = Path(path)
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: {key} must be a mapping to override {dotted}")
        section[leaf] = str(value) if isinstance(value, Path) else value
    data.pop("source", None)
    try:
        config = from_dict(CellConfig, data, where=str(path))
    except ConfigError as exc:  # "cell.yaml.model.backend: ..." -> "cell.yaml: model.backend: ..."
        raise ConfigError(str(exc).replace(f"{path}.", f"{path}: ", 1)) from None
    config = dataclasses.replace(config, source=str(path))
    return validate_cell(config, str(path))


def validate_cell(config: CellConfig, where: str) -> CellConfig:
    """The checks that span sections or need the file system; returns a config whose paths are
    expanded."""
    from aimg.runtime.safety import SafetyLimits

    try:
        SafetyLimits.from_dict(config.safety)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: safety: {exc}") from exc
    model_path = config.model.path.expanduser()
    if not model_path.exists():
        raise ConfigError(
            f"{where}: model.path: {model_path} does not exist; point it at a checkpoint "
            "directory (assets/sim-tiny) or an `aimg export onnx` output"
        )
    calibration = config.calibration.expanduser() if config.calibration else None
    if config.devices.kind == "xarm" and calibration is None:
        raise ConfigError(
            f"{where}: calibration: a real cell needs its camera calibration file; run "
            "`aimg calib` and set calibration: to the file it writes"
        )
    if calibration is not None and not calibration.is_file():
        raise ConfigError(f"{where}: calibration: {calibration} does not exist")
    recording = config.devices.camera_recording
    if recording is not None and not (recording.expanduser() / "manifest.json").is_file():
        raise ConfigError(
            f"{where}: devices.camera_recording: {recording} holds no manifest.json; point it at "
            "a directory `aimg realsense record --out DIR` wrote"
        )
    token_file = config.api.token_file.expanduser()
    if not config.api.loopback and not _readable_token(token_file):
        raise ConfigError(
            f"{where}: api.host {config.api.host} is not a loopback address and "
            f"api.token_file {token_file} holds no token: the daemon refuses to take commands "
            "from the network unauthenticated. Write a token (e.g. `openssl rand -hex 32 > "
            f"{token_file}; chmod 600 {token_file}`) or bind 127.0.0.1"
        )
    return dataclasses.replace(
        config,
        calibration=calibration,
        model=dataclasses.replace(config.model, path=model_path),
        recording=dataclasses.replace(config.recording, dir=config.recording.dir.expanduser()),
        api=dataclasses.replace(config.api, token_file=token_file),
    )


def _readable_token(path: Path) -> bool:
    try:
        return bool(path.read_text().strip())
    except OSError:
        return False


def load_or_create_token(path: Path) -> str:
    """The API token from `path`; on a loopback daemon a missing file is created with a fresh
    random token (mode 0600), so the first start works and `aimg ctl` finds it there."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        return token
    token = os.urandom(24).hex()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
