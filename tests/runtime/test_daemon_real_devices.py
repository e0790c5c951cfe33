"""The daemon on `devices.kind: xarm`, the configuration of a real cell, with the devices it
can have here: the unmodified xArm SDK talking to the loopback controller emulator, and
RealSense cameras replayed by librealsense from an `aimg realsense record` directory. Every
mapped controller error must reach the daemon's status as a safe stop, with code and meaning."""

from __future__ import annotations

import functools

import pytest
import yaml
from daemon_fixtures import REPO_ROOT, START_TIMEOUT_S, TOKEN, Daemon

from aimg.robot.remote import RemoteDevice, spawn_server
from aimg.robot.xarm.codes import MAPPED_ERROR_CODES, error_meaning
from aimg.runtime.daemon_bench import spawn_daemon, wait_healthy

rs = pytest.importorskip("pyrealsense2")
pytest.importorskip("xarm.wrapper")
from recorded_cell import record_cameras, write_rig_calibration  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("cell"),
    pytest.mark.usefixtures("port_502"),
]

SIZE = 64
ERROR_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def cell(tmp_path_factory):
    from aimg.robot.xarm.emulator import make_emulator_devices

    tmp = tmp_path_factory.mktemp("real-cell")
    serials = record_cameras(tmp / "recording", SIZE)
    write_rig_calibration(tmp / "calibration.yaml", serials, SIZE)
    channel = spawn_server(functools.partial(make_emulator_devices, host=None))
    emulator = RemoteDevice(channel, "emulator")
    config = tmp / "cell.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "emulated-xarm-cell",
                "devices": {
                    "kind": "xarm",
                    "xarm": {"ip": emulator.call("host")},
                    "camera_recording": str(tmp / "recording"),
                },
                "calibration": str(tmp / "calibration.yaml"),
                # the recorded test pattern changes every frame: no static scene to check
                # (tests/calib/test_real_cell_commands.py and test_daemon_drift.py cover it)
                "drift_check": {"enabled": False},
                "model": {"path": str(REPO_ROOT / "assets" / "sim-tiny")},
                "rates": {"camera_fps": 5},
                "recording": {"enabled": False},
            }
        )
    )
    process, url, log_path = spawn_daemon(config, tmp, TOKEN, cwd=REPO_ROOT)
    daemon = Daemon(process, url, TOKEN, tmp / "episodes", log_path, tmp / "token")
    try:
        wait_healthy(process, url, log_path, START_TIMEOUT_S)
        yield daemon, emulator
    finally:
        daemon.stop()
        channel.close()


def test_the_daemon_runs_a_real_cell_config_on_the_emulator_and_recorded_cameras(cell):
    daemon, _ = cell
    status = daemon.status()
    assert status["state"] == "idle", status
    assert all(p["alive"] for p in status["processes"].values()), status["processes"]
    assert status["arm"]["error_code"] == 0
    assert status["rates_hz"]["camera"] > 0


@pytest.mark.parametrize("code", MAPPED_ERROR_CODES)
def test_every_mapped_controller_error_is_a_safe_stop_with_its_meaning(cell, code):
    daemon, emulator = cell
    daemon.make_idle()
    since = daemon.status()["uptime_s"]
    emulator.call("inject_error", code)
    title = error_meaning(code).split(":")[0]  # "C31 collision caused abnormal current"

    def reported(status: dict) -> bool:
        return status["arm"]["error_code"] == code and any(
            e["kind"] == "arm_error" and title in e["message"] for e in status["events"]
        )

    status = daemon.wait_for(reported, ERROR_TIMEOUT_S, f"C{code} in the status")
    assert status["servo"]["mode"] == "error", status["servo"]  # the loop holds, latched
    assert status["uptime_s"] >= since
    emulator.call("release_error")
    reset = daemon.post("/reset")
    assert reset.status_code == 200, reset.text
    daemon.wait_for(lambda s: s["arm"]["error_code"] == 0, ERROR_TIMEOUT_S, "the error cleared")
