"""Roll out the scripted expert in the sim cell and write the episodes to disk (resumably).

An episode is a pure function of (task, seed, views, size, fps): the world is rebuilt from
scratch for each one, so a resumed or parallel collection writes exactly what a single run
would have written.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aimg.episodes import (
    EpisodeData,
    episode_dir_name,
    list_episodes,
    remove_stale_temp_dirs,
    write_episode,
)
from aimg.geometry import Camera, matrix_to_action
from aimg.robot.sim.cameras import default_camera_specs, knocked_camera, random_knock
from aimg.robot.sim.tasks import COLOURS, CUBE_SIZE_M, get_task
from aimg.robot.sim.world import TCP_OFFSET_M, CellConfig, SimWorld, top_down_pose

SETTLE_S = 0.25
FINAL_HOLD_S = 0.4


@dataclass(frozen=True)
class RolloutSettings:
    """What an episode records: `views` cameras at `height` x `width`, `fps` frames per second.

    `cameras`: where the cameras stand instead of the standard placements (name -> `Camera`,
    e.g. a calibration file's, to collect with a real cell's rig); each is centre-cropped and
    resized to `height` x `width`, as the policy's inputs are.
    """

    task: str = "reach"
    views: int = 2
    height: int = 128
    width: int = 128
    fps: float = 10.0
    cameras: Mapping[str, Camera] | None = None
    #: the tool's start pose, `aimg.robot.sim.tasks.STARTS`
    start: str = "standard"
    #: camera placement augmentation: each episode moves every camera by up to `jitter_m`
    #: and turns it by up to `jitter_deg` in random directions (drawn from the episode seed;
    #: the episode records the cameras it used), so a policy learns to read the camera
    #: conditioning instead of memorising one rig
    jitter_m: float = 0.0
    jitter_deg: float = 0.0

    def episode_rig(self, seed: int) -> dict[str, Camera]:
        """The cameras of episode `seed`: the rig, jittered as the settings say."""
        rig = self.rig()
        if self.jitter_m <= 0 and self.jitter_deg <= 0:
            return rig
        rng = np.random.default_rng([seed, 0x716])  # apart from the scene's random stream
        jittered = {}
        for name, camera in rig.items():
            move, turn = rng.uniform(0, self.jitter_m), rng.uniform(0, self.jitter_deg)
            jittered[name] = knocked_camera(camera, random_knock(rng, move, turn))
        return jittered

    def rig(self) -> dict[str, Camera]:
        """The recorded cameras at the recorded size."""
        if self.cameras is not None:
            return {n: c.resized(self.height, self.width) for n, c in self.cameras.items()}
        specs = default_camera_specs(self.views)
        return {spec.name: spec.camera(self.height, self.width) for spec in specs}


def episode_seed(base_seed: int, index: int) -> int:
    """Independent per-episode seed from the collection seed and the episode index."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1)[0])


