"""Camera intrinsics: ChArUco calibration (`cv2.calibrateCamera`), RealSense factory values,
the coverage map that shows where the board was seen, and the intrinsics file.

The intrinsics file (`format: aimg-intrinsics`) holds per camera: serial, K (pixels of a
`width` x `height` image), OpenCV distortion, how it was obtained ("charuco" or "factory"), the
date and, for ChArUco, the RMS reprojection error, the views used and the image coverage. It is
separate from the calibration file (`calibration_file.py`), whose records need a camera-to-base
pose: intrinsics come first, and `aimg calib handeye` reads them from here. Writes are atomic
and update the file camera by camera, so cameras can be calibrated one at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from aimg.atomic_files import write_bytes_atomic
from aimg.calib.board import BoardDetector, BoardSpec, Detection
from aimg.calib.calibration_file import read_camera_document
from aimg.calib.handeye import CalibrationError, MotionSettings, facing_pose, move_to
from aimg.geometry import Camera, rotvec_to_matrix
from aimg.optional import require

if TYPE_CHECKING:
    from aimg.calib.sim import SimCalibrationCell
    from aimg.robot.realsense.rig import Intrinsics, RealSenseRig

FORMAT = "aimg-intrinsics"
VERSION = 1
METHODS = ("charuco", "factory")
DISTORTION_MODELS = (0, 4, 5, 8)  # coefficients solved: none, k1 k2 p1 p2, + k3, rational


def _cv2() -> ModuleType:
    return require("cv2", "robot", package="opencv-python-headless")


# -- ChArUco calibration -------------------------------------------------------------------------


@dataclass(frozen=True)
class IntrinsicsSettings:
    """How views are chosen and what is solved.

    A view counts when it has >= `min_corners` corners not all on one line; >= `min_views` such
    views are needed. After a first solve, views whose RMS exceeds both `max_view_rms_px` and
    `outlier_factor` x the median are dropped (misdetections, motion blur) and the rest re-solved.
    `distortion`: 5 (k1 k2 p1 p2 k3, OpenCV's default), 4 (k3 = 0, for narrow lenses), 8
    (rational model, wide lenses) or 0 (pinhole). Focal lengths are observable only from boards
    tilted out of the image plane: the views must hold >= `min_tilt_deg` of tilt about both image
    axes. The coverage grid has `grid` (columns, rows) cells; below `min_coverage` of the cells
    seen the result is refused, below `warn_coverage` it carries a warning.
    """

    min_corners: int = 8
    min_views: int = 6
    max_view_rms_px: float = 1.0
    outlier_factor: float = 3.0
    distortion: int = 5
    min_tilt_deg: float = 10.0
    grid: tuple[int, int] = (8, 6)
    min_coverage: float = 0.15
    warn_coverage: float = 0.5

    def __post_init__(self) -> None:
        if self.distortion not in DISTORTION_MODELS:
            raise ValueError(
                f"distortion must be one of {DISTORTION_MODELS} coefficients, got {self.distortion}"
            )
        if self.min_corners < 6 or self.min_views < 3:
            raise ValueError("min_corners must be >= 6 and min_views >= 3")
        if self.grid[0] < 1 or self.grid[1] < 1:
            raise ValueError(f"grid must be positive (columns, rows), got {self.grid}")

    def flags(self) -> int:
        cv2 = _cv2()
        return {
            0: cv2.CALIB_FIX_K1 | cv2.CALIB_FIX_K2 | cv2.CALIB_FIX_K3 | cv2.CALIB_ZERO_TANGENT_DIST,
            4: cv2.CALIB_FIX_K3,
            5: 0,
            8: cv2.CALIB_RATIONAL_MODEL,
        }[self.distortion]


@dataclass(frozen=True)
class IntrinsicsResult:
    """A ChArUco calibration and its quality.

    K [3, 3] and distortion [5 or 8] (OpenCV order) for `width` x `height` images; `rms_px`
    over all used corners, `view_rms_px` [V] per used view (`used` their indices into the input,
    `rejected` index -> reason); `std` the 1-sigma uncertainty of fx, fy, cx, cy (px);
    `coverage` [rows, cols] corners per cell of the image grid; `corners` [N, 2] every used
    corner (px) and `tilt_deg` [V] each used board's angle to the image plane.
    """

    K: np.ndarray
    distortion: np.ndarray
    width: int
    height: int
    rms_px: float
    view_rms_px: np.ndarray
    used: tuple[int, ...]
    rejected: dict[int, str]
    views_total: int
    std: np.ndarray
    coverage: np.ndarray
    corners: np.ndarray
    tilt_deg: np.ndarray
    warnings: tuple[str, ...] = ()

    @property
    def coverage_fraction(self) -> float:
        """Fraction of grid cells holding at least one corner."""
        return float(np.count_nonzero(self.coverage) / self.coverage.size)

    def to_dict(self) -> dict[str, Any]:
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        return {
            "width": self.width,
            "height": self.height,
            "fx": round(float(fx), 4),
            "fy": round(float(fy), 4),
            "cx": round(float(cx), 4),
            "cy": round(float(cy), 4),
            "std_px": {
                k: round(float(v), 4)
                for k, v in zip(("fx", "fy", "cx", "cy"), self.std, strict=True)
            },
            "distortion": np.round(self.distortion, 6).tolist(),
            "rms_px": round(self.rms_px, 4),
            "max_view_rms_px": round(float(self.view_rms_px.max()), 4),
            "views_used": len(self.used),
            "views_rejected": len(self.rejected),
            "views_total": self.views_total,
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "corners": int(len(self.corners)),
            "coverage": round(self.coverage_fraction, 4),
            "coverage_grid": self.coverage.tolist(),
            "tilt_deg": {
                "median": round(float(np.median(self.tilt_deg)), 2),
                "max": round(float(self.tilt_deg.max()), 2),
            },
            "warnings": list(self.warnings),
        }


def coverage_grid(
    corners: np.ndarray, width: int, height: int, grid: tuple[int, int]
) -> np.ndarray:
    """Corner counts [rows, cols] of a `grid` = (cols, rows) tiling of the image."""
    cols, rows = grid
    counts = np.zeros((rows, cols), dtype=np.int64)
    if len(corners) == 0:
        return counts
    c = np.clip(((corners[:, 0] + 0.5) / width * cols).astype(int), 0, cols - 1)
    r = np.clip(((corners[:, 1] + 0.5) / height * rows).astype(int), 0, rows - 1)
    np.add.at(counts, (r, c), 1)
    return counts


def _collinear(object_points: np.ndarray, square_m: float) -> bool:
    """Whether board points [N, 3] lie (nearly) on one line: such a view fixes no homography."""
    centred = object_points[:, :2] - object_points[:, :2].mean(axis=0)
    return bool(np.linalg.svd(centred, compute_uv=False)[-1] < 0.25 * square_m)


def _tilts(rvecs: Sequence[np.ndarray]) -> np.ndarray:
    """Per view, the board's tilt as a vector [V, 2] in the image plane: direction = the image
    axis it turned about, length = sin(tilt angle)."""
    normals = np.array([rotvec_to_matrix(np.asarray(r).reshape(3))[:, 2] for r in rvecs])
    normals *= np.sign(normals[:, 2:3] + 1e-12)  # the normal's side facing away from the camera
    # normal = z + t: the rotation axis is z x n, in the image plane
    return np.stack([-normals[:, 1], normals[:, 0]], axis=-1)


def _check_tilts(tilts: np.ndarray, settings: IntrinsicsSettings) -> None:
    """Refuse views whose boards were never tilted about one image axis: with a planar board a
    focal length trades off against the board's distance and cannot be solved."""
    scatter = tilts.T @ tilts
    needed = math.sin(math.radians(settings.min_tilt_deg)) ** 2
    values, vectors = np.linalg.eigh(scatter)
    if values[0] >= needed:
        return
    axis = vectors[:, 0]
    which = "vertical (y)" if abs(axis[1]) > abs(axis[0]) else "horizontal (x)"
    focal = "fx" if abs(axis[1]) > abs(axis[0]) else "fy"
    largest = math.degrees(math.asin(min(1.0, float(np.sqrt(values[0])))))
    raise CalibrationError(
        f"degenerate views: the board was never tilted about the image's {which} axis (the "
        f"views add up to {largest:.1f} deg, need >= {settings.min_tilt_deg:.0f}), so the focal "
        f"length {focal} cannot be told from the board's distance: add views with the board "
        "turned 20-45 deg towards and away from the camera about both axes"
    )


def _solve(
    objects: list[np.ndarray], images: list[np.ndarray], size: tuple[int, int], flags: int
) -> tuple[float, np.ndarray, np.ndarray, list, np.ndarray, np.ndarray]:
    cv2 = _cv2()
    criteria = (cv2.TERM_CRITERIA_COUNT + cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    rms, K, dist, rvecs, _, std, _, per_view = cv2.calibrateCameraExtended(
        objects, images, size, None, None, flags=flags, criteria=criteria
    )
    return float(rms), K, dist.reshape(-1), list(rvecs), std.reshape(-1), per_view.reshape(-1)


def calibrate_from_detections(
    detections: Sequence[Detection],
    board: BoardSpec,
    width: int,
    height: int,
    settings: IntrinsicsSettings | None = None,
) -> IntrinsicsResult:
    """Solve K and distortion from ChArUco detections (one per image, possibly empty) of
    `width` x `height` images; raises CalibrationError saying what to do when it cannot."""
    settings = settings or IntrinsicsSettings()
    cv_board = board.cv_board()
    seen = sum(1 for d in detections if len(d) > 0)
    if seen == 0:
        raise CalibrationError(
            f"the board was not found in any of {len(detections)} images: check that the "
            f"board spec ({board.squares_x}x{board.squares_y} squares, {board.dictionary}) "
            "matches the printed board and that it is in focus and lit"
        )
    objects, images, indices = [], [], []
    rejected: dict[int, str] = {}
    for index, det in enumerate(detections):
        if len(det) == 0:
            continue
        if len(det) < settings.min_corners:
            rejected[index] = f"{len(det)} corners < {settings.min_corners}"
            continue
        obj, img = cv_board.matchImagePoints(
            det.corners.reshape(-1, 1, 2).astype(np.float32), det.ids.reshape(-1, 1)
        )
        obj = np.asarray(obj, dtype=np.float32).reshape(-1, 3)
        if _collinear(obj, board.square_m):
            rejected[index] = "corners on one line"
            continue
        objects.append(obj)
        images.append(np.asarray(img, dtype=np.float32).reshape(-1, 2))
        indices.append(index)
    if len(objects) < settings.min_views:
        raise CalibrationError(
            f"only {len(objects)} of {len(detections)} images show the board with >= "
            f"{settings.min_corners} corners, need >= {settings.min_views} (the board was seen "
            f"in {seen}): take more images with the whole board in view, tilted and spread "
            "over the image"
        )
    flags = settings.flags()
    while True:
        rms, K, dist, rvecs, std, per_view = _solve(objects, images, (width, height), flags)
        limit = max(settings.max_view_rms_px, settings.outlier_factor * float(np.median(per_view)))
        bad = np.flatnonzero(per_view > limit)
        if len(bad) == 0:
            break
        for i in bad:
            rejected[indices[i]] = f"RMS {per_view[i]:.2f} px > {limit:.2f} px"
        keep = [i for i in range(len(objects)) if i not in set(bad.tolist())]
        if len(keep) < settings.min_views:
            raise CalibrationError(
                f"only {len(keep)} views agree with the solution (RMS <= {limit:.2f} px), need "
                f">= {settings.min_views}: discard blurred images and check the board is flat"
            )
        objects = [objects[i] for i in keep]
        images = [images[i] for i in keep]
        indices = [indices[i] for i in keep]
    tilts = _tilts(rvecs)
    _check_tilts(tilts, settings)
    corners = np.concatenate(images).astype(np.float64)
    coverage = coverage_grid(corners, width, height, settings.grid)
    fraction = np.count_nonzero(coverage) / coverage.size
    if fraction < settings.min_coverage:
        raise CalibrationError(
            f"degenerate views: the board covered only {fraction:.0%} of the image (need >= "
            f"{settings.min_coverage:.0%}), so distortion and the principal point are guesses: "
            "move the board to every part of the image, corners included"
        )
    warnings = []
    if fraction < settings.warn_coverage:
        warnings.append(
            f"the board covered {fraction:.0%} of the image: distortion away from the seen "
            "area is extrapolated; add views near the empty cells of the coverage map"
        )
    distortion = np.zeros(5) if settings.distortion == 0 else dist[: max(5, settings.distortion)]
    return IntrinsicsResult(
        K=np.asarray(K, dtype=np.float64),
        distortion=np.asarray(distortion, dtype=np.float64),
        width=int(width),
        height=int(height),
        rms_px=rms,
        view_rms_px=per_view,
        used=tuple(indices),
        rejected=dict(sorted(rejected.items())),
        views_total=len(detections),
        std=np.asarray(std[:4], dtype=np.float64),
        coverage=coverage,
        corners=corners,
        tilt_deg=np.degrees(np.arcsin(np.clip(np.linalg.norm(tilts, axis=1), 0.0, 1.0))),
        warnings=tuple(warnings),
    )


def calibrate_intrinsics(
    images: Sequence[np.ndarray],
    board: BoardSpec,
    settings: IntrinsicsSettings | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> IntrinsicsResult:
    """Calibrate one camera from its RGB uint8 images [H, W, 3] of the ChArUco `board`."""
    if len(images) == 0:
        raise CalibrationError("no images to calibrate from: capture 15-30 views of the board")
    shapes = {np.asarray(img).shape[:2] for img in images}
    if len(shapes) != 1:
        raise CalibrationError(
            f"the images have different sizes {sorted(shapes)}: intrinsics hold for one image "
            "size; calibrate each stream size separately"
        )
    height, width = shapes.pop()
    detector = BoardDetector(board)
    detections = []
    for i, image in enumerate(images):
        detections.append(detector.detect(np.asarray(image)))
        if on_progress:
            on_progress(i + 1, len(images))
    return calibrate_from_detections(detections, board, width, height, settings)


def draw_coverage_map(
    result: IntrinsicsResult, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """RGB uint8 [H, W, 3] picture of the image area: grid cells shaded from red (no corner)
    through yellow to green (many), every used corner a dot, RMS and coverage written on it.
    `image_size` = (width, height) of the picture (default: the calibrated image size)."""
    cv2 = _cv2()
    width, height = image_size or (result.width, result.height)
    sx, sy = width / result.width, height / result.height
    rows, cols = result.coverage.shape
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    full = max(1.0, float(np.percentile(result.coverage[result.coverage > 0], 75)))
    for r in range(rows):
        for c in range(cols):
            x0, x1 = round(c * width / cols), round((c + 1) * width / cols)
            y0, y1 = round(r * height / rows), round((r + 1) * height / rows)
            level = min(1.0, result.coverage[r, c] / full)
            if result.coverage[r, c] == 0:
                color = (120, 20, 20)
            else:  # red-orange when sparse, green when well covered
                color = (round(200 * (1.0 - level) + 30), round(90 + 110 * level), 40)
            picture[y0:y1, x0:x1] = color
            cv2.rectangle(picture, (x0, y0), (x1 - 1, y1 - 1), (70, 70, 70), 1)
    for u, v in result.corners:
        cv2.circle(picture, (round(u * sx), round(v * sy)), 1, (235, 235, 235), -1)
    scale = max(0.35, 0.5 * width / 640)
    lines = [
        f"RMS {result.rms_px:.3f} px   coverage {result.coverage_fraction:.0%}",
        f"views {len(result.used)} used / {len(result.rejected)} rejected   "
        f"fx {result.K[0, 0]:.1f} fy {result.K[1, 1]:.1f}",
    ]
    for k, text in enumerate(lines):
        origin = (8, round((22 + 22 * k) * scale / 0.5))
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3)
        cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1)
    return picture


# -- factory intrinsics (RealSense) --------------------------------------------------------------


def opencv_distortion(intrinsics: Intrinsics) -> tuple[np.ndarray, float]:
    """OpenCV distortion [5] of a RealSense stream and the largest error (px) of expressing its
    librealsense model that way.

    "brown_conrady" is OpenCV's model exactly; "inverse_brown_conrady" (maps distorted to
    undistorted points) and "modified_brown_conrady" (tangential terms on the radially distorted
    point) are fitted by linear least squares over a grid of the image. Fisheye models
    ("kannala_brandt4", "ftheta") have no such form: calibrate those from images.
    """
    coeffs = np.zeros(5)
    coeffs[: len(intrinsics.coeffs)] = np.asarray(intrinsics.coeffs[:5], dtype=np.float64)
    model = intrinsics.model
    if model == "none" or not coeffs.any():
        return np.zeros(5), 0.0
    if model == "brown_conrady":
        return coeffs, 0.0
    if model not in ("inverse_brown_conrady", "modified_brown_conrady"):
        raise CalibrationError(
            f"the device reports the {model!r} distortion model, which OpenCV's 5-coefficient "
            "model cannot express: calibrate this camera from ChArUco images (--images)"
        )
    K = intrinsics.K
    u, v = np.meshgrid(
        np.linspace(0.0, intrinsics.width - 1.0, 33), np.linspace(0.0, intrinsics.height - 1.0, 25)
    )
    grid = np.stack([(u.ravel() - K[0, 2]) / K[0, 0], (v.ravel() - K[1, 2]) / K[1, 1]], axis=-1)
    k1, k2, p1, p2, k3 = coeffs
    x, y = grid[:, 0], grid[:, 1]
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    if model == "inverse_brown_conrady":  # grid = distorted, the model gives undistorted
        distorted = grid
        undistorted = np.stack(
            [
                x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
                y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y),
            ],
            axis=-1,
        )
    else:  # grid = undistorted; tangential terms act on the radially distorted point
        xr, yr = x * radial, y * radial
        distorted = np.stack(
            [
                xr + 2 * p1 * xr * yr + p2 * (r2 + 2 * xr * xr),
                yr + 2 * p2 * xr * yr + p1 * (r2 + 2 * yr * yr),
            ],
            axis=-1,
        )
        undistorted = grid
    xu, yu = undistorted[:, 0], undistorted[:, 1]
    ru = xu * xu + yu * yu
    # OpenCV: d = u (1 + k1 r2 + k2 r4 + k3 r6) + tangential, linear in (k1, k2, p1, p2, k3)
    rows_x = np.stack([xu * ru, xu * ru**2, 2 * xu * yu, ru + 2 * xu * xu, xu * ru**3], axis=-1)
    rows_y = np.stack([yu * ru, yu * ru**2, ru + 2 * yu * yu, 2 * xu * yu, yu * ru**3], axis=-1)
    A = np.concatenate([rows_x, rows_y])
    b = np.concatenate([distorted[:, 0] - xu, distorted[:, 1] - yu])
    fitted, *_ = np.linalg.lstsq(A, b, rcond=None)
    residual = (A @ fitted - b).reshape(2, -1).T * np.array([K[0, 0], K[1, 1]])
    return fitted, float(np.max(np.linalg.norm(residual, axis=1)))


# -- the intrinsics file -------------------------------------------------------------------------


@dataclass(frozen=True)
class IntrinsicsRecord:
    """One camera's intrinsics: K [3, 3] for `width` x `height` images, OpenCV distortion [n],
    how and when they were obtained, and the quality figures of a ChArUco calibration."""

    name: str
    serial: str
    K: np.ndarray
    distortion: np.ndarray
    width: int
    height: int
    method: str
    date: str
    rms_px: float | None = None
    views: int | None = None
    coverage: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "serial": self.serial,
            "width": self.width,
            "height": self.height,
            "K": np.round(self.K, 9).tolist(),
            "distortion": np.round(self.distortion, 9).tolist(),
            "method": self.method,
            "date": self.date,
        }
        if self.rms_px is not None:
            entry["rms_px"] = round(float(self.rms_px), 5)
        if self.views is not None:
            entry["views"] = int(self.views)
        if self.coverage is not None:
            entry["coverage"] = round(float(self.coverage), 4)
        if self.details:
            entry["details"] = self.details
        return entry


