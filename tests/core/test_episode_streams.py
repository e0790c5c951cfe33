"""Episode streams: arrays of any length not tied to frames (docs/episodes.md, "Streams")."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from aimg.episodes import (
    EpisodeData,
    EpisodeError,
    EpisodeWriter,
    list_episodes,
    read_episode,
    write_episode,
)
from aimg.geometry import Camera, intrinsics_matrix, look_at

T = 4


def _camera() -> Camera:
    K = intrinsics_matrix(9.0, 9.0, 4.5, 3.5)
    return Camera(K, look_at(np.array([0.8, 0.0, 0.6]), np.array([0.4, 0.0, 0.1])), 10, 8)


def _poses(num_frames: int = T) -> np.ndarray:
    poses = np.zeros((num_frames, 7))
    poses[:, :3] = [0.4, 0.0, 0.2]
    poses[:, 6] = 1.0
    return poses


def _streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "command_time_ns": np.arange(250, dtype=np.int64) * 10_000_000,  # 100 Hz, not T long
        "command_action": rng.normal(size=(250, 7)),
        "plan_images": rng.integers(0, 256, (3, 5, 2, 4, 4, 3), dtype=np.uint8),
        "confidence": rng.random((3, 5)).astype(np.float32),
        "flags": np.array([True, False, True]),
        "empty": np.zeros((0, 7), dtype=np.float64),
        "big_endian": np.arange(6, dtype=">i4"),
    }


def _data(streams: dict[str, np.ndarray] | None = None) -> EpisodeData:
    return EpisodeData(
        instruction="reach",
        task="reach",
        frames={"front": np.zeros((T, 8, 10, 3), dtype=np.uint8)},
        cameras={"front": _camera()},
        poses=_poses(),
        timestamps_ns=np.arange(T, dtype=np.int64) * 100,
        success=True,
        streams=_streams() if streams is None else streams,
    )


def _writer(root: Path) -> EpisodeWriter:
    return EpisodeWriter(root, "reach", "reach", {"front": _camera()})


def _append_frames(writer: EpisodeWriter, count: int = T) -> None:
    for t in range(count):
        writer.append({"front": np.zeros((8, 10, 3), np.uint8)}, _poses(1)[0], 100 * t)


def _assert_streams_equal(found, expected: dict[str, np.ndarray]) -> None:
    assert found.stream_names == tuple(expected)
    for name, array in expected.items():
        stored = found.stream(name)
        assert stored.dtype == array.dtype.newbyteorder("<") and stored.shape == array.shape
        np.testing.assert_array_equal(stored, array)


# -- round trips ----------------------------------------------------------------------------------


def test_write_episode_round_trips_streams_of_any_length_shape_and_numeric_dtype(tmp_path):
    path = write_episode(tmp_path, _data())
    episode = read_episode(path, verify=True)
    _assert_streams_equal(episode, _streams())
    meta = json.loads((path / "meta.json").read_text())
    assert meta["version"] == 1
    assert meta["streams"]["command_action"] == {
        "file": "stream_command_action.npy",
        "dtype": "<f8",
        "shape": [250, 7],
    }
    assert meta["streams"]["big_endian"]["dtype"] == "<i4"  # stored little-endian
    for name in _streams():
        assert f"stream_{name}.npy" in meta["files"]


def test_streams_are_read_only_memory_maps_and_survive_pickling(tmp_path):
    episode = read_episode(write_episode(tmp_path, _data()))
    assert isinstance(episode.stream("command_action"), np.memmap)
    with pytest.raises(ValueError):
        episode.stream("command_action")[0, 0] = 1.0
    copy = pickle.loads(pickle.dumps(episode))  # with an open map: it is reopened, not pickled
    _assert_streams_equal(copy, _streams())


def test_episode_writer_add_stream_writes_the_file_at_once_and_publishes_it(tmp_path):
    with _writer(tmp_path) as writer:
        writer.add_stream("command_time_ns", _streams()["command_time_ns"])
        written = writer.temp_dir / "stream_command_time_ns.npy"
        np.testing.assert_array_equal(np.load(written), _streams()["command_time_ns"])
        _append_frames(writer)
        writer.add_stream("empty", _streams()["empty"])  # before or after frames
        path = writer.commit(success=False)
    expected = {name: _streams()[name] for name in ("command_time_ns", "empty")}
    _assert_streams_equal(read_episode(path, verify=True), expected)


def test_open_stream_appends_rows_to_disk_and_fixes_the_header_at_commit(tmp_path):
    images = _streams()["plan_images"]
    with _writer(tmp_path) as writer:
        appender = writer.open_stream("plan_images", np.uint8, images.shape[1:])
        never = writer.open_stream("never_used", np.float32, (5,))
        for item in images:
            appender.append(item)
        assert appender.count == 3 and writer.stream_names == ("plan_images", "never_used")
        _append_frames(writer)
        path = writer.commit(success=True)
    episode = read_episode(path, verify=True)
    np.testing.assert_array_equal(episode.stream("plan_images"), images)
    assert episode.stream("never_used").shape == (0, 5)
    with pytest.raises(RuntimeError, match="already committed"):
        appender.append(images[0])
    assert never.count == 0


def test_to_data_carries_streams_so_an_episode_can_be_rewritten(tmp_path):
    episode = read_episode(write_episode(tmp_path / "a", _data()))
    copy = read_episode(write_episode(tmp_path / "b", episode.to_data()), verify=True)
    _assert_streams_equal(copy, _streams())


# -- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "array", "match"),
    [
        ("text", np.array(["a", "b"]), "numeric"),
        ("objects", np.array([{}, 1], dtype=object), "numeric"),
        ("complex", np.ones(3, dtype=np.complex64), "numeric"),
        ("scalar", np.array(3.0), "at least one dimension"),
        ("bad name", np.ones(3), "not usable in a file name"),
        (".hidden", np.ones(3), "not usable in a file name"),
    ],
)
def test_invalid_streams_are_refused_before_any_byte_is_written(tmp_path, name, array, match):
    with pytest.raises(ValueError, match=match):
        write_episode(tmp_path, _data({name: array}))
    assert list(tmp_path.iterdir()) == []
    with _writer(tmp_path / "w") as writer:
        before = sorted(p.name for p in writer.temp_dir.iterdir())
        with pytest.raises(ValueError, match=match):
            writer.add_stream(name, array)
        assert sorted(p.name for p in writer.temp_dir.iterdir()) == before


def test_a_stream_name_can_be_added_only_once(tmp_path):
    with _writer(tmp_path) as writer:
        writer.add_stream("commands", np.ones(3))
        with pytest.raises(ValueError, match="already added"):
            writer.add_stream("commands", np.ones(4))
        writer.open_stream("plans", np.uint8, (2, 3))
        with pytest.raises(ValueError, match="already added"):
            writer.add_stream("plans", np.ones(4))
        with pytest.raises(ValueError, match="already added"):
            writer.open_stream("commands", np.float64, ())
        _append_frames(writer)
        path = writer.commit(success=True)
    np.testing.assert_array_equal(read_episode(path).stream("commands"), np.ones(3))


def test_open_stream_rows_must_match_its_shape_and_dtype_kind(tmp_path):
    with _writer(tmp_path) as writer:
        appender = writer.open_stream("images", np.uint8, (2, 3))
        with pytest.raises(ValueError, match=r"must be \[2, 3\]"):
            appender.append(np.zeros((3, 2), np.uint8))
        with pytest.raises(ValueError, match="must be uint8"):
            appender.append(np.zeros((2, 3), np.float32))
        with pytest.raises(ValueError, match="numeric"):
            writer.open_stream("text", np.str_, (2,))
        assert appender.count == 0


def test_an_unknown_stream_name_lists_the_streams_there_are(tmp_path):
    episode = read_episode(write_episode(tmp_path, _data({"commands": np.ones(2)})))
    with pytest.raises(KeyError, match=r"no stream 'plans'; it has \('commands',\)"):
        episode.stream("plans")


# -- corruption -----------------------------------------------------------------------------------


def test_a_flipped_byte_in_a_stream_is_caught_by_verify(tmp_path):
    path = write_episode(tmp_path, _data())
    file = path / "stream_command_action.npy"
    raw = bytearray(file.read_bytes())
    raw[-3] ^= 0xFF
    file.write_bytes(bytes(raw))
    read_episode(path)  # size and header still fine: only the hash can tell
    with pytest.raises(EpisodeError, match=r"stream_command_action.npy: sha256 does not match"):
        read_episode(path, verify=True)


def test_a_truncated_stream_is_caught_without_verify(tmp_path):
    path = write_episode(tmp_path, _data())
    file = path / "stream_plan_images.npy"
    file.write_bytes(file.read_bytes()[:-10])
    with pytest.raises(EpisodeError, match=r"stream_plan_images.npy: has \d+ bytes but"):
        read_episode(path)


def test_a_missing_stream_file_is_caught(tmp_path):
    path = write_episode(tmp_path, _data())
    (path / "stream_flags.npy").unlink()
    with pytest.raises(EpisodeError, match="stream_flags.npy: is missing"):
        read_episode(path)


def _edit_meta(path: Path, edit) -> None:
    meta = json.loads((path / "meta.json").read_text())
    edit(meta)
    (path / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m["streams"]["flags"].update(shape=[4]), r"holds bool \(3,\) but meta.json"),
        (lambda m: m["streams"]["flags"].update(dtype="<f4"), "meta.json expects float32"),
        (lambda m: m["streams"]["flags"].update(file="poses.npy"), "no valid file entry"),
        (lambda m: m["streams"]["flags"].pop("shape"), "malformed"),
        (lambda m: m["streams"]["flags"].update(shape=[]), "ndim >= 1"),
        (lambda m: m["files"].pop("stream_flags.npy"), "lists no size or hash"),
        (lambda m: m.update(streams=[]), "'streams' must be a dict"),
        (lambda m: m["streams"].update({"a b": {}}), "stream 'a b' is invalid"),
    ],
)
def test_stream_records_must_match_the_files(tmp_path, edit, match):
    path = write_episode(tmp_path, _data())
    _edit_meta(path, edit)
    with pytest.raises(EpisodeError, match=match):
        read_episode(path)


def test_episodes_without_the_streams_key_read_as_before(tmp_path):
    path = write_episode(tmp_path, _data({}))
    _edit_meta(path, lambda meta: meta.pop("streams"))  # as written before streams existed
    episode = read_episode(path, verify=True)
    assert episode.stream_names == () and episode.to_data().streams == {}
    assert list_episodes(tmp_path) == [path]
    with pytest.raises(KeyError, match=r"no stream 'commands'; it has \(\)"):
        episode.stream("commands")