def run_episode(
    world: SimWorld,
    settings: RolloutSettings,
    seed: int,
    on_frame: Callable[[SimWorld, dict[str, Camera]], None] | None = None,
) -> EpisodeData:
    """One expert episode; the world is reset with `seed`, so the result depends on nothing else.

    `on_frame(world, cameras)` is called at every recorded frame (for measurements).
    """
    task = get_task(settings.task)
    world.reset(seed)
    scene = task.sample_scene(world.rng, settings.start)
    for obj in scene.objects:
        world.add_cube(
            obj.colour, COLOURS[obj.colour], np.array(obj.position), obj.yaw, CUBE_SIZE_M
        )
    world.reset_arm(
        top_down_pose(np.array(scene.start_position), scene.start_yaw), gripper=scene.start_gripper
    )
    world.advance(SETTLE_S)

    cameras = settings.episode_rig(seed)
    plan = task.plan(scene)
    physics_hz = world.config.physics_hz
    decimation = world.config.control_decimation
    record_every = round(physics_hz / settings.fps)
    if abs(record_every * settings.fps - physics_hz) > 1e-6 or record_every % decimation:
        raise ValueError(
            f"fps {settings.fps} must divide the control rate {physics_hz / decimation:g} Hz "
            "(e.g. 10, 15, 20, 30)"
        )
    total_steps = round((plan.duration_s + FINAL_HOLD_S) * physics_hz)
    start_ns = world.time_ns
    frames: dict[str, list[np.ndarray]] = {name: [] for name in cameras}
    poses, commands, joints, stamps = [], [], [], []
    for step in range(0, total_steps + 1, decimation):
        t = step / physics_hz
        target = plan.pose(t)
        if step % record_every == 0:
            state = world.arm_state()
            for name, camera in cameras.items():
                frames[name].append(world.render(camera)[0])
            poses.append(state.action)
            joints.append(state.joints)
            commands.append(matrix_to_action(target, plan.gripper(t)))
            stamps.append(state.timestamp_ns - start_ns)
            if on_frame is not None:
                on_frame(world, cameras)
        if step < total_steps:
            world.set_servo_target(target)
            world.set_gripper_target(plan.gripper(t))
            world.step(decimation)

    success = task.success(world, scene)
    metadata = {
        "seed": seed,
        "scene": scene.to_dict(),
        "final_object_positions": {
            name: world.object_pose(name)[:3, 3].tolist() for name in world.objects
        },
        "error_code": int(world.error_code),
        "fps": settings.fps,
        "tcp_offset_m": TCP_OFFSET_M,
        "simulator": "pybullet",
    }
    return EpisodeData(
        instruction=task.instruction(scene),
        task=settings.task,
        frames={name: np.stack(images) for name, images in frames.items()},
        cameras=cameras,
        poses=np.array(poses),
        timestamps_ns=np.array(stamps, dtype=np.int64),
        success=success,
        metadata=metadata,
        extras={"joints": np.array(joints), "commanded_actions": np.array(commands)},
    )


_WORKER_WORLD: SimWorld | None = None


def _worker_episode(job: tuple[Path, RolloutSettings, int, int]) -> tuple[int, bool]:
    """Run and write one episode in a worker process (its world is reused between episodes)."""
    global _WORKER_WORLD
    root, settings, index, seed = job
    if _WORKER_WORLD is None:
        _WORKER_WORLD = SimWorld(CellConfig())
    data = run_episode(_WORKER_WORLD, settings, seed)
    write_episode(root, data, index=index)
    return index, data.success


def missing_indices(root: Path, count: int) -> list[int]:
    """Episode indices below `count` that `root` lacks (complete episodes only count)."""
    done = {path.name for path in list_episodes(root)} if root.exists() else set()
    return [i for i in range(count) if episode_dir_name(i) not in done]


def collect(
    root: Path,
    settings: RolloutSettings,
    episodes: int,
    seed: int = 0,
    workers: int = 1,
    on_episode: Callable[[int, bool], None] | None = None,
) -> list[tuple[int, bool]]:
    """Write episodes 0..episodes-1 that `root` does not have yet; returns (index, success).

    Re-running after an interruption continues where it stopped: finished episodes are kept,
    half-written ones (hidden temporary directories of dead processes) are removed.
    """
    if episodes < 0 or workers < 1:
        raise ValueError(f"need episodes >= 0 and workers >= 1, got {episodes} and {workers}")
    get_task(settings.task)
    settings.rig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_dirs(root)
    jobs = [(root, settings, i, episode_seed(seed, i)) for i in missing_indices(root, episodes)]
    results = []
    for index, success in _run_jobs(jobs, workers):
        results.append((index, success))
        if on_episode is not None:
            on_episode(index, success)
    return results


def _run_jobs(
    jobs: list[tuple[Path, RolloutSettings, int, int]], workers: int
) -> Iterator[tuple[int, bool]]:
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            yield _worker_episode(job)
        return
    from aimg.robot.sim.assets import light_xarm_urdf

    light_xarm_urdf()  # build the mesh cache once, before the workers race for it
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers) as pool:
        yield from pool.imap_unordered(_worker_episode, jobs)
