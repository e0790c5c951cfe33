"""Runtime commands: `aimg bench policy` (plan latency per backend)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer

from aimg.runtime.waypoints import GRIPPER_RAMP_S


def bench_policy(
    checkpoint: Path = typer.Option(
        Path("assets/sim-tiny"), help="Checkpoint directory (the torch backend runs it)."
    ),
    artifact: Path = typer.Option(
        None,
        help="Artifact directory exported from the checkpoint (`aimg export onnx CHECKPOINT "
        "--out DIR`); needed by onnxruntime and tensorrt.",
    ),
    backend: list[str] = typer.Option(
        None,
        "--backend",
        help="torch, onnxruntime or tensorrt; repeat to time several in one run (default: "
        "torch, plus onnxruntime when --artifact is given).",
    ),
    repeats: int = typer.Option(5, min=1, help="Timed plans per backend (medians reported)."),
    threads: int = typer.Option(None, min=1, help="CPU threads per backend (default: torch's)."),
    device: str = typer.Option("cpu", help="cpu or cuda[:N]."),
    official_5b: bool = typer.Option(
        False,
        "--official-5b",
        help="On a GPU, also time one bf16 denoiser evaluation of configs/official-5b.yaml at "
        "its real shapes with random weights (about 13 GB).",
    ),
    preset: Path = typer.Option(
        Path("configs/official-5b.yaml"), help="The preset --official-5b builds."
    ),
    as_json: bool = typer.Option(True, "--json/--no-json", help="Print JSON (default)."),
) -> None:
    """Time whole plans (text, cameras, encode, each denoiser call, decode) per backend."""
    from aimg.runtime.bench import official_step_benchmark, run_policy_benchmark

    backends = list(backend or (["torch", "onnxruntime"] if artifact else ["torch"]))
    try:
        result = run_policy_benchmark(checkpoint, artifact, backends, repeats, threads, device)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    if official_5b:
        result["official_5b_step"] = official_step_benchmark(preset)
    typer.echo(json.dumps(result, indent=2) if as_json else str(result))


def run(
    sim: bool = typer.Option(
        False, "--sim", help="Run against the simulated cell (PyBullet arm + cameras, real time)."
    ),
    task: str = typer.Option(
        "reach", help="Sim task: reach or pick; the instruction names the scene's target cube."
    ),
    episodes: int = typer.Option(20, min=1, help="Episodes (start states) to run."),
    seed: int = typer.Option(
        2027,
        help="Collection seed of the start states: episode i starts like episode i of "
        "`aimg sim collect --seed SEED`.",
    ),
    model: Path = typer.Option(
        Path("assets/sim-tiny-16"),
        help="Checkpoint directory or exported artifact (`aimg export onnx`); the default is "
        "the bundled 16-step student of assets/sim-tiny (docs/distillation.md).",
    ),
    backend: str = typer.Option(
        "auto", help="auto (artifact: onnxruntime, checkpoint: torch), torch or onnxruntime."
    ),
    planner: str = typer.Option(
        "model",
        help="model, or expert: the sim's scripted expert through the same render -> decode -> "
        "scheduler path (what the loop achieves when the planner is right).",
    ),
    open_loop: bool = typer.Option(
        False, "--open-loop", help="Execute one plan per episode (the reference's mode)."
    ),
    join: str = typer.Option(
        "inpaint",
        help="How a new plan joins the executing one: inpaint (default: the plan is conditioned "
        "on what executes during inference, then blended) or blend (blended only).",
    ),
    fixed_noise: bool = typer.Option(
        False,
        "--fixed-noise/--fresh-noise",
        help="Every plan of an episode starts from the same noise, or from a fresh draw "
        "(default: independent draws, which the ensembling averages).",
    ),
    ensemble: float = typer.Option(
        4.0,
        min=0.0,
        help="Temporal ensembling time constant (s): each new plan is averaged with what the "
        "recent plans predicted for the same instants (0: off).",
    ),
    own_grasp_height: bool = typer.Option(
        True,
        "--own-grasp-height/--ensemble-grasp-height",
        help="A plan that closes the open hand keeps its own heights (default): older plans, "
        "which the arm lags, already lift where it grasps, and averaged in they raise the grasp.",
    ),
    replan_period: float = typer.Option(
        None,
        min=0.0,
        help="Shortest time (s) between two plans' observations: each plan executes at least "
        "this long before a newer one replaces it (default: the model's frame spacing, "
        "0.8 s for sim-tiny; 0: as fast as the planner goes).",
    ),
    gripper_settle: float = typer.Option(
        1.0,
        min=0.0,
        help="While the gripper opens or closes, let the executing plan finish the grasp "
        "instead of replanning, for at most this long (s; 0: replan regardless).",
    ),
    gripper_follows_arm: bool = typer.Option(
        True,
        "--gripper-follows-arm/--gripper-on-clock",
        help="Open or close the hand where the plan does, once the arm gets there (default), "
        "or at the plan's time for it even if the speed limits keep the arm behind.",
    ),
    gripper_ramp: float = typer.Option(
        GRIPPER_RAMP_S,
        min=0.01,
        max=5.0,
        help="Open or close the hand over this long (s) before the plan's frame that changes "
        "it: about the hand's own travel time (the sim's: 0.34 s), so it shuts at the bottom "
        "of a descent. The plan's frame spacing (0.8 s) or more: over the whole frame.",
    ),
    episode_seconds: float = typer.Option(
        None, help="Seconds per episode (default: 7 for reach, 12 for pick)."
    ),
    rate: float = typer.Option(100.0, min=50.0, max=250.0, help="Servo loop rate (Hz)."),
    arm: str = typer.Option(
        "sim",
        help="sim: the simulated arm directly; xarm-sdk: the same arm through the unmodified "
        "xArm SDK and a loopback controller emulator (aimg.robot.xarm), the path a real xArm "
        "takes; the report then adds the command spacing the controller saw (emulator_servo).",
    ),
    threads: int = typer.Option(1, min=1, help="CPU threads of the planner's backend."),
    video: Path = typer.Option(
        None, help="Write an mp4 of one episode with the plan and executed path drawn on it."
    ),
    limits: Path = typer.Option(
        None,
        help="YAML file of safety limits (the keys of aimg.runtime.safety.SafetyLimits, at the "
        "top level or under `safety:`); unset keys keep the sim cell's defaults.",
    ),
    compare: list[Path] = typer.Option(
        None,
        help="Also run this model (repeatable; e.g. the teacher of a distilled --model) on the "
        "same start states and print success and plan latency side by side.",
    ),
    out: Path = typer.Option(None, help="Also write the JSON report here."),
    calibration: Path = typer.Option(
        None,
        help="Place the sim cameras as this calibration file says (e.g. a rig moved from the "
        "one the model was trained on; name the cameras as the model's views).",
    ),
) -> None:
    """Run the closed loop: cameras -> policy -> scheduler -> safety -> servo -> arm.

    Prints success rate, plan latency (p50/p95), replans per episode, control-rate statistics
    and the safety events as JSON. With --compare, each further model runs the same start
    states after --model and the report gains `side_by_side` and `compared`.
    """
    from aimg.runtime.sim_run import RunSettings, run_sim, side_by_side

    if not sim:
        typer.echo(
            "error: aimg run runs the simulated cell: add --sim (with --arm xarm-sdk for the "
            "xArm SDK path); a real cell runs under `aimg daemon --config CELL.yaml` "
            "(docs/hardware.md)",
            err=True,
        )
        raise typer.Exit(2)
    if planner not in ("model", "expert") or join not in ("blend", "inpaint"):
        typer.echo("error: --planner is model or expert; --join is blend or inpaint", err=True)
        raise typer.Exit(2)
    if arm not in ("sim", "xarm-sdk"):
        typer.echo("error: --arm is sim or xarm-sdk", err=True)
        raise typer.Exit(2)
    limit_values: dict = {}
    if limits is not None:
        from aimg.config import ConfigError, load_yaml
        from aimg.runtime.safety import SafetyLimits

        try:
            raw = load_yaml(limits)
            limit_values = raw.get("safety", raw)
            SafetyLimits.from_dict(limit_values)  # validate now, with the file's name
        except (ConfigError, ValueError, TypeError) as exc:
            typer.echo(f"error: {limits}: {exc}", err=True)
            raise typer.Exit(2) from exc
    cameras = None
    if calibration is not None:
        from aimg.calib.calibration_file import CalibrationFileError, read_calibration

        try:
            cameras = read_calibration(calibration).cameras()
        except CalibrationFileError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    settings = RunSettings(
        cameras=cameras,
        limits=limit_values,
        task=task,
        episodes=episodes,
        seed=seed,
        model=model,
        backend=backend,
        planner=planner,
        open_loop=open_loop,
        join=join,
        fixed_noise=fixed_noise,
        ensemble_s=ensemble,
        own_grasp_height=own_grasp_height,
        replan_period_s=replan_period,
        gripper_settle_s=gripper_settle,
        gripper_follows_arm=gripper_follows_arm,
        gripper_ramp_s=gripper_ramp,
        episode_s=episode_seconds,
        rate_hz=rate,
        arm=arm,
        threads=threads,
        video=video,
    )
    report = run_sim(settings)
    if compare:
        if planner != "model":
            typer.echo("error: --compare compares models: drop --planner expert", err=True)
            raise typer.Exit(2)
        runs = {str(model): report}
        for other in compare:
            typer.echo(f"--compare: the same {episodes} start states with {other}", err=True)
            runs[str(other)] = run_sim(dataclasses.replace(settings, model=other))
        report["compared"] = {name: r for name, r in runs.items() if name != str(model)}
        report["side_by_side"] = side_by_side(runs)
    text = json.dumps(report, indent=2)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
    summary = {k: v for k, v in report.items() if k not in ("per_episode", "compared")}
    typer.echo(json.dumps(summary, indent=2))
    successes = sum(e["success"] for e in report["per_episode"])
    typer.echo(
        f"{task}: {successes}/{report['episodes']} episodes succeeded "
        f"({100 * report['success_rate']:.0f} %), median final distance to the target "
        f"{100 * (report['final_xy_error_median_m'] or 0):.1f} cm, plan latency "
        f"p50 {report['plan_latency_p50_s'] or 0:.2f} s, servo jitter p99 "
        f"{report['control']['jitter_ms']['p99']:.3f} ms, "
        f"{report['out_of_limit_commands']} commands out of limits",
        err=True,
    )
    for row in report.get("side_by_side", []):
        typer.echo(
            f"  {row['model']}: {row['steps']} steps, {row['evaluations_per_plan']} evaluations "
            f"per plan, success {100 * row['success_rate']:.0f} %, plan latency p50 "
            f"{row['plan_latency_p50_s'] or 0:.2f} s / p95 {row['plan_latency_p95_s'] or 0:.2f} s",
            err=True,
        )


def bench_loop(
    seconds: float = typer.Option(20.0, min=2.0, help="Seconds per jitter measurement."),
    rates: str = typer.Option("100,250", help="Servo rates to measure (Hz, comma-separated)."),
    load: str = typer.Option(
        "planner", help="planner (sim-tiny planning flat out in another process) or none."
    ),
    model: Path = typer.Option(
        Path("assets/sim-tiny"), help="Model of the latency-breakdown run (checkpoint/artifact)."
    ),
    episodes: int = typer.Option(
        1, min=0, help="Closed-loop sim episodes for the latency breakdown (0: skip)."
    ),
    as_json: bool = typer.Option(True, "--json/--no-json", help="Print JSON (default)."),
) -> None:
    """Servo-period jitter under planner load, and a plan's latency breakdown in the loop.

    Jitter (p50/p99/max of tick start minus schedule) at each rate while sim-tiny plans flat
    out; then a short `aimg run --sim` whose plans report capture, preprocessing, encoding,
    sampling, decoding, hand-over and first command, and the planner's overhead beside the
    model.
    """
    from aimg.runtime.servo_bench import bench_servo_jitter
    from aimg.runtime.sim_run import RunSettings, run_sim

    result: dict = {"jitter": {}}
    for rate in (float(r) for r in rates.split(",") if r.strip()):
        result["jitter"][f"{rate:g}_hz"] = bench_servo_jitter(rate, seconds, load=load)
    if episodes:
        report = run_sim(
            RunSettings(episodes=episodes, model=model, measure_first_command=True),
            progress=False,
        )
        result["loop"] = {
            k: report[k]
            for k in (
                "episodes",
                "success_rate",
                "plan_latency_p50_s",
                "plan_latency_p95_s",
                "latency_breakdown_p50_s",
                "control",
                "out_of_limit_commands",
            )
        }
    typer.echo(json.dumps(result, indent=2) if as_json else str(result))
