"""The ChArUco calibration board: its geometry, printable texture and detection in images.

One `BoardSpec` describes the physical board for both the real cell (print it at scale) and the
simulated one (the same texture on a plate). Board frame (OpenCV's): origin at the outer corner
of the top-left square of the printed image, x along the columns, y down the rows, z into the
board (away from a viewer of the printed side); metres.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from types import ModuleType

import numpy as np

from aimg.geometry import Camera, invert_pose, pose_to_matrix, rotvec_to_matrix
from aimg.optional import require


def _cv2() -> ModuleType:
    return require("cv2", "robot", package="opencv-python-headless")


@dataclass(frozen=True)
class BoardSpec:
    """A ChArUco board: `squares_x` x `squares_y` squares of `square_m`, markers of `marker_m`.

    The default (7 x 5 squares of 35 mm, 0.245 x 0.175 m) keeps markers >= 12 px wide at 1 m
    with a 640x480, 50-degree camera, the far end of the simulated cell's placements.
    """

    squares_x: int = 7
    squares_y: int = 5
    square_m: float = 0.035
    marker_m: float = 0.026
    dictionary: str = "DICT_4X4_50"

    def __post_init__(self) -> None:
        if self.squares_x < 3 or self.squares_y < 3:
            raise ValueError(
                f"a ChArUco board needs >= 3x3 squares, got {self.squares_x}x{self.squares_y}"
            )
        if not 0.0 < self.marker_m < self.square_m:
            raise ValueError(
                f"marker size {self.marker_m} m must be positive and smaller than the square "
                f"{self.square_m} m"
            )

    @property
    def size_m(self) -> tuple[float, float]:
        """Printed board width and height (m), margins excluded."""
        return self.squares_x * self.square_m, self.squares_y * self.square_m

    @property
    def num_corners(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    def cv_board(self):
        """The `cv2.aruco.CharucoBoard` of this spec."""
        cv2 = _cv2()
        name = self.dictionary
        if not hasattr(cv2.aruco, name):
            raise ValueError(f"unknown ArUco dictionary {name!r}; use e.g. 'DICT_4X4_50'")
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, name))
        return cv2.aruco.CharucoBoard(
            (self.squares_x, self.squares_y), self.square_m, self.marker_m, dictionary
        )

    def corner_points(self) -> np.ndarray:
        """Board-frame positions of the inner corners, [N, 3] (m), indexed by ChArUco id."""
        return np.asarray(self.cv_board().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)

    def texture(self, pixels_per_square: int = 120, margin_squares: float = 0.5) -> np.ndarray:
        """Printable RGB image [H, W, 3] uint8 with a white margin of `margin_squares` squares.

        The board proper spans the central `squares * pixels_per_square` pixels.
        """
        margin = round(margin_squares * pixels_per_square)
        width = self.squares_x * pixels_per_square + 2 * margin
        height = self.squares_y * pixels_per_square + 2 * margin
        gray = self.cv_board().generateImage((width, height), marginSize=margin, borderBits=1)
        return np.repeat(gray[..., None], 3, axis=-1)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> BoardSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"board record has unknown keys {sorted(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Detection:
    """ChArUco corners found in one image: ids [N] int and pixels [N, 2] (aimg's convention)."""

    ids: np.ndarray
    corners: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def to_dict(self) -> dict:
        return {"ids": self.ids.tolist(), "corners": np.round(self.corners, 4).tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> Detection:
        ids = np.asarray(data["ids"], dtype=np.int64).reshape(-1)
        corners = np.asarray(data["corners"], dtype=np.float64).reshape(-1, 2)
        if len(ids) != len(corners):
            raise ValueError(f"detection has {len(ids)} ids but {len(corners)} corners")
        return cls(ids, corners)


class BoardDetector:
    """Finds ChArUco corners with OpenCV 4.x `aruco.CharucoDetector` (sub-pixel refined).

    OpenCV reports corner positions with pixel centres at integer coordinates, which is aimg's
    convention, so no shift is applied.
    """

    def __init__(self, spec: BoardSpec) -> None:
        cv2 = _cv2()
        if not hasattr(cv2.aruco, "CharucoDetector"):
            raise RuntimeError(
                f"OpenCV {cv2.__version__} lacks aruco.CharucoDetector: "
                "run `pip install 'opencv-python-headless>=4.8,<5'`"
            )
        self.spec = spec
        self._points = spec.corner_points()
        charuco_params = cv2.aruco.CharucoParameters()
        charuco_params.tryRefineMarkers = True  # recover markers missed at steep angles
        detector_params = cv2.aruco.DetectorParameters()
        detector_params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
        # small markers (~12 px at 1 m in 640x480) decode more reliably from a finer grid
        detector_params.perspectiveRemovePixelPerCell = 8
        detector_params.perspectiveRemoveIgnoredMarginPerCell = 0.2
        self._detector = cv2.aruco.CharucoDetector(spec.cv_board(), charuco_params, detector_params)

    @property
    def object_points(self) -> np.ndarray:
        """Board-frame corner positions [N, 3] (m), indexed by corner id."""
        return self._points

    def detect(self, image_rgb: np.ndarray) -> Detection:
        """Corners found in an RGB uint8 image (possibly none)."""
        cv2 = _cv2()
        gray = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2GRAY)
        corners, ids, _, _ = self._detector.detectBoard(gray)
        if ids is None or len(ids) == 0:
            return Detection(np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
        return Detection(
            np.asarray(ids, dtype=np.int64).reshape(-1),
            np.asarray(corners, dtype=np.float64).reshape(-1, 2),
        )


def _dist(camera_dist: np.ndarray | None) -> np.ndarray:
    return np.zeros(5) if camera_dist is None else np.asarray(camera_dist, dtype=np.float64)


def solve_board_pose(
    object_points: np.ndarray,
    detection: Detection,
    K: np.ndarray,
    dist: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Board-to-camera pose [4, 4] from one detection (PnP + LM refinement) and its RMS error (px).

    object_points: [M, 3] board-frame corners indexed by id. Needs >= 6 corners (not all on a
    line); raises ValueError otherwise.
    """
    cv2 = _cv2()
    if len(detection) < 6:
        raise ValueError(f"board pose needs >= 6 corners, got {len(detection)}")
    obj = object_points[detection.ids].astype(np.float64)
    img = detection.corners.astype(np.float64)
    d = _dist(dist)
    ok, rvec, tvec = cv2.solvePnP(obj, img, K, d, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise ValueError("solvePnP failed on this detection")
    rvec, tvec = cv2.solvePnPRefineLM(obj, img, K, d, rvec, tvec)
    pose = pose_to_matrix(tvec.reshape(3), rotvec_to_matrix(rvec.reshape(3)))
    projected, _ = cv2.projectPoints(obj, rvec, tvec, K, d)
    rms = float(np.sqrt(np.mean(np.sum((projected.reshape(-1, 2) - img) ** 2, axis=1))))
    return pose, rms


def project_points(
    camera: Camera, points_base: np.ndarray, dist: np.ndarray | None = None
) -> np.ndarray:
    """Base-frame points [N, 3] -> pixels [N, 2] through `camera` with OpenCV distortion."""
    cv2 = _cv2()
    w2c = invert_pose(camera.c2w)
    rvec, _ = cv2.Rodrigues(w2c[:3, :3])
    uv, _ = cv2.projectPoints(
        np.asarray(points_base, dtype=np.float64).reshape(-1, 1, 3),
        rvec,
        w2c[:3, 3],
        camera.K,
        _dist(dist),
    )
    return uv.reshape(-1, 2)
