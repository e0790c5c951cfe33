"""How far a model turns the hand to the cube's faces before it grasps, offline.

    python scripts/grasp_yaw.py DATA [EPISODES] [MODEL]
    python scripts/grasp_yaw.py data/pick-heldout 40 assets/sim-tiny-16

For each held-out pick episode (`aimg sim collect --task pick`), one plan from its first
frame, one draw: the hand's yaw off the target cube's nearest face at the start, at the
expert's first closed frame and at the model's. The expert turns the hand square to the cube;
docs/training.md ("The hand shuts at the bottom") has what the shipped student does.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np


def yaw_of(action: np.ndarray) -> float:
    from aimg.geometry import euler_xyz_to_matrix

    rotation = euler_xyz_to_matrix(np.asarray(action[3:6], dtype=np.float64))
    return math.atan2(rotation[1, 0], rotation[0, 0])  # a top-down tool's x axis in the base


def off_the_faces_deg(yaw: float, cube_yaw: float) -> float:
    """Signed, in [-45, 45): a cube looks the same every 90 deg."""
    return (math.degrees(yaw - cube_yaw) + 45.0) % 90.0 - 45.0


def first_closed(actions: np.ndarray) -> int:
    closed = np.flatnonzero(actions[:, 6] < 0.5)
    return int(closed[0]) if len(closed) else len(actions) - 1


def main(data: Path, episodes: int, model: Path) -> None:
    import torch

    from aimg.codec.decode import decode
    from aimg.episodes import read_episode
    from aimg.observation import episode_observation
    from aimg.runtime.backends.torch_backend import TorchBackend
    from aimg.training.dataset import find_episodes

    backend = TorchBackend(model, device=torch.device("cpu"))
    spec, frames = backend.spec, backend.model_config.frames
    stride = backend.config["extra"]["data"]["stride"]
    views = list(backend.config["extra"]["data"].get("views") or ["left", "right"])
    rows = []
    for index, path in enumerate(find_episodes([data])[:episodes]):
        episode = read_episode(path)
        poses = np.asarray(episode.poses)
        cube_yaw = float(episode.metadata["scene"]["objects"][0]["yaw"])
        expert = poses[np.minimum(stride * np.arange(frames), len(poses) - 1)]
        observation, _ = episode_observation(episode, spec, views)
        plan = backend.plan(observation, episode.instruction, seed=index)
        cameras = list(observation.cameras)
        model_actions = decode(plan.action_images, cameras, sigma_fraction=spec.blob_sigma).actions
        grasp = model_actions[first_closed(model_actions)]
        rows.append(
            (
                off_the_faces_deg(yaw_of(poses[0]), cube_yaw),
                off_the_faces_deg(yaw_of(expert[first_closed(expert)]), cube_yaw),
                off_the_faces_deg(yaw_of(grasp), cube_yaw),
                math.degrees(yaw_of(grasp) - yaw_of(poses[0])),
            )
        )
        print(
            f"{index:3d} off the faces: start {rows[-1][0]:+6.1f} expert {rows[-1][1]:+6.1f} "
            f"model {rows[-1][2]:+6.1f} deg; the model turned {rows[-1][3]:+6.1f} deg"
        )
    table = np.asarray(rows)
    size = np.abs(table)
    print(
        f"median |off the faces|: start {np.median(size[:, 0]):.1f}, expert "
        f"{np.median(size[:, 1]):.1f}, model {np.median(size[:, 2]):.1f} deg; the model turned "
        f"a median {np.median(size[:, 3]):.1f} deg; correlation of the model's with the start's "
        f"{np.corrcoef(table[:, 0], table[:, 2])[0, 1]:.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(
        Path(sys.argv[1]),
        int(sys.argv[2]) if len(sys.argv) > 2 else 40,
        Path(sys.argv[3]) if len(sys.argv) > 3 else Path("assets/sim-tiny-16"),
    )
