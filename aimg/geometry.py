"""Cameras, rotations and Plücker rays in aimg's conventions, plus the reference converters.

Conventions (README.md, "Layout"): metres and radians; the world frame is the robot base frame;
cameras are OpenCV pinhole (x right, y down, z forward) with `K` in pixels of their own image
and `c2w` camera-to-base; pixel coordinates (u, v) = (column, row) of the pixel centre, so the
pixel index equals the coordinate. The reference code's "flipped" cameras and relative poses
(docs/reference.md §3.1, §3.2) appear only at the boundary that feeds a reference checkpoint:
see `to_reference_flipped`, `relative_c2w` and `plucker_rays`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

FloatArray = np.ndarray

# ---------------------------------------------------------------------------------------------
# Rotations. Euler angles are scipy's extrinsic "xyz" (R = Rz @ Ry @ Rx), quaternions are
# scalar-last (x, y, z, w), rotation vectors are axis * angle. All accept leading batch dims.


def euler_xyz_to_matrix(euler: FloatArray) -> FloatArray:
    """[..., 3] extrinsic-xyz Euler angles (rad) -> [..., 3, 3] rotation matrices."""
    euler = np.asarray(euler, dtype=np.float64)
    return Rotation.from_euler("xyz", euler.reshape(-1, 3)).as_matrix().reshape(*euler.shape, 3)


def matrix_to_euler_xyz(matrix: FloatArray) -> FloatArray:
    """[..., 3, 3] rotation matrices -> [..., 3] extrinsic-xyz Euler angles (rad)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    flat = Rotation.from_matrix(matrix.reshape(-1, 3, 3)).as_euler("xyz")
    return flat.reshape(*matrix.shape[:-2], 3)


def quat_to_matrix(quat_xyzw: FloatArray) -> FloatArray:
    """[..., 4] scalar-last quaternions -> [..., 3, 3] rotation matrices."""
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    return Rotation.from_quat(quat.reshape(-1, 4)).as_matrix().reshape(*quat.shape[:-1], 3, 3)


def matrix_to_quat(matrix: FloatArray) -> FloatArray:
    """[..., 3, 3] rotation matrices -> [..., 4] scalar-last quaternions with w >= 0."""
    matrix = np.asarray(matrix, dtype=np.float64)
    quat = Rotation.from_matrix(matrix.reshape(-1, 3, 3)).as_quat()
    quat = np.where(quat[:, 3:4] < 0, -quat, quat)
    return quat.reshape(*matrix.shape[:-2], 4)


def rotvec_to_matrix(rotvec: FloatArray) -> FloatArray:
    """[..., 3] rotation vectors (axis * angle, rad) -> [..., 3, 3] rotation matrices."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    flat = Rotation.from_rotvec(rotvec.reshape(-1, 3)).as_matrix()
    return flat.reshape(*rotvec.shape, 3)


def matrix_to_rotvec(matrix: FloatArray) -> FloatArray:
    """[..., 3, 3] rotation matrices -> [..., 3] rotation vectors (rad)."""
    matrix = np.asarray(matrix, dtype=np.float64)
    flat = Rotation.from_matrix(matrix.reshape(-1, 3, 3)).as_rotvec()
    return flat.reshape(*matrix.shape[:-2], 3)


def orthonormalize(matrix: FloatArray) -> FloatArray:
    """Nearest rotation matrix (SVD, det +1) to each [..., 3, 3] matrix."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    det = np.linalg.det(u @ vt)
    fix = np.ones(u.shape[:-1])
    fix[..., -1] = det
    return (u * fix[..., None, :]) @ vt


