"""Drift check: has a camera moved since it was calibrated?

The arm puts the board back at each camera's reference poses (up to three, spread apart, saved
with the calibration); the camera's pose is re-estimated from all their board corners, whose
base-frame positions are known from the arm's reading and the calibrated board mount (PnP of the
camera itself), and compared with the same estimate made from the saved reference detections.
Comparing like with like cancels the estimator's own bias, so an unmoved camera reads ~0 and a
moved one reads its move; spreading the board over several poses keeps a camera rotation from
passing for a sideways shift, which a single small board view cannot tell apart.

Default thresholds, 5 mm and 0.5 deg: a camera ~1 m from the workspace that moves 5 mm or turns
0.5 deg shifts its image by ~2.5-4.5 px at 640x480, i.e. ~2-3 px at the policy's 512 px, which
is ~4-6 mm of decoded action error (1 px ~ 2 mm): above that a task should not start. Below
them is the check's own noise: with 0.1 px (0.2 px) of corner jitter between two frames of an
unmoved camera it reads <= 1.1 mm / 0.06 deg (2.5 mm / 0.15 deg) in 99 % of trials (sim, three
reference poses), so still cameras are not refused; the issue's 1 cm / 1 deg moves read
~8-10 mm / ~1 deg, about twice the limits, so they are caught.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aimg.calib.board import BoardDetector, BoardSpec, Detection
from aimg.calib.calibration_file import CalibrationFile, CalibrationFileError
from aimg.calib.handeye import Wait, move_to
from aimg.geometry import invert_pose, pose_to_matrix, rotation_angle_between, rotvec_to_matrix
from aimg.optional import require
from aimg.robot.interfaces import Arm, CameraRig


@dataclass(frozen=True)
class DriftThresholds:
    """Refuse a camera beyond `translation_mm` or `rotation_deg`; `min_corners` to judge."""

    translation_mm: float = 5.0
    rotation_deg: float = 0.5
    min_corners: int = 10


@dataclass(frozen=True)
class CameraVerdict:
    """The drift verdict of one camera; `reason` says what is wrong when not `ok`."""

    name: str
    ok: bool
    translation_mm: float
    rotation_deg: float
    pixel_shift_px: float
    corners: int
    reason: str

    def to_dict(self) -> dict:
        return {
            "camera": self.name,
            "ok": self.ok,
            "translation_mm": round(self.translation_mm, 3),
            "rotation_deg": round(self.rotation_deg, 4),
            "pixel_shift_px": round(self.pixel_shift_px, 3),
            "corners": self.corners,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class DriftReport:
    """Verdicts of all cameras; `ok` only when every camera passed."""

    verdicts: dict[str, CameraVerdict]

    @property
    def ok(self) -> bool:
        return all(v.ok for v in self.verdicts.values())

    @property
    def failed(self) -> list[str]:
        return [name for name, v in self.verdicts.items() if not v.ok]

    def summary(self) -> str:
        """One line for a status field: 'calibration ok' or the failing cameras' reasons."""
        if self.ok:
            return f"calibration ok ({len(self.verdicts)} cameras unmoved)"
        return "; ".join(self.verdicts[name].reason for name in self.failed)

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "cameras": [v.to_dict() for v in self.verdicts.values()],
        }


