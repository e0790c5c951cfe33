"""`aimg run --sim --arm xarm-sdk`: the servo process drives the sim cell's arm through the
unmodified xArm SDK and the loopback controller emulator, the path a real xArm takes."""

from __future__ import annotations

import pytest
from artifact_fixtures import SIM_TINY

from aimg.robot.remote import RemoteDevice
from aimg.runtime.sim_run import EpisodeContext, RunSettings, run_sim

pytest.importorskip("xarm.wrapper")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("cell"),
    pytest.mark.usefixtures("port_502"),
]

SETTINGS = RunSettings(
    task="reach", episodes=1, seed=31, model=SIM_TINY, episode_s=5.0, arm="xarm-sdk"
)


def test_the_expert_reaches_through_the_sdk_and_the_controller_sees_a_steady_stream():
    report = run_sim(
        RunSettings(**{**SETTINGS.__dict__, "planner": "expert", "episodes": 2}), progress=False
    )
    assert report["arm"] == "xarm-sdk"
    # The measured comparison is in the closing note; here the path must work, not be perfect
    # on a loaded CI worker (a late episode start can cost one reach).
    assert report["success_rate"] >= 0.5, report["per_episode"]
    assert report["out_of_limit_commands"] == 0, report["violations"]
    stream = report["emulator_servo"]
    assert stream["commands"] > 300  # 2 episodes of 5 s at 100 Hz, minus the hold at the end
    assert 8.0 < stream["gap_ms"]["p50"] < 12.0  # the loop's period reaches the controller


def test_a_controller_error_holds_the_arm_with_its_code_and_meaning():
    def collide(ctx: EpisodeContext) -> None:
        if ctx.elapsed_s >= 1.0 and not getattr(collide, "done", False):
            RemoteDevice(ctx.cell.channel, "xarm_emulator").call("inject_error", 31)
            collide.done = True

    report = run_sim(
        RunSettings(**{**SETTINGS.__dict__, "planner": "expert"}), progress=False, on_tick=collide
    )
    assert report["safety_events"].get("arm_error", 0) >= 1, report["safety_events"]
    messages = report["safety_event_examples"]["arm_error"]
    assert any("C31 collision caused abnormal current" in m for m in messages), messages
    assert report["out_of_limit_commands"] == 0, report["violations"]
