"""Drift check without a board: has a camera moved since its static-scene picture was taken?

Right after calibration each camera's view of the cell is saved (`scene_reference` in the
calibration file). Before a task the daemon compares the camera's current frame with it: a
similarity warp (shift, in-plane rotation, scale) is fitted to the static structure both
frames share (table edges, the robot's base, fixtures), by iteratively reweighted Gauss-Newton
on blurred, contrast-normalised intensities with Tukey weights, coarse to fine. What moved in
the scene since (the arm, objects, a hand) gets zero weight, so an unmoved camera reads ~0 and
a knocked one reads its knock. No board, no arm motion, ~30 ms per 128 px camera.

The verdict is in degrees of view angle: the largest displacement of a static pixel divided by
the focal length. That is independent of resolution and is what matters downstream: 0.1 deg of
view at ~1.2 m is ~2 mm, the size of one 512 px action-image pixel. Default limit 0.15 deg. In
the simulated cell at 128 px an unmoved camera reads <= 0.05 deg across new scenes and arm
poses; a 1 deg turn reads 0.6-1.3 deg and a 1 cm shift across the view 0.3-0.6 deg (tests/calib/
test_scene_drift.py). What this check cannot see: a shift along the viewing direction with
little depth structure in view (it reads as a scale change under 1 %), and any motion along a
direction the static scene has no edges across. The fit's conditioning is measured; a camera
whose static scene does not pin down its motion is refused as unverifiable rather than passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aimg.calib.calibration_file import CalibrationFile, CalibrationFileError
from aimg.optional import require

#: Images are fitted at most this wide (a 640 px frame at half size): edges stay sharp enough
#: and the fit stays ~0.1 s.
MAX_FIT_WIDTH = 320


@dataclass(frozen=True)
class SceneDriftThresholds:
    """Refuse a camera whose static scene moved more than `max_view_deg`; `min_static` is the
    least fraction of reference pixels that must still match (else the view is blocked or the
    camera moved far); `min_conditioning` the weakest direction's share of the fit's strongest
    (below it the scene does not pin down the motion)."""

    max_view_deg: float = 0.15
    min_static: float = 0.3
    min_conditioning: float = 2e-3


@dataclass(frozen=True)
class SceneShift:
    """The fitted warp from the reference frame to the current one (full-resolution pixels).

    shift_px: (x, y) translation at the image centre; rotation_deg: in-plane; scale: 1 = none;
    max_shift_px: largest displacement of a static pixel; static_fraction: share of the
    reference's structured pixels that still match; conditioning: smallest / largest
    eigenvalue of the normalised fit (0: some motion is invisible to the check).
    """

    shift_px: tuple[float, float]
    rotation_deg: float
    scale: float
    max_shift_px: float
    static_fraction: float
    conditioning: float


@dataclass(frozen=True)
class SceneVerdict:
    """One camera's static-scene verdict; `reason` says what is wrong when not `ok`."""

    name: str
    ok: bool
    view_shift_deg: float
    shift: SceneShift | None
    reason: str

    def to_dict(self) -> dict:
        out: dict = {
            "camera": self.name,
            "ok": self.ok,
            "method": "scene",
            "view_shift_deg": round(self.view_shift_deg, 4),
            "reason": self.reason,
        }
        if self.shift is not None:
            s = self.shift
            out.update(
                shift_px=[round(v, 3) for v in s.shift_px],
                rotation_deg=round(s.rotation_deg, 4),
                scale=round(s.scale, 5),
                max_shift_px=round(s.max_shift_px, 3),
                static_fraction=round(s.static_fraction, 3),
                conditioning=float(f"{s.conditioning:.3g}"),
            )
        return out


def _gray(image: np.ndarray, width: int) -> np.ndarray:
    """Blurred grey float image, resized to `width`, normalised by its median and spread (so a
    change of exposure or white balance does not read as motion)."""
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    image = np.asarray(image)
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image
    gray = gray.astype(np.float32)
    if gray.shape[1] != width:
        height = round(gray.shape[0] * width / gray.shape[1])
        gray = cv2.resize(gray, (width, height), interpolation=cv2.INTER_AREA)
    gray = cv2.GaussianBlur(gray, (0, 0), 1.0)
    median = float(np.median(gray))
    spread = float(np.percentile(gray, 90) - np.percentile(gray, 10))
    return (gray - median) / max(spread, 1.0)


