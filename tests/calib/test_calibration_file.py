"""The calibration file: round trip, atomic writes, and errors that say what to do."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from aimg.calib.board import BoardSpec, Detection
from aimg.calib.calibration_file import (
    CalibrationFile,
    CalibrationFileError,
    CameraCalibration,
    ReferenceFrame,
    read_calibration,
    write_calibration,
)
from aimg.geometry import intrinsics_matrix, look_at


def make_calibration(names=("left", "right")) -> CalibrationFile:
    records = {}
    for i, name in enumerate(names):
        records[name] = CameraCalibration(
            name=name,
            serial=f"SN{i}",
            K=intrinsics_matrix(600.0 + i, 601.0, 320.5, 240.25),
            distortion=np.array([0.01, -0.002, 0.0, 0.0, 0.0]),
            c2w=look_at((1.0, 0.5 - i, 0.6), (0.4, 0.0, 0.1)),
            width=640,
            height=480,
            date="2026-12-02T20:00:00+00:00",
            method="park+refine",
            residuals={"train": {"rms_px": 0.3}},
            references=(
                ReferenceFrame(
                    f"cell.{name}.reference0.png",
                    look_at((0.4, 0.0, 0.3), (0.4, 0.0, 0.0), (1.0, 0.0, 0.0)),
                    Detection(np.array([0, 3, 7]), np.array([[1.5, 2.25], [3.0, 4.0], [5.0, 6.0]])),
                ),
            ),
        )
    return CalibrationFile(records, BoardSpec(), np.eye(4), "sim seed=1 cameras=2")


def test_round_trip_keeps_every_field(tmp_path):
    original = make_calibration()
    path = write_calibration(tmp_path / "cell.yaml", original)
    loaded = read_calibration(path)
    assert loaded.source == original.source and loaded.board == original.board
    for name, record in original.records.items():
        back = loaded.records[name]
        assert back.serial == record.serial and back.method == record.method
        np.testing.assert_allclose(back.K, record.K)
        np.testing.assert_allclose(back.c2w, record.c2w, atol=1e-9)
        np.testing.assert_allclose(back.distortion, record.distortion)
        np.testing.assert_array_equal(back.references[0].detection.ids, [0, 3, 7])
        np.testing.assert_allclose(
            back.references[0].tool_pose, record.references[0].tool_pose, atol=1e-9
        )
    cameras = loaded.cameras()
    assert set(cameras) == {"left", "right"} and cameras["left"].width == 640
    assert loaded.reference_image_paths("left") == [tmp_path / "cell.left.reference0.png"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path, monkeypatch):
    path = write_calibration(tmp_path / "cell.yaml", make_calibration())
    before = path.read_text()

    def broken_dump(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", broken_dump)
    with pytest.raises(RuntimeError):
        write_calibration(path, make_calibration(("other",)))
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.yaml"]


def test_a_file_for_other_cameras_is_refused_naming_both_sets(tmp_path):
    loaded = read_calibration(write_calibration(tmp_path / "cell.yaml", make_calibration()))
    with pytest.raises(
        CalibrationFileError, match=r"for cameras \['left', 'right'\].*has \['front'\]"
    ):
        loaded.require(["front"])
    with pytest.raises(CalibrationFileError, match="serial 'SN0'.*'SN9'"):
        loaded.require(["left", "right"], {"left": "SN9"})
    loaded.require(["right", "left"], {"left": "SN0"})


def _write_raw(tmp_path, mutate) -> str:
    path = write_calibration(tmp_path / "cell.yaml", make_calibration())
    doc = yaml.safe_load(path.read_text())
    mutate(doc)
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_missing_key_names_the_camera_and_the_key(tmp_path):
    path = _write_raw(tmp_path, lambda doc: doc["cameras"]["right"].pop("c2w"))
    with pytest.raises(
        CalibrationFileError, match=r"camera 'right' lacks \['c2w'\].*aimg calib handeye"
    ):
        read_calibration(path)


def test_a_bad_matrix_is_refused(tmp_path):
    def skew(doc):
        doc["cameras"]["left"]["c2w"][0][0] = 2.0

    with pytest.raises(
        CalibrationFileError, match="camera 'left' c2w rotation block is not a proper rotation"
    ):
        read_calibration(_write_raw(tmp_path, skew))

    def short_k(doc):
        doc["cameras"]["left"]["K"] = [[1.0, 0.0], [0.0, 1.0]]

    with pytest.raises(CalibrationFileError, match=r"K has shape \[2, 2\], expected \[3, 3\]"):
        read_calibration(_write_raw(tmp_path, short_k))


def test_other_yaml_and_missing_files_say_what_to_do(tmp_path):
    other = tmp_path / "config.yaml"
    other.write_text("model: sim-tiny\n")
    with pytest.raises(CalibrationFileError, match="not an aimg calibration file"):
        read_calibration(other)
    with pytest.raises(CalibrationFileError, match="does not exist: run `aimg calib handeye"):
        read_calibration(tmp_path / "missing.yaml")


def test_latency_and_scene_references_round_trip_and_bad_ones_are_named(tmp_path):
    import dataclasses

    from aimg.calib.calibration_file import Latency

    original = make_calibration()
    records = {
        name: dataclasses.replace(r, scene_reference=f"cell.{name}.scene.png")
        for name, r in original.records.items()
    }
    latency = Latency({"left": 0.031, "right": 0.029}, 0.074, "2026-12-03", "sim", {"frames": 90})
    path = write_calibration(
        tmp_path / "cell.yaml", dataclasses.replace(original, records=records, latency=latency)
    )
    loaded = read_calibration(path)
    assert loaded.records["left"].scene_reference == "cell.left.scene.png"
    assert loaded.resolve("cell.left.scene.png") == tmp_path / "cell.left.scene.png"
    assert loaded.latency == latency
    data = yaml.safe_load(path.read_text())
    data["latency"]["camera_s"]["front"] = 0.03
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationFileError, match=r"names cameras \['front'\].*calib latency"):
        read_calibration(path)
    data["latency"] = {"camera_s": {"left": 5.0}, "arm_s": 0.1}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(CalibrationFileError, match="latencies must be in"):
        read_calibration(path)