def rotation_angle_between(a: FloatArray, b: FloatArray) -> FloatArray:
    """Geodesic angle (rad) between rotation matrices a and b, [..., 3, 3] -> [...]."""
    rel = np.swapaxes(np.asarray(a), -1, -2) @ np.asarray(b)
    cos = (np.trace(rel, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def pose_to_matrix(position: FloatArray, rotation: FloatArray) -> FloatArray:
    """Position [..., 3] and rotation [..., 3, 3] -> homogeneous [..., 4, 4]."""
    position = np.asarray(position, dtype=np.float64)
    out = np.zeros((*position.shape[:-1], 4, 4))
    out[..., :3, :3] = rotation
    out[..., :3, 3] = position
    out[..., 3, 3] = 1.0
    return out


def action_to_matrix(action: FloatArray) -> FloatArray:
    """Action 7-vectors [..., 7] (x, y, z, rx, ry, rz, g) -> tool poses [..., 4, 4]."""
    action = np.asarray(action, dtype=np.float64)
    return pose_to_matrix(action[..., :3], euler_xyz_to_matrix(action[..., 3:6]))


def matrix_to_action(pose: FloatArray, gripper: FloatArray | float) -> FloatArray:
    """Tool poses [..., 4, 4] and gripper openness (1 = open) -> action 7-vectors [..., 7]."""
    pose = np.asarray(pose, dtype=np.float64)
    grip = np.broadcast_to(np.asarray(gripper, dtype=np.float64), pose.shape[:-2])
    return np.concatenate(
        [pose[..., :3, 3], matrix_to_euler_xyz(pose[..., :3, :3]), grip[..., None]], axis=-1
    )


def invert_pose(pose: FloatArray) -> FloatArray:
    """Inverse of rigid transforms [..., 4, 4] (exact, no general matrix inverse)."""
    pose = np.asarray(pose, dtype=np.float64)
    rot_t = np.swapaxes(pose[..., :3, :3], -1, -2)
    out = np.zeros_like(pose)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ pose[..., :3, 3:4])[..., 0]
    out[..., 3, 3] = 1.0
    return out


def look_at(eye: FloatArray, target: FloatArray, up: FloatArray = (0.0, 0.0, 1.0)) -> FloatArray:
    """OpenCV camera-to-world [4, 4] at `eye` looking at `target` (image up ~ world `up`)."""
    eye = np.asarray(eye, dtype=np.float64)
    forward = np.asarray(target, dtype=np.float64) - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("look_at: the viewing direction is parallel to `up`; choose another up")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    return pose_to_matrix(eye, np.stack([right, down, forward], axis=-1))


# ---------------------------------------------------------------------------------------------
# Intrinsics.


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> FloatArray:
    """3x3 pinhole intrinsics."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(
    K: FloatArray, src_size: tuple[int, int], dst_size: tuple[int, int]
) -> FloatArray:
    """Rescale K from a (height, width) image to another, as the reference does.

    See docs/reference.md §3.5.

    fx, cx scale by dst_w / src_w and fy, cy by dst_h / src_h (the reference's
    `intrinsics_transform`; it is how `K_64` of the fixtures was made from `K_512`).
    """
    K = np.array(K, dtype=np.float64)
    sy, sx = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def center_crop_resize_intrinsics(
    K: FloatArray, src_size: tuple[int, int], dst_size: tuple[int, int]
) -> FloatArray:
    """K after a maximal centre crop to the target aspect, then a resize (docs/reference.md §3.1).

    Sizes are (height, width). fx' = fx*sx, cx' = (cx - dx)*sx with float crop offsets dx, dy.
    """
    K = np.array(K, dtype=np.float64)
    src_h, src_w = src_size
    dst_h, dst_w = dst_size
    if src_w * dst_h > dst_w * src_h:  # source is wider than the target aspect: crop width
        crop_h, crop_w = float(src_h), src_h * dst_w / dst_h
    else:
        crop_h, crop_w = src_w * dst_h / dst_w, float(src_w)
    dx, dy = (src_w - crop_w) / 2.0, (src_h - crop_h) / 2.0
    sx, sy = dst_w / crop_w, dst_h / crop_h
    K[..., 0, 0] *= sx
    K[..., 0, 2] = (K[..., 0, 2] - dx) * sx
    K[..., 1, 1] *= sy
    K[..., 1, 2] = (K[..., 1, 2] - dy) * sy
    return K


# ---------------------------------------------------------------------------------------------
# Camera.


@dataclass(frozen=True, eq=False)
class Camera:
    """A calibrated OpenCV pinhole camera.

    K: [3, 3] intrinsics in pixels of a `width` x `height` image; c2w: [4, 4] camera-to-base.
    """

    K: FloatArray
    c2w: FloatArray
    width: int
    height: int

    def __post_init__(self) -> None:
        K = np.asarray(self.K, dtype=np.float64)
        c2w = np.asarray(self.c2w, dtype=np.float64)
        if K.shape != (3, 3) or c2w.shape != (4, 4):
            raise ValueError(f"Camera needs K [3, 3] and c2w [4, 4], got {K.shape} and {c2w.shape}")
        if not (np.isfinite(K).all() and np.isfinite(c2w).all()):
            raise ValueError("Camera K and c2w must be finite (found NaN or inf)")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(
                "Camera expects OpenCV intrinsics with positive focal lengths; convert a "
                "reference 'flipped' camera with Camera.from_reference_flipped"
            )
        rot = c2w[:3, :3]
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-5) or np.linalg.det(rot) < 0:
            raise ValueError("Camera c2w rotation is not a proper rotation matrix")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"Camera size must be positive, got {self.width}x{self.height}")
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "c2w", c2w)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))

    @property
    def w2c(self) -> FloatArray:
        """World(base)-to-camera [4, 4]."""
        return invert_pose(self.c2w)

    @property
    def center(self) -> FloatArray:
        """Camera centre in the base frame, [3]."""
        return self.c2w[:3, 3].copy()

    def to_camera(self, points: FloatArray) -> FloatArray:
        """Base-frame points [..., 3] -> camera-frame points [..., 3]."""
        points = np.asarray(points, dtype=np.float64)
        rot, t = self.c2w[:3, :3], self.c2w[:3, 3]
        return (points - t) @ rot

    def project(self, points: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Base-frame points [..., 3] -> pixels (u, v) [..., 2] and camera depth z [...].

        Points with z <= 0 are behind the camera: their pixels are NaN (never mirrored).
        """
        cam = self.to_camera(points)
        z = cam[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (cam[..., :2] / z[..., None]) * np.diag(self.K)[:2] + self.K[:2, 2]
        uv = np.where((z > 0)[..., None], uv, np.nan)
        return uv, z

    def in_image(self, uv: FloatArray, margin: float = 0.0) -> FloatArray:
        """Whether pixels [..., 2] lie inside the image (pixel centres 0..W-1, 0..H-1)."""
        uv = np.asarray(uv)
        u, v = uv[..., 0], uv[..., 1]
        return (
            (u >= -0.5 + margin)
            & (u <= self.width - 0.5 - margin)
            & (v >= -0.5 + margin)
            & (v <= self.height - 0.5 - margin)
        )

    def unproject(self, uv: FloatArray, depth: FloatArray) -> FloatArray:
        """Pixels [..., 2] at camera depth z [...] -> base-frame points [..., 3]."""
        uv = np.asarray(uv, dtype=np.float64)
        depth = np.asarray(depth, dtype=np.float64)
        xy = (uv - self.K[:2, 2]) / np.diag(self.K)[:2]
        cam = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1) * depth[..., None]
        return cam @ self.c2w[:3, :3].T + self.c2w[:3, 3]

    def pixel_rays(self, uv: FloatArray | None = None) -> tuple[FloatArray, FloatArray]:
        """Unit rays through pixels: origins [..., 3] and directions [..., 3] in the base frame.

        With `uv=None`, every pixel centre of the image: [H, W, 3] each.
        """
        if uv is None:
            v, u = np.meshgrid(np.arange(self.height), np.arange(self.width), indexing="ij")
            uv = np.stack([u, v], axis=-1).astype(np.float64)
        uv = np.asarray(uv, dtype=np.float64)
        xy = (uv - self.K[:2, 2]) / np.diag(self.K)[:2]
        d_cam = np.concatenate([xy, np.ones_like(xy[..., :1])], axis=-1)
        d = d_cam @ self.c2w[:3, :3].T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        return np.broadcast_to(self.c2w[:3, 3], d.shape).copy(), d

    def cropped(self, x0: int, y0: int, width: int, height: int) -> Camera:
        """The camera of the sub-image whose top-left pixel is (x0, y0) of this image."""
        K = self.K.copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        return Camera(K, self.c2w, width, height)

    def resized(self, height: int, width: int) -> Camera:
        """The same camera after a maximal centre crop to the new aspect and a resize."""
        K = center_crop_resize_intrinsics(self.K, (self.height, self.width), (height, width))
        return Camera(K, self.c2w, width, height)

    def scaled(self, height: int, width: int) -> Camera:
        """The same camera rescaled as the reference's `intrinsics_transform` does."""
        K = scale_intrinsics(self.K, (self.height, self.width), (height, width))
        return Camera(K, self.c2w, width, height)

    def to_reference_flipped(self) -> tuple[FloatArray, FloatArray]:
        """(K, c2w) in the reference "flipped" convention (docs/reference.md §3.1).

        Camera x and y axes negated and fx, fy negated: projection is unchanged, only the
        stored numbers differ. Used only at the boundary to a reference checkpoint.
        """
        return flip_reference_convention(self.K, self.c2w)

    @classmethod
    def from_reference_flipped(
        cls, K: FloatArray, c2w: FloatArray, width: int, height: int
    ) -> Camera:
        """Build an OpenCV camera from the reference "flipped" (K, c2w) (docs/reference.md §3.1)."""
        K_cv, c2w_cv = flip_reference_convention(K, c2w)
        return cls(K_cv, c2w_cv, width, height)

    def to_dict(self) -> dict:
        """JSON-friendly form (lists of floats)."""
        return {
            "K": self.K.tolist(),
            "c2w": self.c2w.tolist(),
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Camera:
        """Inverse of `to_dict`; raises ValueError naming the missing field."""
        missing = [key for key in ("K", "c2w", "width", "height") if key not in data]
        if missing:
            raise ValueError(f"camera record lacks {missing}; expected K, c2w, width, height")
        return cls(np.asarray(data["K"]), np.asarray(data["c2w"]), data["width"], data["height"])


def flip_reference_convention(K: FloatArray, c2w: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Toggle between OpenCV and the reference "flipped" convention (an involution).

    c2w -> c2w @ diag(-1, -1, 1, 1), fx -> -fx, fy -> -fy (docs/reference.md §3.1). Batched over
    leading dims.
    """
    K = np.array(K, dtype=np.float64)
    c2w = np.array(c2w, dtype=np.float64)
    c2w[..., :3, 0] *= -1.0
    c2w[..., :3, 1] *= -1.0
    K[..., 0, 0] *= -1.0
    K[..., 1, 1] *= -1.0
    return K, c2w


def relative_c2w(c2w: FloatArray, reference_c2w: FloatArray) -> FloatArray:
    """Poses relative to a reference camera: inv(reference_c2w) @ c2w, [..., 4, 4].

    See docs/reference.md §3.2.

    The reference trains with poses relative to the first frame of the condition view.
    """
    return invert_pose(reference_c2w) @ np.asarray(c2w, dtype=np.float64)


def plucker_rays(
    K: FloatArray,
    c2w: FloatArray,
    height: int,
    width: int,
    moment_scale: float = 1.0 / 3.0,
    dtype: np.dtype = np.float32,
) -> FloatArray:
    """Plücker ray field of one camera, exactly as the reference computes it.

    See docs/reference.md §3.3.

    K: [3, 3] (either convention: a flipped pair gives the same field); c2w: [4, 4] or [3, 4].
    Pixel coordinates are u = j + 0.5, v = i + 0.5 (the reference's choice here, unlike the
    codec). Returns [H, W, 6]: unit direction d (base frame) then moment (o x d) * moment_scale.
    """
    K = np.asarray(K, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    u = np.arange(width, dtype=np.float64) + 0.5
    v = np.arange(height, dtype=np.float64) + 0.5
    vv, uu = np.meshgrid(v, u, indexing="ij")
    d_cam = np.stack(
        [(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], axis=-1
    )
    d = d_cam @ c2w[:3, :3].T
    d = d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-8)
    origin = np.broadcast_to(c2w[:3, 3], d.shape)
    moment = np.cross(origin, d) * moment_scale
    return np.concatenate([d, moment], axis=-1).astype(dtype)


def stack_cameras(cameras: Sequence[Camera]) -> tuple[FloatArray, FloatArray]:
    """K [V, 3, 3] and c2w [V, 4, 4] of a camera list; all must share one image size."""
    if len(cameras) == 0:
        raise ValueError("need at least one camera")
    sizes = {(cam.height, cam.width) for cam in cameras}
    if len(sizes) != 1:
        raise ValueError(f"cameras have different image sizes {sorted(sizes)}; resize them first")
    return np.stack([cam.K for cam in cameras]), np.stack([cam.c2w for cam in cameras])
