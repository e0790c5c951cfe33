"""Specification of the on-disk episode format (aimg.episodes, docs/episodes.md)."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import pickle
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from aimg import episodes
from aimg.episodes import (
    EpisodeData,
    EpisodeError,
    EpisodeWriter,
    list_episodes,
    load_episodes,
    next_episode_index,
    read_episode,
    remove_stale_temp_dirs,
    write_episode,
)
from aimg.geometry import Camera, intrinsics_matrix, look_at

T = 5


def _camera(height: int, width: int, eye=(0.8, 0.0, 0.6)) -> Camera:
    K = intrinsics_matrix(0.9 * width, 0.9 * width, (width - 1) / 2, (height - 1) / 2)
    return Camera(K, look_at(np.array(eye), np.array([0.4, 0.0, 0.1])), width, height)


def make_data(num_frames: int = T, per_frame_cameras: bool = False, seed: int = 0) -> EpisodeData:
    rng = np.random.default_rng(seed)
    poses = np.zeros((num_frames, 7))
    poses[:, :3] = rng.uniform(0.2, 0.5, (num_frames, 3))
    poses[:, 3:6] = rng.uniform(-np.pi, np.pi, (num_frames, 3))
    poses[:, 6] = np.linspace(1.0, 0.0, num_frames)
    wrist = [_camera(12, 16, eye=(0.3 + 0.01 * t, 0.1, 0.5)) for t in range(num_frames)]
    return EpisodeData(
        instruction="pick up the red cube",
        task="pick_cube",
        frames={
            "front": rng.integers(0, 256, (num_frames, 8, 10, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (num_frames, 12, 16, 3), dtype=np.uint8),
        },
        cameras={
            "front": _camera(8, 10),
            "wrist": wrist if per_frame_cameras else _camera(12, 16),
        },
        poses=poses,
        timestamps_ns=np.arange(num_frames, dtype=np.int64) * 50_000_000 + 123,
        success=True,
        metadata={"seed": seed, "cube_xyz": np.array([0.4, 0.0, 0.02])},
        extras={"joints": rng.normal(size=(num_frames, 6)).astype(np.float32)},
    )


def _assert_same_camera(a: Camera, b: Camera) -> None:
    np.testing.assert_array_equal(a.K, b.K)
    np.testing.assert_array_equal(a.c2w, b.c2w)
    assert (a.width, a.height) == (b.width, b.height)


def _rewrite_meta(path: Path, edit) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


# -- round trip ---------------------------------------------------------------------------------


@pytest.mark.parametrize("per_frame", [False, True], ids=["static-cameras", "moving-camera"])
def test_written_episode_reads_back_identically(tmp_path: Path, per_frame: bool) -> None:
    data = make_data(per_frame_cameras=per_frame)
    path = write_episode(tmp_path, data)
    episode = read_episode(path, verify=True)

    assert path.name == "episode_000000"
    assert episode.instruction == data.instruction
    assert episode.task == data.task
    assert episode.success is True
    assert episode.metadata == {"seed": 0, "cube_xyz": [0.4, 0.0, 0.02]}
    assert episode.view_names == ("front", "wrist")
    assert episode.num_frames == T
    assert episode.image_size("wrist") == (12, 16)
    np.testing.assert_array_equal(episode.poses, data.poses)
    assert episode.poses.dtype == np.float64
    np.testing.assert_array_equal(episode.gripper, data.poses[:, 6])
    np.testing.assert_array_equal(episode.timestamps_ns, data.timestamps_ns)
    assert episode.timestamps_ns.dtype == np.int64
    for view in data.view_names:
        np.testing.assert_array_equal(episode.frames(view), data.frames[view])
        assert episode.frames(view).dtype == np.uint8
    np.testing.assert_array_equal(episode.frame("front", 3), data.frames["front"][3])
    np.testing.assert_array_equal(episode.extra("joints"), data.extras["joints"])
    _assert_same_camera(episode.camera("front"), data.cameras["front"])
    _assert_same_camera(episode.camera("front", t=T - 1), data.cameras["front"])
    assert episode.camera_is_static("wrist") is not per_frame
    for t in range(T):
        expected = data.cameras["wrist"][t] if per_frame else data.cameras["wrist"]
        _assert_same_camera(episode.camera("wrist", t), expected)


def test_non_contiguous_inputs_are_stored_in_c_order(tmp_path: Path) -> None:
    data = make_data()
    data.frames["front"] = np.asfortranarray(data.frames["front"])
    data.poses = np.asfortranarray(data.poses)
    data.extras["joints"] = data.extras["joints"].astype(">f4")
    episode = read_episode(write_episode(tmp_path, data))
    np.testing.assert_array_equal(episode.frames("front"), data.frames["front"])
    np.testing.assert_array_equal(episode.poses, data.poses)
    np.testing.assert_array_equal(episode.extra("joints"), data.extras["joints"])
    assert episode.extra("joints").dtype == np.dtype("<f4")


def test_frames_are_memory_mapped_read_only(tmp_path: Path) -> None:
    episode = read_episode(write_episode(tmp_path, make_data()))
    frames = episode.frames("front")
    assert isinstance(frames, np.memmap)
    with pytest.raises(ValueError):
        frames[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        episode.poses[0, 0] = 1.0


def test_episode_pickles_without_copying_frames(tmp_path: Path) -> None:
    data = make_data()
    data.frames["front"] = np.full((T, 64, 64, 3), 7, np.uint8)
    data.cameras["front"] = _camera(64, 64)
    episode = read_episode(write_episode(tmp_path, data))
    episode.frames("front")[:]
    clone = pickle.loads(pickle.dumps(episode))
    assert len(pickle.dumps(episode)) < data.frames["front"].nbytes / 4
    np.testing.assert_array_equal(clone.frames("front"), episode.frames("front"))


def test_to_data_rewrites_an_equal_episode(tmp_path: Path) -> None:
    first = read_episode(write_episode(tmp_path, make_data(per_frame_cameras=True)))
    second = read_episode(write_episode(tmp_path, first.to_data()))
    assert second.index == first.index + 1
    np.testing.assert_array_equal(second.frames("wrist"), first.frames("wrist"))
    np.testing.assert_array_equal(second.poses, first.poses)
    assert second.metadata == first.metadata


# -- listing and numbering ----------------------------------------------------------------------


def test_episodes_are_numbered_consecutively_and_listed_in_order(tmp_path: Path) -> None:
    paths = [write_episode(tmp_path, make_data(seed=i)) for i in range(3)]
    assert [p.name for p in paths] == ["episode_000000", "episode_000001", "episode_000002"]
    assert list_episodes(tmp_path) == paths
    assert next_episode_index(tmp_path) == 3
    assert [e.metadata["seed"] for e in load_episodes(tmp_path)] == [0, 1, 2]


def test_numbering_resumes_after_the_highest_existing_index(tmp_path: Path) -> None:
    write_episode(tmp_path, make_data(), index=41)
    assert write_episode(tmp_path, make_data()).name == "episode_000042"


def test_explicit_index_that_exists_is_refused(tmp_path: Path) -> None:
    write_episode(tmp_path, make_data(), index=7)
    with pytest.raises(FileExistsError, match="already exists"):
        write_episode(tmp_path, make_data(), index=7)
    assert len(list_episodes(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["episode_000007"]


def test_listing_skips_temporary_and_incomplete_directories(tmp_path: Path) -> None:
    done = write_episode(tmp_path, make_data())
    (tmp_path / ".episode_000001.tmp-999999-abcd").mkdir()
    (tmp_path / "episode_000002").mkdir()
    (tmp_path / "episode_000002" / "poses.npy").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an episode")
    assert list_episodes(tmp_path) == [done]
    assert next_episode_index(tmp_path) == 1


def test_concurrent_writers_get_distinct_indices(tmp_path: Path) -> None:
    def collect(worker: int) -> list[Path]:
        return [write_episode(tmp_path, make_data(seed=10 * worker + i)) for i in range(3)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        written = [path for paths in pool.map(collect, range(4)) for path in paths]
    assert sorted(written) == list_episodes(tmp_path)
    assert [p.name for p in list_episodes(tmp_path)] == [f"episode_{i:06d}" for i in range(12)]
    seeds = sorted(e.metadata["seed"] for e in load_episodes(tmp_path))
    assert seeds == sorted(10 * w + i for w in range(4) for i in range(3))


def test_numbering_starts_at_zero_in_a_new_root(tmp_path: Path) -> None:
    assert next_episode_index(tmp_path / "new") == 0


def test_listing_a_missing_root_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_episodes(tmp_path / "nowhere")


# -- atomicity ----------------------------------------------------------------------------------


def test_failure_mid_write_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    real_write_array = np.lib.format.write_array
    calls = []

    def failing_write_array(f, array, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_write_array(f, array, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing_write_array)
    with pytest.raises(OSError, match="disk full"):
        write_episode(tmp_path, make_data())
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_episode_that_readers_accept(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        import numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_episodes import make_data
        from aimg.episodes import write_episode

        real = np.lib.format.write_array
        calls = []
        def dying_write_array(f, array, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                f.write(b"partial")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return real(f, array, **kwargs)
        np.lib.format.write_array = dying_write_array
        write_episode({str(tmp_path)!r}, make_data())
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    leftovers = list(tmp_path.iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".episode_")
    assert list_episodes(tmp_path) == []
    with pytest.raises(EpisodeError, match="interrupted write"):
        read_episode(leftovers[0])
    assert write_episode(tmp_path, make_data()).name == "episode_000000"
    assert remove_stale_temp_dirs(tmp_path) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["episode_000000"]


def test_stale_temp_dir_of_a_live_writer_is_kept(tmp_path: Path) -> None:
    live = tmp_path / f".episode_000000.tmp-{os.getpid()}-abcd"
    live.mkdir()
    assert remove_stale_temp_dirs(tmp_path) == []
    assert live.exists()


# -- streaming writer ---------------------------------------------------------------------------


def _stream(writer: EpisodeWriter, data: EpisodeData) -> None:
    for t in range(data.num_frames):
        writer.append(
            {view: frames[t] for view, frames in data.frames.items()},
            data.poses[t],
            int(data.timestamps_ns[t]),
            cameras={"wrist": data.cameras["wrist"][t]},
            extras={name: array[t] for name, array in data.extras.items()},
        )


def _views(data: EpisodeData) -> dict:
    return {"front": data.cameras["front"], "wrist": data.frames["wrist"].shape[1:3]}


def test_streamed_episode_equals_the_one_written_at_once(tmp_path: Path) -> None:
    data = make_data(per_frame_cameras=True)
    with EpisodeWriter(tmp_path, data.instruction, data.task, _views(data)) as writer:
        _stream(writer, data)
        assert list_episodes(tmp_path) == []
        path = writer.commit(success=True, metadata=data.metadata)
    streamed = read_episode(path, verify=True)
    direct = read_episode(write_episode(tmp_path, data), verify=True)
    for view in data.view_names:
        np.testing.assert_array_equal(streamed.frames(view), direct.frames(view))
    np.testing.assert_array_equal(streamed.poses, direct.poses)
    np.testing.assert_array_equal(streamed.timestamps_ns, direct.timestamps_ns)
    np.testing.assert_array_equal(streamed.extra("joints"), direct.extra("joints"))
    assert streamed.camera_is_static("front") and not streamed.camera_is_static("wrist")
    for t in range(T):
        _assert_same_camera(streamed.camera("wrist", t), direct.camera("wrist", t))
    assert (streamed.instruction, streamed.task, streamed.success) == (
        direct.instruction,
        direct.task,
        direct.success,
    )
    assert streamed.metadata == direct.metadata
    assert list_episodes(tmp_path) == [path, direct.path]


def test_streamed_frames_file_is_a_plain_npy(tmp_path: Path) -> None:
    data = make_data(per_frame_cameras=True)
    with EpisodeWriter(tmp_path, data.instruction, data.task, _views(data)) as writer:
        _stream(writer, data)
        path = writer.commit(success=False)
    np.testing.assert_array_equal(np.load(path / "frames_front.npy"), data.frames["front"])


def test_invalid_append_is_refused_and_the_episode_continues(tmp_path: Path) -> None:
    data = make_data(per_frame_cameras=True)
    with EpisodeWriter(tmp_path, data.instruction, data.task, _views(data)) as writer:
        _stream(writer, data)
        good = {view: frames[0] for view, frames in data.frames.items()}
        later = int(data.timestamps_ns[-1]) + 1
        wrist = {"wrist": data.cameras["wrist"][0]}
        joints = {"joints": data.extras["joints"][0]}
        bad_pose = data.poses[0].copy()
        bad_pose[6] = 2.0
        with pytest.raises(ValueError, match="frame 5: pose gripper"):
            writer.append(good, bad_pose, later, cameras=wrist, extras=joints)
        with pytest.raises(ValueError, match="not after the previous frame"):
            writer.append(good, data.poses[0], 0, cameras=wrist, extras=joints)
        with pytest.raises(ValueError, match="exactly the moving views"):
            writer.append(good, data.poses[0], later, extras=joints)
        with pytest.raises(ValueError, match=r"must be \[8, 10, 3\]"):
            writer.append({**good, "front": good["wrist"]}, data.poses[0], later, cameras=wrist)
        with pytest.raises(ValueError, match="same names at every frame"):
            writer.append(good, data.poses[0], later, cameras=wrist)
        assert writer.num_frames == T
        path = writer.commit(success=True)
    episode = read_episode(path, verify=True)
    assert episode.num_frames == T
    np.testing.assert_array_equal(episode.frames("wrist"), data.frames["wrist"])


def test_leaving_the_writer_without_commit_discards_the_episode(tmp_path: Path) -> None:
    data = make_data(per_frame_cameras=True)
    with EpisodeWriter(tmp_path, data.instruction, data.task, _views(data)) as writer:
        _stream(writer, data)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="already committed or aborted"):
        writer.commit(success=True)


def test_exception_while_streaming_discards_the_episode(tmp_path: Path) -> None:
    data = make_data(per_frame_cameras=True)
    with (
        pytest.raises(KeyboardInterrupt),
        EpisodeWriter(tmp_path, data.instruction, data.task, _views(data)) as writer,
    ):
        _stream(writer, data)
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_streaming_into_a_taken_index_is_refused_before_recording(tmp_path: Path) -> None:
    data = make_data()
    write_episode(tmp_path, data, index=3)
    with pytest.raises(FileExistsError, match="episode_000003 already exists"):
        EpisodeWriter(tmp_path, "x", "t", {"front": data.cameras["front"]}, index=3)
    assert [p.name for p in tmp_path.iterdir()] == ["episode_000003"]


def test_committing_an_empty_stream_is_refused(tmp_path: Path) -> None:
    data = make_data()
    with EpisodeWriter(tmp_path, "x", "t", {"front": data.cameras["front"]}) as writer:
        with pytest.raises(ValueError, match="no frames were appended"):
            writer.commit(success=True)
        writer.abort()
    assert list(tmp_path.iterdir()) == []


# -- corrupt episodes ---------------------------------------------------------------------------


@pytest.fixture
def stored(tmp_path: Path) -> Path:
    return write_episode(tmp_path, make_data())


def test_truncated_frames_file_is_rejected(stored: Path) -> None:
    path = stored / "frames_wrist.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(EpisodeError, match=r"frames_wrist\.npy: has \d+ bytes.*re-collect"):
        read_episode(stored)


def test_missing_file_is_rejected(stored: Path) -> None:
    (stored / "timestamps_ns.npy").unlink()
    with pytest.raises(EpisodeError, match=r"timestamps_ns\.npy: is missing.*delete its directory"):
        read_episode(stored)


def test_missing_meta_is_rejected_as_incomplete(stored: Path) -> None:
    (stored / "meta.json").unlink()
    with pytest.raises(EpisodeError, match=r"meta\.json: is missing.*incomplete"):
        read_episode(stored)


def test_unparseable_meta_is_rejected(stored: Path) -> None:
    text = (stored / "meta.json").read_text()
    (stored / "meta.json").write_text(text[: len(text) // 2])
    with pytest.raises(EpisodeError, match=r"meta\.json: is not valid JSON"):
        read_episode(stored)


def test_meta_frame_count_disagreeing_with_the_files_is_rejected(stored: Path) -> None:
    _rewrite_meta(stored, lambda meta: meta.update(num_frames=T + 1))
    with pytest.raises(EpisodeError, match=r"(T=6|\(6, 7\)).*re-collect"):
        read_episode(stored)


def test_meta_image_size_disagreeing_with_the_frames_is_rejected(stored: Path) -> None:
    _rewrite_meta(stored, lambda meta: meta["views"][0].update(height=9))
    with pytest.raises(EpisodeError, match=r"frames_front\.npy: holds uint8"):
        read_episode(stored)


def test_newer_format_version_asks_to_upgrade(stored: Path) -> None:
    _rewrite_meta(stored, lambda meta: meta.update(version=episodes.FORMAT_VERSION + 1))
    with pytest.raises(EpisodeError, match="Upgrade aimg"):
        read_episode(stored)


def test_meta_with_a_wrongly_typed_field_is_rejected(stored: Path) -> None:
    _rewrite_meta(stored, lambda meta: meta.update(success="yes"))
    with pytest.raises(EpisodeError, match="'success' must be a bool"):
        read_episode(stored)


def test_invalid_stored_camera_is_rejected(stored: Path) -> None:
    _rewrite_meta(stored, lambda meta: meta["views"][1]["camera"].pop("K"))
    with pytest.raises(EpisodeError, match="camera of view 'wrist' is invalid"):
        read_episode(stored)


def _replace_array(path: Path, array: np.ndarray) -> None:
    """Overwrite a data file keeping size and header valid, as silent corruption would."""
    np.save(path, array)
    _rewrite_meta(
        path.parent, lambda meta: meta["files"][path.name].update(bytes=path.stat().st_size)
    )


def test_nan_pose_is_rejected(stored: Path) -> None:
    poses = np.load(stored / "poses.npy")
    poses[2, 1] = np.nan
    _replace_array(stored / "poses.npy", poses)
    with pytest.raises(EpisodeError, match=r"poses\.npy: non-finite values .* frame 2"):
        read_episode(stored)


def test_gripper_outside_unit_interval_is_rejected(stored: Path) -> None:
    poses = np.load(stored / "poses.npy")
    poses[1, 6] = 1.5
    _replace_array(stored / "poses.npy", poses)
    with pytest.raises(EpisodeError, match=r"gripper .* \[0, 1\]"):
        read_episode(stored)


def test_non_increasing_timestamps_are_rejected(stored: Path) -> None:
    stamps = np.load(stored / "timestamps_ns.npy")
    stamps[3] = stamps[2]
    _replace_array(stored / "timestamps_ns.npy", stamps)
    with pytest.raises(EpisodeError, match="strictly increasing, frame 3"):
        read_episode(stored)


def test_flipped_bytes_are_caught_only_when_verifying(stored: Path) -> None:
    path = stored / "frames_front.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    read_episode(stored)
    with pytest.raises(EpisodeError, match=r"frames_front\.npy: sha256 does not match"):
        read_episode(stored, verify=True)


def test_any_single_edit_of_meta_is_harmless_or_an_episode_error(tmp_path: Path) -> None:
    path = write_episode(tmp_path, make_data(num_frames=2, per_frame_cameras=True))
    original = json.loads((path / "meta.json").read_text())

    def locations(node, prefix=()):
        if prefix:
            yield prefix
        if isinstance(node, dict):
            for key, child in node.items():
                yield from locations(child, (*prefix, key))
        elif isinstance(node, list):
            for key, child in enumerate(node[:2]):
                yield from locations(child, (*prefix, key))

    replacements = [_DELETE, None, -1, 2.5, "", [], {}, True, 10**30]
    for location in locations(original):
        *parents, key = location
        for replacement in replacements:
            meta = copy.deepcopy(original)
            parent = functools.reduce(lambda node, k: node[k], parents, meta)
            if replacement is _DELETE:
                del parent[key]
            else:
                parent[key] = replacement
            (path / "meta.json").write_text(json.dumps(meta))
            with contextlib.suppress(EpisodeError):
                read_episode(path)


_DELETE = object()


def test_episode_errors_are_value_errors() -> None:
    assert issubclass(EpisodeError, ValueError)


# -- writer input validation --------------------------------------------------------------------


def _with(**changes) -> EpisodeData:
    data = make_data()
    for key, value in changes.items():
        setattr(data, key, value)
    return data


def _poses_with(row: int, col: int, value: float) -> np.ndarray:
    poses = make_data().poses.copy()
    poses[row, col] = value
    return poses


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_with(poses=np.zeros((T, 6))), r"poses: must be \[T, 7\]"),
        (_with(poses=_poses_with(1, 0, np.inf)), "poses: non-finite"),
        (_with(poses=_poses_with(0, 6, -0.1)), r"gripper .* \[0, 1\]"),
        (_with(timestamps_ns=np.arange(T) * 1.0), "integer nanoseconds"),
        (_with(timestamps_ns=np.arange(T + 1)), r"must be \[T=5\]"),
        (_with(timestamps_ns=np.array([0, 1, 1, 2, 3])), "strictly increasing"),
        (_with(task=""), "task must be a non-empty str"),
        (_with(success="yes"), "success must be a bool"),
        (_with(frames={}, cameras={}), "at least one camera view"),
        (_with(cameras={"front": _camera(8, 10)}), "same views"),
        (
            _with(
                frames={"front": np.zeros((T, 8, 10, 3), np.float32)},
                cameras={"front": _camera(8, 10)},
            ),
            "must be a uint8",
        ),
        (
            _with(
                frames={"front": np.zeros((T - 1, 8, 10, 3), np.uint8)},
                cameras={"front": _camera(8, 10)},
            ),
            r"must be \[T=5, H, W, 3\]",
        ),
        (
            _with(
                frames={"front": np.zeros((T, 8, 10, 3), np.uint8)},
                cameras={"front": _camera(16, 20)},
            ),
            "calibrated for 20x16 but the frames are 10x8",
        ),
        (
            _with(
                frames={"front": np.zeros((T, 8, 10, 3), np.uint8)},
                cameras={"front": [_camera(8, 10)] * (T - 1)},
            ),
            "lists 4 cameras for 5 frames",
        ),
        (
            _with(
                frames={"front/left": np.zeros((T, 8, 10, 3), np.uint8)},
                cameras={"front/left": _camera(8, 10)},
            ),
            "not usable in a file name",
        ),
        (_with(metadata={"bad": float("nan")}), "JSON-serialisable"),
        (_with(metadata={"bad": object()}), "JSON-serialisable"),
        (_with(extras={"joints": np.zeros((T + 1, 6))}), r"extras\['joints'\]"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_invalid_writer_input_is_refused_before_writing(
    tmp_path: Path, data: EpisodeData, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        write_episode(tmp_path / "root", data)
    assert not (tmp_path / "root").exists()


def test_benchmark_reports_every_measurement(tmp_path: Path) -> None:
    from aimg.episodes.bench import run_episodes_benchmark

    result = run_episodes_benchmark(
        episodes=3, views=2, frames=4, size=8, samples=10, directory=tmp_path
    )
    assert result["episodes"] == 3
    for key in ("write_ms_per_episode", "open_all_s", "open_all_verify_s", "random_frame_us"):
        assert result[key] > 0
    assert list(tmp_path.iterdir()) == []