def record_from_result(
    name: str, serial: str, result: IntrinsicsResult, date: str, details: dict | None = None
) -> IntrinsicsRecord:
    """The file record of a ChArUco calibration."""
    return IntrinsicsRecord(
        name=name,
        serial=serial,
        K=result.K,
        distortion=result.distortion,
        width=result.width,
        height=result.height,
        method="charuco",
        date=date,
        rms_px=result.rms_px,
        views=len(result.used),
        coverage=result.coverage_fraction,
        details=dict(details or {}),
    )


def _record_from_yaml(name: str, data: object) -> IntrinsicsRecord:
    if not isinstance(data, dict):
        raise ValueError("is not a mapping")
    missing = [
        k for k in ("serial", "K", "distortion", "width", "height", "method") if k not in data
    ]
    if missing:
        raise ValueError(f"lacks {missing}")
    try:
        K = np.asarray(data["K"], dtype=np.float64)
        distortion = np.asarray(data["distortion"], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise ValueError("K or distortion is not numeric") from exc
    if K.shape != (3, 3) or not np.isfinite(K).all():
        raise ValueError(f"K must be a finite 3x3 matrix, got shape {list(K.shape)}")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0.0, 0.0, 1.0]):
        raise ValueError("K must be OpenCV intrinsics: fx, fy > 0 and last row [0, 0, 1]")
    if len(distortion) not in (4, 5, 8, 12, 14) or not np.isfinite(distortion).all():
        raise ValueError("distortion must be 4, 5, 8, 12 or 14 finite OpenCV coefficients")
    width, height = data["width"], data["height"]
    if not (isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0):
        raise ValueError(f"image size must be positive integers, got {width}x{height}")
    if data["method"] not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {data['method']!r}")
    optional = {k: data.get(k) for k in ("rms_px", "views", "coverage")}
    return IntrinsicsRecord(
        name=name,
        serial=str(data["serial"]),
        K=K,
        distortion=distortion,
        width=width,
        height=height,
        method=str(data["method"]),
        date=str(data.get("date", "")),
        rms_px=None if optional["rms_px"] is None else float(optional["rms_px"]),
        views=None if optional["views"] is None else int(optional["views"]),
        coverage=None if optional["coverage"] is None else float(optional["coverage"]),
        details=dict(data.get("details") or {}),
    )


