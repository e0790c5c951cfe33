"""The on-disk episode format: one directory per episode, written atomically, read lazily.

Layout (docs/episodes.md is the full specification)::

    <root>/episode_000042/
        meta.json               format version, instruction, task, views, cameras, success,
                                metadata, and the size and sha256 of every data file
        poses.npy               [T, 7] float64 tool pose as action 7-vector (base frame, m, rad)
        timestamps_ns.npy       [T] int64, strictly increasing
        frames_<view>.npy       [T, H, W, 3] uint8 RGB, one file per view
        extra_<name>.npy        optional per-frame arrays [T, ...] (joint positions, ...)
        stream_<name>.npy       optional arrays of any length at their own rate (commands, plans)

Frames are plain `.npy` so readers memory-map them (`np.load(mmap_mode="r")`): a training
loader touches only the frames it samples. Writers fill a hidden temporary sibling
(`.episode_000042.tmp-<pid>-<hex>`), fsync every file and rename it into place; the rename is
atomic on POSIX, so a crash never leaves a directory that `list_episodes` returns.

Modules: `schema` (names, constants, `EpisodeData`, value checks), `layout` (the root directory:
listing, numbering, clean-up), `writer`, `reader`, `bench`. From the core it imports only
`aimg.geometry` and the version.
"""

from aimg.episodes.layout import list_episodes, next_episode_index, remove_stale_temp_dirs
from aimg.episodes.reader import Episode, iter_episodes, load_episodes, read_episode
from aimg.episodes.schema import FORMAT_VERSION, EpisodeData, EpisodeError, episode_dir_name
from aimg.episodes.writer import EpisodeWriter, write_episode

__all__ = [
    "FORMAT_VERSION",
    "Episode",
    "EpisodeData",
    "EpisodeError",
    "EpisodeWriter",
    "episode_dir_name",
    "iter_episodes",
    "list_episodes",
    "load_episodes",
    "next_episode_index",
    "read_episode",
    "remove_stale_temp_dirs",
    "write_episode",
]