def camera_pose_from_board(
    observations: list[tuple[np.ndarray, Detection]],
    tool_T_board: np.ndarray,
    object_points: np.ndarray,
    K: np.ndarray,
    distortion: np.ndarray,
) -> np.ndarray:
    """c2w [4, 4] explaining detections of the board at TCP poses [(tool_pose, detection)]."""
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    points, pixels = [], []
    for tool_pose, detection in observations:
        board_pose = tool_pose @ tool_T_board
        points.append(object_points[detection.ids] @ board_pose[:3, :3].T + board_pose[:3, 3])
        pixels.append(detection.corners)
    world, image = np.concatenate(points), np.concatenate(pixels)
    ok, rvec, tvec = cv2.solvePnP(world, image, K, distortion, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("solvePnP failed")
    rvec, tvec = cv2.solvePnPRefineLM(world, image, K, distortion, rvec, tvec)
    return invert_pose(pose_to_matrix(tvec.reshape(3), rotvec_to_matrix(rvec.reshape(3))))


def _pixel_shift(reference: Detection, current: Detection) -> float:
    common, ref_i, cur_i = np.intersect1d(reference.ids, current.ids, return_indices=True)
    if len(common) == 0:
        return float("nan")
    return float(
        np.median(np.linalg.norm(current.corners[cur_i] - reference.corners[ref_i], axis=1))
    )


def assess_camera(
    calibration: CalibrationFile,
    name: str,
    observations: list[tuple[np.ndarray, Detection]],
    thresholds: DriftThresholds | None = None,
) -> CameraVerdict:
    """Verdict of camera `name` from its detections with the arm at its reference poses:
    `observations[k]` = (measured TCP pose [4, 4], detection) at reference k."""
    thresholds = thresholds or DriftThresholds()
    record = calibration.records[name]
    if not record.references or calibration.board is None or calibration.tool_T_board is None:
        raise CalibrationFileError(
            f"{calibration.path}: camera '{name}' has no drift reference (board, mount and "
            "reference frames): recalibrate with `aimg calib handeye`"
        )
    if len(observations) != len(record.references):
        raise ValueError(
            f"camera '{name}' has {len(record.references)} reference poses, "
            f"got {len(observations)} observations"
        )
    nan = float("nan")
    counts = [len(det) for _, det in observations]
    if min(counts) < thresholds.min_corners:
        return CameraVerdict(
            name,
            False,
            nan,
            nan,
            nan,
            min(counts),
            f"camera '{name}': board not found at its reference poses ({counts} corners, "
            f"need {thresholds.min_corners}): the camera moved a lot, is blocked or is off; "
            "recalibrate with `aimg calib handeye`",
        )
    points = calibration.board.corner_points()
    args = (calibration.tool_T_board, points, record.K, record.distortion)
    before = camera_pose_from_board(
        [(ref.tool_pose, ref.detection) for ref in record.references], *args
    )
    now = camera_pose_from_board(observations, *args)
    translation = float(np.linalg.norm(now[:3, 3] - before[:3, 3]) * 1000.0)
    rotation = math.degrees(float(rotation_angle_between(now[:3, :3], before[:3, :3])))
    shift = float(
        np.nanmax(
            [
                _pixel_shift(ref.detection, det)
                for ref, (_, det) in zip(record.references, observations, strict=True)
            ]
        )
    )
    moved = translation > thresholds.translation_mm or rotation > thresholds.rotation_deg
    reason = (
        f"camera '{name}' moved {translation:.1f} mm / {rotation:.2f} deg since calibration "
        f"(limits {thresholds.translation_mm:g} mm / {thresholds.rotation_deg:g} deg): "
        "recalibrate with `aimg calib handeye`"
        if moved
        else f"camera '{name}' ok ({translation:.1f} mm / {rotation:.2f} deg)"
    )
    return CameraVerdict(name, not moved, translation, rotation, shift, min(counts), reason)


def check_drift(
    calibration: CalibrationFile,
    arm: Arm,
    rig: CameraRig,
    wait: Wait,
    thresholds: DriftThresholds | None = None,
    detector: BoardDetector | None = None,
    settle_s: float = 0.3,
    step_m: float = 0.03,
    tick_s: float = 0.04,
) -> DriftReport:
    """Move the board to each camera's reference pose, judge every camera, return the arm to
    where it started. Raises CalibrationFileError when the file does not fit the rig.
    `step_m` / `tick_s`: the moves' waypoint spacing and period (`MotionSettings.real_arm`)."""
    calibration.require(rig.view_names)
    board: BoardSpec | None = calibration.board
    if board is None:
        raise CalibrationFileError(
            f"{calibration.path} records no board: recalibrate with `aimg calib handeye`"
        )
    detector = detector or BoardDetector(board)
    start = arm.read_state().tool_pose
    poses: list[np.ndarray] = []  # distinct reference poses, each visited once
    slots: dict[str, list[int]] = {}
    for name, record in calibration.records.items():
        if not record.references:
            raise CalibrationFileError(
                f"{calibration.path}: camera '{name}' has no reference frames: recalibrate "
                "with `aimg calib handeye`"
            )
        slots[name] = []
        for ref in record.references:
            match = [i for i, p in enumerate(poses) if np.allclose(p, ref.tool_pose, atol=1e-6)]
            if not match:
                poses.append(ref.tool_pose)
            slots[name].append(match[0] if match else len(poses) - 1)
    seen: list[tuple[np.ndarray, dict[str, np.ndarray]] | None] = []
    for pose in poses:
        if not move_to(arm, pose, wait, step_m, tick_s=tick_s):
            seen.append(None)
            continue
        wait(settle_s)
        tool_pose = arm.read_state().tool_pose
        seen.append((tool_pose, dict(rig.read().images)))
    verdicts: dict[str, CameraVerdict] = {}
    nan = float("nan")
    for name in calibration.records:
        if any(seen[i] is None for i in slots[name]):
            verdicts[name] = CameraVerdict(
                name,
                False,
                nan,
                nan,
                nan,
                0,
                f"camera '{name}': the arm could not reach a reference pose "
                f"(error C{arm.read_state().error_code}); clear the workspace and retry",
            )
            continue
        observations = [
            (seen[i][0], detector.detect(np.asarray(seen[i][1][name]))) for i in slots[name]
        ]
        verdicts[name] = assess_camera(calibration, name, observations, thresholds)
    move_to(arm, start, wait, step_m, tick_s=tick_s)
    return DriftReport(verdicts)
