"""Cell configs: the presets load, every mistake names its key, the loopback rule holds."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from aimg.config import ConfigError
from aimg.runtime.cell_config import is_loopback, load_cell_config, load_or_create_token
from aimg.runtime.daemon import parse_settings

REPO = Path(__file__).resolve().parents[2]
SIM = REPO / "configs" / "cell-sim.yaml"
XARM = REPO / "configs" / "cell-xarm-example.yaml"


def test_the_sim_preset_loads_with_its_documented_values():
    config = load_cell_config(SIM)
    assert config.devices.kind == "sim"
    assert config.api.host == "127.0.0.1" and config.api.loopback
    assert config.model.path == Path("assets/sim-tiny-16")  # the distilled 16-step student
    assert config.rates.servo_hz == 100.0
    assert config.recording.enabled
    assert config.scheduler.replan_period_s is None  # the model's frame spacing
    assert config.scheduler.gripper_ramp_s == pytest.approx(0.35)  # the sim hand's travel


def test_the_xarm_example_is_valid_but_for_files_only_a_real_cell_has(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    calibration = tmp_path / "cell.json"
    calibration.write_text("{}")
    token = tmp_path / "token"
    token.write_text("abc\n")
    overrides = {
        "model.path": str(model),
        "calibration": str(calibration),
        "api.token_file": str(token),
    }
    config = load_cell_config(XARM, overrides)
    assert config.devices.kind == "xarm"
    assert config.devices.xarm.ip == "192.168.1.185"
    assert [c.name for c in config.devices.cameras] == ["front", "side"]
    assert config.devices.cameras[0].fps == 30
    assert config.devices.xarm.max_tcp_speed == pytest.approx(0.20)  # the firmware backstop
    assert config.devices.xarm.boundary_low == (0.12, -0.5, -0.01)
    assert not config.api.loopback


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.backend": "tensor"}, "model.backend"),
        ({"rates.servo_hz": 500}, "servo_hz must be 50..250"),
        ({"api.port": 70000}, "port must be 0..65535"),
        ({"api.prot": 1}, "unknown key(s) ['prot']"),
        ({"safety": {"max_sped_m_s": 1}}, "unknown safety limits ['max_sped_m_s']"),
        ({"model.path": "/no/such/model"}, "model.path: /no/such/model does not exist"),
        ({"devices.sim.views": 9}, "views must be 1..4"),
        ({"tasks.max_duration_s": 0}, "max_duration_s must be in"),
        ({"scheduler.replan_period_s": -1}, "replan_period_s must be in [0, 5] s"),
        ({"scheduler.gripper_ramp_s": 0}, "gripper_ramp_s must be in (0, 5] s"),
        ({"devices.xarm": {"ip": "not-an-ip"}}, "is not an IP address"),
        ({"devices.xarm": {"ip": "10.0.0.2", "collision_sensitivity": 7}}, "is 0..5"),
        (
            {"devices.xarm": {"ip": "10.0.0.2", "boundary_low": [1, 1, 1]}},
            "must be below boundary_high",
        ),
        ({"devices.camera_recording": "/no/such/recording"}, "holds no manifest.json"),
    ],
)
def test_a_mistake_names_the_key_and_the_file(overrides, message):
    with pytest.raises(ConfigError) as caught:
        load_cell_config(SIM, overrides)
    assert message in str(caught.value)
    assert str(SIM) in str(caught.value)


def test_a_real_cell_without_calibration_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="calibration"):
        load_cell_config(
            SIM,
            {
                "devices.kind": "xarm",
                "devices.xarm": {"ip": "10.0.0.2"},
                "devices.cameras": [{"name": "front", "serial": "1"}],
            },
        )


def test_a_network_address_needs_a_token_file_that_holds_a_token(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for token_file in (tmp_path / "missing", empty):
        with pytest.raises(ConfigError, match="not a loopback address"):
            load_cell_config(SIM, {"api.host": "0.0.0.0", "api.token_file": str(token_file)})
    good = tmp_path / "good"
    good.write_text("s3cret\n")
    config = load_cell_config(SIM, {"api.host": "0.0.0.0", "api.token_file": str(good)})
    assert not config.api.loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("::", False),
        ("robot.local", False),
    ],
)
def test_loopback_addresses(host, loopback):
    assert is_loopback(host) is loopback


def test_a_missing_token_file_is_created_private_and_reused(tmp_path):
    path = tmp_path / "config" / "aimg" / "token"
    token = load_or_create_token(path)
    assert len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(path) == token


def test_set_values_are_yaml_scalars():
    parsed = parse_settings(
        ["tasks.max_duration_s=60", "recording.enabled=false", "calibration=null"]
    )
    assert parsed == {"tasks.max_duration_s": 60, "recording.enabled": False, "calibration": None}
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_settings(["nonsense"])
