"""Small synthetic episodes and a tiny model preset for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aimg.episodes import EpisodeData, write_episode
from aimg.geometry import Camera, intrinsics_matrix, look_at

VIEWS = ("front", "side", "top")
EYES = {"front": (0.9, 0.0, 0.5), "side": (0.4, 0.7, 0.5), "top": (0.45, 0.05, 1.0)}
TARGET = np.array([0.4, 0.0, 0.1])


def make_camera(view: str, height: int, width: int, shift: float = 0.0) -> Camera:
    K = intrinsics_matrix(0.9 * width, 0.9 * width, (width - 1) / 2, (height - 1) / 2)
    eye = np.array(EYES[view]) + [0.0, shift, 0.0]
    return Camera(K, look_at(eye, TARGET), width, height)


def synthetic_episode(
    seed: int,
    frames: int = 12,
    height: int = 64,
    width: int = 64,
    views=VIEWS[:2],
    moving: tuple[str, ...] = (),
) -> EpisodeData:
    """A tool moving in a straight line towards a cube, rendered as moving colour patches.

    Views named in `moving` have a camera that slides sideways by 1 cm per frame.
    """
    rng = np.random.default_rng(seed)
    start = np.array([0.3, -0.1, 0.3]) + rng.uniform(-0.05, 0.05, 3)
    goal = np.array([0.45, 0.1, 0.12]) + rng.uniform(-0.05, 0.05, 3)
    s = np.linspace(0.0, 1.0, frames)[:, None]
    poses = np.zeros((frames, 7))
    poses[:, :3] = (1 - s) * start + s * goal
    poses[:, 3] = np.pi
    poses[:, 6] = (np.arange(frames) < frames * 2 // 3).astype(float)
    images = {}
    cameras = {}
    for view in views:
        shifts = 0.01 * np.arange(frames) if view in moving else np.zeros(frames)
        cams = [make_camera(view, height, width, s) for s in shifts]
        video = np.full((frames, height, width, 3), 40, dtype=np.uint8)
        video[..., seed % 3] = 90
        for t in range(frames):
            uv, _ = cams[t].project(poses[t, :3])
            u, v = np.clip(np.round(uv).astype(int), 2, [width - 3, height - 3])
            video[t, v - 2 : v + 3, u - 2 : u + 3] = (230, 200, 30)
        images[view] = video
        cameras[view] = cams if view in moving else cams[0]
    return EpisodeData(
        instruction=f"reach the cube {seed % 2}",
        task="reach",
        frames=images,
        cameras=cameras,
        poses=poses,
        timestamps_ns=(np.arange(frames) * 100_000_000).astype(np.int64),
        success=True,
        metadata={"seed": seed, "cube_position": goal.tolist()},
    )


def write_synthetic_episodes(root: Path, count: int = 2, **kwargs) -> list[Path]:
    return [write_episode(root, synthetic_episode(seed, **kwargs)) for seed in range(count)]


TINY_PRESET = """\
model:
  name: test-tiny
  views: 2
  frames: 5
  height: 32
  width: 32
  transformer:
    num_layers: 2
    num_heads: 2
    head_dim: 8
    ffn_dim: 32
    text_dim: 16
    freq_dim: 16
    patch_size: [1, 2, 2]
    cam_pool: [8, 2, 2]
    timestep_mode: {timestep_mode}
  codec:
    kind: pixel
    spatial_factor: 4
    temporal_factor: 4
  text:
    kind: builtin
    max_length: 8
sampling:
  num_steps: 4
  shift: 3.0
  cfg_scale: 1.0
data:
  roots: [{data}]
  stride: 2
  start_at_zero: 0.5
train:
  run_dir: {run_dir}
  seed: 7
  max_steps: 6
  batch_size: 2
  lr: 1.0e-3
  warmup_steps: 2
  checkpoint_every: 3
  keep_checkpoints: 2
  log_every: 1
"""


def write_tiny_preset(
    path: Path, data: Path, run_dir: Path, timestep_mode: str = "per_token"
) -> Path:
    path.write_text(TINY_PRESET.format(data=data, run_dir=run_dir, timestep_mode=timestep_mode))
    return path