def read_intrinsics(path: str | Path) -> dict[str, IntrinsicsRecord]:
    """Camera name -> intrinsics from an `aimg calib intrinsics` file; errors name the file,
    the camera and what to do."""
    _, records = read_camera_document(
        Path(path), FORMAT, VERSION, "aimg calib intrinsics", _record_from_yaml, CalibrationError
    )
    return records


def write_intrinsics(
    path: str | Path,
    records: Mapping[str, IntrinsicsRecord],
    board: BoardSpec | None = None,
    update: bool = True,
) -> Path:
    """Write `records` atomically; with `update`, cameras already in an existing file and not in
    `records` are kept (calibrate one camera at a time). Returns the path."""
    path = Path(path)
    merged: dict[str, IntrinsicsRecord] = {}
    previous_board = None
    if update and path.exists():
        merged = read_intrinsics(path)
        previous_board = (yaml.safe_load(path.read_text()) or {}).get("board")
    merged.update(records)
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION}
    if board is not None:
        doc["board"] = board.to_dict()
    elif previous_board:
        doc["board"] = previous_board
    doc["cameras"] = {name: record.to_dict() for name, record in merged.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)
    return write_bytes_atomic(path, text.encode())


def factory_records(rig: RealSenseRig, date: str) -> dict[str, IntrinsicsRecord]:
    """The factory intrinsics of every camera of a connected RealSense rig."""
    records = {}
    devices = rig.devices
    for name, intr in rig.intrinsics.items():
        distortion, fit_px = opencv_distortion(intr)
        device = devices.get(name, {})
        records[name] = IntrinsicsRecord(
            name=name,
            serial=device.get("serial", ""),
            K=intr.K,
            distortion=distortion,
            width=int(intr.width),
            height=int(intr.height),
            method="factory",
            date=date,
            details={
                "device": device.get("name", ""),
                "firmware": device.get("firmware", ""),
                "model": intr.model,
                "coeffs": [float(c) for c in intr.coeffs],
                "distortion_fit_px": round(fit_px, 5),
            },
        )
    return records