def _warp(params: np.ndarray, xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float]):
    tx, ty, angle, log_scale = params
    s, c, n = math.exp(log_scale), math.cos(angle), math.sin(angle)
    dx, dy = xs - centre[0], ys - centre[1]
    return s * (c * dx - n * dy) + centre[0] + tx, s * (n * dx + c * dy) + centre[1] + ty


def _fit_level(
    reference: np.ndarray,
    current: np.ndarray,
    static: np.ndarray,
    params: np.ndarray,
    iterations: int = 50,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IRLS Gauss-Newton of the similarity warp at one pyramid level; returns the parameters,
    the structured pixels' coordinates, their final weights and the normal matrix."""
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    h, w = reference.shape
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    ref_gx = cv2.Sobel(reference, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    ref_gy = cv2.Sobel(reference, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    magnitude = np.hypot(ref_gx, ref_gy)
    border = 2
    structured = static & (magnitude > max(0.02, float(np.percentile(magnitude, 50))))
    structured[:border] = structured[-border:] = False
    structured[:, :border] = structured[:, -border:] = False
    ys, xs = np.nonzero(structured)
    xs, ys = xs.astype(np.float64), ys.astype(np.float64)
    if len(xs) < 20:
        return params, xs, ys, np.zeros(len(xs)), np.zeros((4, 4))
    values = reference[ys.astype(int), xs.astype(int)]
    cur_gx = cv2.Sobel(current, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    cur_gy = cv2.Sobel(current, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    radius = math.hypot(*centre)
    norm = np.array([1.0, 1.0, radius, radius])  # rotation and scale as pixels at the rim
    params = params.copy()
    weights = np.ones(len(xs))
    normal = np.zeros((4, 4))
    for _ in range(iterations):
        u, v = _warp(params, xs, ys, centre)
        maps = (u.astype(np.float32)[None], v.astype(np.float32)[None])
        sampled, gx, gy = (
            cv2.remap(img, *maps, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]
            for img in (current, cur_gx, cur_gy)
        )
        outside = (u < 0) | (u > w - 1) | (v < 0) | (v > h - 1)
        residual = sampled.astype(np.float64) - values
        sigma = max(1.4826 * float(np.median(np.abs(residual))), 0.02)
        cut = 4.685 * sigma
        weights = np.where(np.abs(residual) < cut, (1.0 - (residual / cut) ** 2) ** 2, 0.0)
        weights[outside] = 0.0
        s, c, n = math.exp(params[3]), math.cos(params[2]), math.sin(params[2])
        dx, dy = xs - centre[0], ys - centre[1]
        du_da, dv_da = s * (-n * dx - c * dy), s * (c * dx - n * dy)
        du_ds, dv_ds = s * (c * dx - n * dy), s * (n * dx + c * dy)
        jac = np.stack([gx, gy, gx * du_da + gy * dv_da, gx * du_ds + gy * dv_ds], axis=1)
        jac = jac / norm  # steps in pixels for every parameter: comparable eigenvalues
        weighted = jac * weights[:, None]
        normal = weighted.T @ jac
        damping = 1e-3 * np.trace(normal) / 4.0 + 1e-9  # invisible directions stay at zero
        step = -np.linalg.solve(normal + damping * np.eye(4), weighted.T @ residual) / norm
        params += step
        if np.max(np.abs(step[:2])) < 1e-4 and np.max(np.abs(step[2:]) * radius) < 1e-4:
            break
    return params, xs, ys, weights, normal


def measure_scene_shift(
    reference: np.ndarray,
    current: np.ndarray,
    static: np.ndarray | None = None,
    max_width: int = MAX_FIT_WIDTH,
) -> SceneShift:
    """Fit the similarity warp taking `reference`'s static structure to `current` (both RGB
    or grey, same size), coarse to fine; `static` [H, W] bool marks the pixels that stayed
    the same while the reference was taken (default: all); shifts are in `reference`'s
    pixels."""
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    reference, current = np.asarray(reference), np.asarray(current)
    if reference.shape[:2] != current.shape[:2]:
        raise ValueError(
            f"the reference is {reference.shape[1]}x{reference.shape[0]} but the frame is "
            f"{current.shape[1]}x{current.shape[0]}: the camera streams another size than it "
            "was calibrated at"
        )
    full_width = reference.shape[1]
    width = min(full_width, max_width)
    ref, cur = _gray(reference, width), _gray(current, width)
    mask = np.ones(reference.shape[:2], np.uint8) if static is None else static.astype(np.uint8)
    mask = cv2.resize(mask, (ref.shape[1], ref.shape[0]), interpolation=cv2.INTER_NEAREST)
    pyramid = [(ref, cur, mask > 0)]
    while pyramid[-1][0].shape[1] >= 128 and len(pyramid) < 3:
        r, c, m = pyramid[-1]
        small = cv2.pyrDown(r)
        m = cv2.resize(m.astype(np.uint8), (small.shape[1], small.shape[0]), cv2.INTER_NEAREST)
        pyramid.append((small, cv2.pyrDown(c), m > 0))
    params = np.zeros(4)
    for level in range(len(pyramid) - 1, -1, -1):
        params, xs, ys, weights, normal = _fit_level(*pyramid[level], params)
        if level:
            params = params * np.array([2.0, 2.0, 1.0, 1.0])
    h, w = ref.shape
    centre = ((w - 1) / 2.0, (h - 1) / 2.0)
    used = weights > 0
    to_full = full_width / width
    if not used.any():
        return SceneShift((0.0, 0.0), 0.0, 1.0, float("nan"), 0.0, 0.0)
    u, v = _warp(params, xs[used], ys[used], centre)
    displacement = np.hypot(u - xs[used], v - ys[used]) * to_full
    eigen = np.linalg.eigvalsh(normal)
    conditioning = float(max(eigen[0], 0.0) / eigen[-1]) if eigen[-1] > 0 else 0.0
    return SceneShift(
        shift_px=(float(params[0] * to_full), float(params[1] * to_full)),
        rotation_deg=math.degrees(float(params[2])),
        scale=math.exp(float(params[3])),
        max_shift_px=float(displacement.max()),
        static_fraction=float(used.mean()),
        conditioning=conditioning,
    )


def build_reference(frames: list[np.ndarray], tolerance: float = 12.0) -> np.ndarray:
    """The static-scene reference of one camera from frames taken with the arm at different
    poses (and, in the sim, different objects): RGBA uint8, RGB the per-pixel median, alpha
    255 where every frame agrees with it within `tolerance` grey levels (static), else 0."""
    cv2 = require("cv2", "robot", package="opencv-python-headless")
    if not frames:
        raise ValueError("a scene reference needs at least one frame")
    stack = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    median = np.median(stack, axis=0).astype(np.uint8)
    grey = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY).astype(np.float32) for f in stack])
    centre = cv2.cvtColor(median, cv2.COLOR_RGB2GRAY).astype(np.float32)
    static = (np.abs(grey - centre).max(axis=0) <= tolerance).astype(np.uint8)
    static = cv2.erode(static, np.ones((3, 3), np.uint8))  # edges of what moved, too
    return np.dstack([median, static * 255])


def assess_scene(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    focal_px: float,
    thresholds: SceneDriftThresholds | None = None,
) -> SceneVerdict:
    """Verdict of camera `name` from its reference (RGB, or RGBA from `build_reference`: alpha
    marks the static pixels) and current frame; `focal_px`: focal length in their pixels."""
    thresholds = thresholds or SceneDriftThresholds()
    redo = "re-place the camera, or recalibrate (`aimg calib handeye`) and retake the reference"
    reference = np.asarray(reference)
    static = reference[..., 3] > 127 if reference.ndim == 3 and reference.shape[2] == 4 else None
    try:
        shift = measure_scene_shift(reference[..., :3], current, static)
    except ValueError as exc:
        return SceneVerdict(name, False, float("nan"), None, f"camera '{name}': {exc}")
    view_deg = math.degrees(math.atan2(shift.max_shift_px, focal_px))
    if shift.static_fraction < thresholds.min_static:
        return SceneVerdict(
            name,
            False,
            view_deg,
            shift,
            f"camera '{name}': only {100 * shift.static_fraction:.0f} % of its static scene "
            f"matches the reference (need {100 * thresholds.min_static:.0f} %): the view is "
            f"blocked, the light changed a lot, or the camera moved far; {redo}",
        )
    if shift.conditioning < thresholds.min_conditioning:
        return SceneVerdict(
            name,
            False,
            view_deg,
            shift,
            f"camera '{name}': its static scene has too few edges across some direction to "
            f"tell whether it moved (conditioning {shift.conditioning:.1e}); put something "
            "textured that never moves in its view (a printed marker on the table's edge) and "
            "retake the reference with `aimg calib reference`",
        )
    if view_deg > thresholds.max_view_deg:
        return SceneVerdict(
            name,
            False,
            view_deg,
            shift,
            f"camera '{name}' moved: its view shifted {view_deg:.2f} deg "
            f"({shift.max_shift_px:.1f} px; limit {thresholds.max_view_deg:g} deg) since "
            f"calibration; {redo}",
        )
    return SceneVerdict(
        name, True, view_deg, shift, f"camera '{name}' ok (view shift {view_deg:.3f} deg)"
    )


def load_reference(calibration: CalibrationFile, name: str) -> np.ndarray:
    """Camera `name`'s static-scene reference image (RGBA uint8, alpha = static)."""
    from PIL import Image

    record = calibration.records[name]
    if record.scene_reference is None:
        raise CalibrationFileError(
            f"{calibration.path}: camera '{name}' has no static-scene reference: take one with "
            "`aimg calib reference --config CELL`"
        )
    path = calibration.resolve(record.scene_reference)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGBA"))
    except OSError as exc:
        raise CalibrationFileError(
            f"{calibration.path}: camera '{name}': cannot read its scene reference {path} "
            f"({exc}); retake it with `aimg calib reference --config CELL`"
        ) from exc


def save_reference(calibration_path: Path, name: str, image: np.ndarray) -> str:
    """Write camera `name`'s reference PNG (RGB or `build_reference`'s RGBA) beside the
    calibration file; returns its relative name for `scene_reference`."""
    from aimg.atomic_files import write_png_atomic

    calibration_path = Path(calibration_path)
    relative = f"{calibration_path.stem}.{name}.scene.png"
    write_png_atomic(calibration_path.parent / relative, image)
    return relative


def sim_scene_study(
    size: int = 128,
    views: int = 4,
    reference_seeds: tuple[int, ...] = (100, 105, 106, 107),
    test_seeds: tuple[int, ...] = (201, 202, 203, 204, 205),
    thresholds: SceneDriftThresholds | None = None,
) -> dict[str, dict]:
    """The scene check on the simulated cell's cameras: references from `reference_seeds`'
    scenes, then each camera still and knocked by 1 cm along base x, y, z and 1 deg about its
    own axes in every scene of `test_seeds`. Per camera and case: view shift range (deg) and
    how many verdicts were right (still: passed; knocked: refused)."""
    from aimg.robot.sim.cameras import default_camera_specs, knocked_camera
    from aimg.robot.sim.supervisor import SimSupervisor
    from aimg.robot.sim.world import SimWorld

    zero = (0.0, 0.0, 0.0)
    cases: dict[str, list] = {"still": [(zero, zero)], "1 cm": [], "1 deg": []}
    for axis in np.eye(3):
        cases["1 cm"].append((tuple(0.01 * axis), zero))
        cases["1 deg"].append((zero, tuple(math.radians(1.0) * axis)))
    world = SimWorld(seed=0)
    try:
        supervisor = SimSupervisor(world)
        cameras = {s.name: s.camera(size, size) for s in default_camera_specs(views)}
        frames: dict[str, list[np.ndarray]] = {name: [] for name in cameras}
        for seed in reference_seeds:
            supervisor.start_episode("pick", seed)
            for name, camera in cameras.items():
                frames[name].append(world.render(camera)[0])
        references = {name: build_reference(f) for name, f in frames.items()}
        found: dict[str, dict[str, list]] = {n: {c: [] for c in cases} for n in cameras}
        for k, seed in enumerate(test_seeds):
            supervisor.start_episode("reach" if k % 2 else "pick", seed)
            for name, camera in cameras.items():
                for case, knocks in cases.items():
                    for knock in knocks:
                        image = world.render(knocked_camera(camera, knock))[0]
                        verdict = assess_scene(
                            name, references[name], image, camera.K[0, 0], thresholds
                        )
                        right = verdict.ok if case == "still" else not verdict.ok
                        found[name][case].append((verdict.view_shift_deg, right))
    finally:
        world.close()
    return {
        name: {
            case: {
                "view_shift_deg": [
                    round(min(v for v, _ in got), 3),
                    round(max(v for v, _ in got), 3),
                ],
                "right": sum(r for _, r in got),
                "of": len(got),
            }
            for case, got in per_case.items()
        }
        for name, per_case in found.items()
    }
