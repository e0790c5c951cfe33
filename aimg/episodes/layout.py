"""Episode directories under a root: listing, numbering and cleaning up crashed writes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Collection
from pathlib import Path

from aimg.episodes.schema import EPISODE_DIR_RE, META_FILE, TEMP_DIR_RE


def list_episodes(root: str | Path) -> list[Path]:
    """Complete episode directories under `root`, sorted by index.

    Temporary directories of unfinished writes and directories without meta.json are skipped;
    a listed episode can still be corrupt (bit rot, truncation): `read_episode` says so.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"episode root {root} does not exist or is not a directory")
    found = []
    for path in root.iterdir():
        match = EPISODE_DIR_RE.match(path.name)
        if match and (path / META_FILE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def next_episode_index(root: str | Path) -> int:
    """Index after the highest complete episode under `root` (0 if none): resumable numbering."""
    if not Path(root).exists():
        return 0
    paths = list_episodes(root)
    return episode_index(paths[-1]) + 1 if paths else 0


def episode_index(path: Path) -> int:
    match = EPISODE_DIR_RE.match(path.name)
    if match is None:
        raise ValueError(f"{path} is not named like an episode directory (episode_NNNNNN)")
    return int(match.group(1))


def remove_stale_temp_dirs(root: str | Path, stale_pids: Collection[int] = ()) -> list[Path]:
    """Delete temporary directories of writers that died on this host; returns what was removed.

    Only directories whose writer process no longer exists are removed, so it is safe to call
    while other collectors write into the same root. `stale_pids` are PIDs whose directories
    are stale even though the process lives: a service that starts with the same PID after a
    crash (PID 1 in a container) passes its own.
    """
    root = Path(root)
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        match = TEMP_DIR_RE.match(path.name)
        pid = int(match.group(2)) if match else 0
        if match and path.is_dir() and (pid in stale_pids or not _process_alive(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