def read_factory_intrinsics(rig: RealSenseRig, date: str) -> dict[str, IntrinsicsRecord]:
    """Start every camera of `rig` (live or a recording), read its factory intrinsics, stop."""
    with rig:
        records = factory_records(rig, date)
    missing = sorted(set(rig.view_names) - set(records))
    if missing:
        raise CalibrationError(f"cameras {missing} reported no colour intrinsics")
    return records


# -- the simulated procedure ---------------------------------------------------------------------


@dataclass(frozen=True)
class SimIntrinsicsMotion:
    """Board poses in front of one camera: `views` poses cycling through a 3 x 3 grid of image
    positions (edges pushed as far out as the whole board fits, `margin_px` inside), at camera
    distances of `depth_fractions` x the camera's distance to the workspace centre, tilted
    `tilt_deg` x [0.5, 1] about axes spread evenly round the view direction, rolled up to
    `roll_deg`. The TCP stays within `reach_m` of the arm's shoulder at `shoulder` (base frame,
    m): further out the xArm's wrist cannot take tilted poses."""

    views: int = 18
    depth_fractions: tuple[float, ...] = (0.8, 1.05)
    tilt_deg: float = 40.0
    roll_deg: float = 30.0
    margin_px: float = 12.0
    reach_m: float = 0.55
    shoulder: tuple[float, float, float] = (0.0, 0.0, 0.267)
    settle_s: float = 0.25
    seed: int = 0


