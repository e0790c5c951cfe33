"""Training clips cut from recorded episodes: multi-view video, action images, cameras, text.

An item is addressed by (episode index, sample seed) (see `aimg.training.order`); all of its
randomness (clip start, view pair, text dropout) comes from that seed, so items are the same in
any worker, on any rank and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aimg.codec.render import SIGMA_FRACTION
from aimg.observation import crop_resize_camera, crop_resize_frames
from aimg.training.config import DataConfig


class DatasetError(ValueError):
    """The episode data cannot feed training; the message says what to do."""


def find_episodes(roots: Sequence[Path]) -> list[Path]:
    """All complete episodes under `roots` (sorted per root); raises if a root has none."""
    from aimg.episodes import list_episodes

    paths: list[Path] = []
    for root in roots:
        root = Path(root)
        found = list_episodes(root) if root.is_dir() else []
        if not found:
            raise DatasetError(
                f"no episodes under {root}: run `aimg sim collect --out {root}` first "
                "(or point data.roots / --data at a directory of recorded episodes)"
            )
        paths.extend(found)
    return paths


def frame_rate(episodes: Sequence[Path], sample: int = 8) -> float:
    """Recording rate in Hz (median frame interval over the first `sample` episodes)."""
    from aimg.episodes import read_episode

    intervals = [np.diff(read_episode(path).timestamps_ns) for path in list(episodes)[:sample]]
    intervals = [d for d in intervals if len(d)]
    if not intervals:
        raise DatasetError("episodes need at least two frames to know their frame rate")
    return float(1e9 / np.median(np.concatenate(intervals)))


def clip_indices(
    num_frames: int,
    frames: int,
    stride: int,
    start_at_zero: float,
    rng: np.random.Generator,
    max_start_fraction: float = 0.0,
) -> np.ndarray:
    """Frame indices [frames] of a clip (see `DataConfig`); past the end the last frame repeats."""
    span = (frames - 1) * stride
    last_start = max(0, num_frames - 1 - span, int(max_start_fraction * (num_frames - 1)))
    start = 0 if rng.random() < start_at_zero else int(rng.integers(0, last_start + 1))
    return np.minimum(start + stride * np.arange(frames), num_frames - 1)


class EpisodeClipDataset(torch.utils.data.Dataset):
    """Two-view training clips at the model resolution.

    Item (episode index, seed) -> dict with
    `video` float32 [2, 3, T, H, W] in [-1, 1] (condition view first),
    `action_images` float32 [2, 3, T, H, W] in [-1, 1] (rendered tool poses, docs/reference.md
    §1, blobs `blob_sigma` x min(H, W) wide),
    `K` float64 [2, T, 3, 3] and `c2w` float64 [2, T, 4, 4] (cameras at H x W per clip frame;
    moving cameras, e.g. on the wrist, change along T),
    `poses` float64 [T, 7], `instruction` str ("" after text dropout), `seed` int64,
    `episode` int64, `episode_path` str, `views` str ("cond|target"), `frame_indices` int64 [T].
    """

    def __init__(
        self,
        episodes: Sequence[Path],
        cfg: DataConfig,
        frames: int,
        height: int,
        width: int,
        blob_sigma: float = SIGMA_FRACTION,
    ) -> None:
        if not episodes:
            raise DatasetError("no episodes given")
        self.paths = [Path(p) for p in episodes]
        self.cfg = cfg
        self.frames = frames
        self.height = height
        self.width = width
        self.blob_sigma = blob_sigma
        self._episodes: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def episode(self, index: int) -> Any:
        """The opened episode `index` (kept open; frames load lazily)."""
        if index not in self._episodes:
            from aimg.episodes import read_episode

            self._episodes[index] = read_episode(self.paths[index])
        return self._episodes[index]

    def view_pair(self, episode: Any, rng: np.random.Generator) -> tuple[str, str]:
        """A random ordered pair of distinct views (condition view first); one view is reused."""
        names = list(episode.view_names)
        if self.cfg.views is not None:
            missing = [v for v in self.cfg.views if v not in names]
            if missing:
                raise DatasetError(
                    f"episode {self.paths[self._index_of(episode)]} has no view(s) {missing} "
                    f"(it has {names}); fix data.views"
                )
            names = list(self.cfg.views)
        if len(names) == 1:
            return names[0], names[0]
        first, second = rng.choice(len(names), size=2, replace=False)
        return names[int(first)], names[int(second)]

    def _index_of(self, episode: Any) -> int:
        return next(i for i, e in self._episodes.items() if e is episode)

    def choices(self, index: int, seed: int) -> tuple[np.ndarray, tuple[str, str], bool]:
        """The random decisions of item (index, seed): frame indices, view pair, text dropped."""
        rng = np.random.default_rng(seed)
        ep = self.episode(index)
        cfg = self.cfg
        idx = clip_indices(
            ep.num_frames, self.frames, cfg.stride, cfg.start_at_zero, rng, cfg.max_start_fraction
        )
        views = self.view_pair(ep, rng)
        return idx, views, bool(rng.random() < cfg.text_dropout)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from aimg.codec import render

        index, seed = key
        ep = self.episode(index)
        idx, views, drop_text = self.choices(index, seed)
        h, w, crop = self.height, self.width, self.cfg.crop
        # cameras[v][k]: view v at clip frame k (the same object throughout for a static one)
        cameras = [
            [crop_resize_camera(ep.camera(v, 0), h, w, crop)] * len(idx)
            if ep.camera_is_static(v)
            else [crop_resize_camera(ep.camera(v, int(t)), h, w, crop) for t in idx]
            for v in views
        ]
        video = torch.stack([crop_resize_frames(ep.frames(v)[idx], h, w, crop) for v in views])
        poses = np.asarray(ep.poses, dtype=np.float64)[idx]
        if all(ep.camera_is_static(v) for v in views):
            images = render(poses, [cams[0] for cams in cameras], h, w, self.blob_sigma)
        else:
            images = np.concatenate(
                [
                    render(poses[k : k + 1], [c[k] for c in cameras], h, w, self.blob_sigma)
                    for k in range(len(idx))
                ]
            )
        action_images = torch.from_numpy(np.ascontiguousarray(images)).permute(1, 4, 0, 2, 3)
        return {
            "video": video,
            "action_images": action_images.float() * 2.0 - 1.0,
            "K": torch.from_numpy(np.array([[c.K for c in cams] for cams in cameras])),
            "c2w": torch.from_numpy(np.array([[c.c2w for c in cams] for cams in cameras])),
            "poses": torch.from_numpy(poses),
            "instruction": "" if drop_text else str(ep.instruction),
            "seed": torch.tensor(seed, dtype=torch.int64),
            "episode": torch.tensor(index, dtype=torch.int64),
            "episode_path": str(self.paths[index]),
            "views": "|".join(views),
            "frame_indices": torch.from_numpy(idx.astype(np.int64)),
        }
