"""Episode store benchmark: write, open and random frame access at training-set sizes.

    python -m aimg.episodes.bench --episodes 200 --views 2 --frames 60 --size 128

prints one JSON object. Numbers depend on the disk and the page cache (a second run reads
from memory): compare ratios measured in one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from aimg.episodes.reader import load_episodes
from aimg.episodes.schema import EpisodeData
from aimg.episodes.writer import write_episode
from aimg.geometry import Camera, intrinsics_matrix, look_at


def run_episodes_benchmark(
    episodes: int = 200,
    views: int = 2,
    frames: int = 60,
    size: int = 128,
    samples: int = 5000,
    directory: str | Path | None = None,
    seed: int = 0,
) -> dict:
    """Write `episodes` random episodes into a temporary root, read them back, time each step."""
    rng = np.random.default_rng(seed)
    center = (size - 1) / 2
    camera = Camera(
        intrinsics_matrix(0.8 * size, 0.8 * size, center, center),
        look_at(np.array([0.8, 0.0, 0.6]), np.array([0.4, 0.0, 0.1])),
        size,
        size,
    )
    video = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    poses = np.tile([0.4, 0.0, 0.2, np.pi, 0.0, 0.0, 1.0], (frames, 1))
    names = [f"view{v}" for v in range(views)]
    root = Path(tempfile.mkdtemp(prefix="aimg-episodes-bench-", dir=directory))
    try:
        start = time.perf_counter()
        for i in range(episodes):
            data = EpisodeData(
                instruction="pick up the cube",
                task="pick_cube",
                frames={name: video for name in names},
                cameras={name: camera for name in names},
                poses=poses,
                timestamps_ns=np.arange(frames, dtype=np.int64) * 50_000_000,
                success=True,
                metadata={"seed": i},
            )
            write_episode(root, data)
        write_s = time.perf_counter() - start

        start = time.perf_counter()
        opened = load_episodes(root)
        open_s = time.perf_counter() - start
        start = time.perf_counter()
        load_episodes(root, verify=True)
        verify_s = time.perf_counter() - start

        picks = rng.integers(0, [episodes, views, frames], size=(samples, 3))
        start = time.perf_counter()
        for e, v, t in picks:
            np.array(opened[e].frames(names[v])[t])
        frame_s = time.perf_counter() - start
        disk = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "episodes": episodes,
        "views": views,
        "frames": frames,
        "size": size,
        "disk_gb": round(disk / 1e9, 3),
        "write_ms_per_episode": round(1e3 * write_s / episodes, 2),
        "open_all_s": round(open_s, 3),
        "open_all_verify_s": round(verify_s, 3),
        "random_frame_us": round(1e6 * frame_s / samples, 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--views", type=int, default=2)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--samples", type=int, default=5000, help="random frame reads to time")
    parser.add_argument("--dir", default=None, help="where to create the temporary root")
    args = parser.parse_args(argv)
    result = run_episodes_benchmark(
        args.episodes, args.views, args.frames, args.size, args.samples, args.dir
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