def _board_outline(spec: BoardSpec) -> np.ndarray:
    width, height = spec.size_m
    return np.array([[0, 0, 0], [width, 0, 0], [width, height, 0], [0, height, 0]], float)


def plan_board_poses(
    camera: Camera,
    spec: BoardSpec,
    tool_T_board: np.ndarray,
    workspace: MotionSettings,
    motion: SimIntrinsicsMotion,
) -> list[np.ndarray]:
    """TCP poses [4, 4] that show the whole board to `camera` over its image, near and far,
    tilted about varied axes; `camera` only places the motion (the solve sees only images)."""
    from aimg.calib.handeye import _comfortable

    rng = np.random.default_rng(motion.seed)
    centre_px = np.array([(camera.width - 1) / 2.0, (camera.height - 1) / 2.0])
    targets = [
        np.array([a * (camera.width - 1), b * (camera.height - 1)])
        for b in (0.0, 0.5, 1.0)
        for a in ((0.0, 0.5, 1.0) if b != 0.5 else (1.0, 0.5, 0.0))  # serpentine
    ]
    distance = float(np.linalg.norm(camera.center - np.asarray(workspace.center)))
    outline = _board_outline(spec)
    shoulder = np.asarray(motion.shoulder)

    def pose_for(
        pixel: np.ndarray, depth: float, axis_phase: float, tilt: float, roll: float
    ) -> np.ndarray | None:
        position = np.asarray(camera.unproject(pixel, np.array(depth)), dtype=np.float64)
        if np.linalg.norm(workspace.clamp(position) - position) > 1e-6:
            return None
        to_camera = camera.center - position
        to_camera /= np.linalg.norm(to_camera)
        side = camera.c2w[:3, 0] - (camera.c2w[:3, 0] @ to_camera) * to_camera
        side /= np.linalg.norm(side)
        up = np.cross(to_camera, side)
        axis = math.cos(axis_phase) * side + math.sin(axis_phase) * up
        for _ in range(5):  # soften the pose until the gripper points down enough
            direction = rotvec_to_matrix(axis * tilt) @ to_camera
            pose = facing_pose(position, direction, tool_T_board, spec, roll)
            if _comfortable(pose, workspace.max_tool_tilt_deg):
                return pose
            tilt, roll = 0.7 * tilt, 0.7 * roll
        return None

    def fits(pose: np.ndarray | None) -> bool:
        if pose is None or np.linalg.norm(pose[:3, 3] - shoulder) > motion.reach_m:
            return False
        board = pose @ tool_T_board
        uv, z = camera.project(outline @ board[:3, :3].T + board[:3, 3])
        return bool(np.all(z > 0) and np.all(camera.in_image(uv, margin=motion.margin_px)))

    def furthest(target: np.ndarray, depth: float, *angles: float) -> tuple[float, np.ndarray]:
        """The pose nearest `target` along the line from the image centre that fits."""
        pose = pose_for(target, depth, *angles)
        if fits(pose):
            return 1.0, pose
        best: tuple[float, np.ndarray] = (-1.0, np.eye(4))
        low, high = 0.0, 1.0
        for _ in range(7):
            s = 0.5 * (low + high)
            pose = pose_for(centre_px + s * (target - centre_px), depth, *angles)
            if fits(pose):
                best, low = (s, pose), s
            else:
                high = s
        if best[0] < 0.0:
            pose = pose_for(centre_px, depth, *angles)
            if fits(pose):
                best = (0.0, pose)
        return best

    poses: list[np.ndarray] = []
    fractions = motion.depth_fractions
    for k in range(motion.views):
        target = targets[k % len(targets)]
        preferred = (k // len(targets)) % len(fractions)
        phase = 2.0 * math.pi * (k * 0.381966 + 0.1 * rng.uniform())
        tilt = math.radians(motion.tilt_deg) * (0.5 + 0.5 * rng.uniform())
        roll = math.radians(motion.roll_deg) * rng.uniform(-1.0, 1.0)
        # the preferred distance first; another one only if it gets the board further out
        order = [preferred] + [i for i in range(len(fractions)) if i != preferred]
        options = [furthest(target, distance * fractions[i], phase, tilt, roll) for i in order]
        s, pose = max(options, key=lambda option: option[0])
        if s >= 0.0:
            poses.append(pose)
    return poses


def capture_sim_images(
    cell: SimCalibrationCell,
    name: str,
    motion: SimIntrinsicsMotion | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[np.ndarray]:
    """Drive the simulated arm through `plan_board_poses` in front of camera `name` and return
    that camera's images [H, W, 3] uint8 (poses the arm cannot reach are skipped)."""
    motion = motion or SimIntrinsicsMotion()
    workspace = MotionSettings(
        workspace_low=cell.config.workspace_low, workspace_high=cell.config.workspace_high
    )
    camera = cell.true_cameras[name]
    tool_T_board = cell.nominal_tool_T_board
    poses = plan_board_poses(camera, cell.board, tool_T_board, workspace, motion)
    centre = workspace.clamp(np.asarray(workspace.center, dtype=np.float64))
    via = facing_pose(centre, camera.center - centre, tool_T_board, cell.board)
    if not move_to(cell.arm, via, cell.wait):
        raise CalibrationError(
            f"the simulated arm cannot face camera '{name}' from the workspace centre"
        )
    via_joints = cell.arm.read_state().joints
    images = []
    for k, pose in enumerate(poses):
        if move_to(cell.arm, pose, cell.wait):
            cell.wait(motion.settle_s)
            images.append(np.asarray(cell.rig.read().images[name]))
        if not move_to(cell.arm, via, cell.wait):
            # a refused pose can leave the IK on another branch: put the arm back, as an
            # operator would jog it, and go on
            cell.world.reset_joints(via_joints)
            cell.arm.clear_errors()
            cell.arm.enable()
        if on_progress:
            on_progress(k + 1, len(poses))
    return images


def intrinsics_error(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """fx, fy, cx, cy of K [3, 3] `estimate` minus `truth`: pixels and percent of the truth."""
    names = {"fx": (0, 0), "fy": (1, 1), "cx": (0, 2), "cy": (1, 2)}
    out: dict[str, float] = {}
    for key, index in names.items():
        diff = float(estimate[index] - truth[index])
        out[f"{key}_px"] = round(diff, 4)
        out[f"{key}_percent"] = round(100.0 * diff / float(truth[index]), 4)
    return out
