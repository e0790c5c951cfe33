"""A textured calibration plate carried by the simulated gripper, and randomised camera placements.

The plate is visual only (no mass, no collision), so the arm's dynamics are those of the bare
cell; `CarriedPlate.sync()` puts it at `tool_pose @ tool_T_plate` using the same forward
kinematics the arm reports, so the board-to-tool transform is exact ground truth.
`PlateCameraRig` syncs the plate before every read, so calibration code sees an ordinary
`CameraRig`. The texture is any RGB image (calibration uses a ChArUco board, `aimg.calib.board`).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aimg.geometry import Camera, matrix_to_quat
from aimg.robot.sim.cameras import CameraSpec
from aimg.robot.sim.devices import SimCameraRig
from aimg.robot.sim.world import SimWorld


class CarriedPlate:
    """A flat textured quad rigidly attached to the TCP.

    texture: [H, W, 3] uint8; its pixel row 0 / column 0 is at plate-frame (x0, y0), columns run
    along +x and rows along +y of the plate frame; the quad lies in the plate's z = 0 plane.
    extent_m: (x0, y0, x1, y1) of the texture's outer edges in the plate frame (m).
    tool_T_plate: [4, 4] plate frame in the TCP frame.
    """

    def __init__(
        self,
        world: SimWorld,
        texture: np.ndarray,
        extent_m: tuple[float, float, float, float],
        tool_T_plate: np.ndarray,
    ) -> None:
        from PIL import Image

        self.world = world
        self.tool_T_plate = np.asarray(tool_T_plate, dtype=np.float64).copy()
        self._dir = Path(tempfile.mkdtemp(prefix="aimg-plate-"))
        texture_path = self._dir / "texture.png"
        Image.fromarray(np.ascontiguousarray(texture, dtype=np.uint8)).save(texture_path)
        mesh_path = self._dir / "plate.obj"
        mesh_path.write_text(_quad_obj(extent_m))
        pb, c = world._pb, world.client
        with world.lock:
            visual = c.createVisualShape(pb.GEOM_MESH, fileName=str(mesh_path))
            self.body = c.createMultiBody(0.0, -1, visual, [0.0, 0.0, 0.0])
            texture_id = c.loadTexture(str(texture_path))
            c.changeVisualShape(
                self.body, -1, textureUniqueId=texture_id, rgbaColor=(1.0, 1.0, 1.0, 1.0)
            )
        self.sync()

    def pose(self) -> np.ndarray:
        """Plate-to-base [4, 4] at the arm's current measured pose."""
        return self.world.tool_pose() @ self.tool_T_plate

    def sync(self) -> None:
        """Move the plate to where the gripper holds it now."""
        with self.world.lock:
            pose = self.pose()
            self.world.client.resetBasePositionAndOrientation(
                self.body, pose[:3, 3].tolist(), matrix_to_quat(pose[:3, :3]).tolist()
            )

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _quad_obj(extent_m: tuple[float, float, float, float]) -> str:
    """A two-triangle OBJ quad; texture v = 1 at row 0 (OBJ's bottom-up v) on both faces."""
    x0, y0, x1, y1 = extent_m
    return "\n".join(
        [
            f"v {x0} {y0} 0",
            f"v {x1} {y0} 0",
            f"v {x1} {y1} 0",
            f"v {x0} {y1} 0",
            "vt 0 1",
            "vt 1 1",
            "vt 1 0",
            "vt 0 0",
            "vn 0 0 -1",
            "vn 0 0 1",
            "f 1/1/1 3/3/1 2/2/1",
            "f 1/1/1 4/4/1 3/3/1",
            "",
        ]
    )


class PlateCameraRig(SimCameraRig):
    """Static 640x480 (by default) simulated cameras that sync a carried plate before rendering.

    `move_camera` displaces a camera after calibration (drift tests); `cameras` always returns
    the true, current placements, which are the ground truth calibration is measured against.
    """

    def __init__(
        self,
        world: SimWorld,
        plate: CarriedPlate,
        specs: Sequence[CameraSpec],
        height: int = 480,
        width: int = 640,
        supersample: int = 2,
    ) -> None:
        super().__init__(world, specs, height, width)
        self._plate = plate
        self._supersample = int(supersample)

    def _before_render(self) -> None:
        self._plate.sync()

    def _render(self, camera: Camera) -> np.ndarray:
        """RGB [H, W, 3] uint8, box-filtered from `supersample`^2 samples per pixel as a real
        sensor integrates light over its pixel area (the renderer itself does not
        anti-alias, which costs a board detector ~0.5 px)."""
        f = self._supersample
        if f == 1:
            return self._world.render(camera)[0]
        fine = self._world.render(supersampled(camera, f))[0].astype(np.float32)
        coarse = fine.reshape(camera.height, f, camera.width, f, 3).mean(axis=(1, 3))
        return np.round(coarse).astype(np.uint8)

    def move_camera(self, name: str, c2w: np.ndarray) -> None:
        """Put camera `name` at a new camera-to-base pose [4, 4] (a knocked tripod)."""
        old = self._cameras[name]
        self._cameras[name] = Camera(old.K, c2w, old.width, old.height)


def supersampled(camera: Camera, factor: int) -> Camera:
    """The camera rendering `factor` x `factor` sub-pixels per pixel of `camera`.

    Pixel (u, v) covers sub-pixel centres factor*u + k (k = 0..factor-1), whose mean is
    factor*u + (factor - 1)/2, so K scales by `factor` and the centre shifts by (factor - 1)/2.
    """
    K = camera.K.copy()
    K[:2, :3] *= factor
    K[:2, 2] += (factor - 1) / 2.0
    return Camera(K, camera.c2w, camera.width * factor, camera.height * factor)


def random_camera_specs(
    rng: np.random.Generator,
    num: int,
    look_at_center: tuple[float, float, float] = (0.42, 0.0, 0.22),
    distance_m: tuple[float, float] = (0.8, 1.15),
    azimuth_deg: tuple[float, float] = (-75.0, 75.0),
    elevation_deg: tuple[float, float] = (15.0, 50.0),
    fov_y_deg: tuple[float, float] = (42.0, 55.0),
) -> tuple[CameraSpec, ...]:
    """`num` cameras on tripods around the workspace, in front of and beside the robot.

    Azimuth is measured from the +x axis (0 = facing the robot from the front); cameras are at
    least 30 degrees of azimuth apart so each sees the board from its own side; the image roll
    varies by +-5 degrees as a tripod head would.
    """
    specs: list[CameraSpec] = []
    azimuths: list[float] = []
    center = np.asarray(look_at_center)
    while len(specs) < num:
        az = math.radians(rng.uniform(*azimuth_deg))
        if any(abs(az - other) < math.radians(30.0) for other in azimuths):
            continue
        el = math.radians(rng.uniform(*elevation_deg))
        dist = rng.uniform(*distance_m)
        target = center + rng.uniform(-0.06, 0.06, size=3)
        direction = np.array(
            [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
        )
        eye = target + dist * direction
        roll = math.radians(rng.uniform(-5.0, 5.0))
        forward = -direction
        side = np.cross(forward, [0.0, 0.0, 1.0])
        side /= np.linalg.norm(side)
        up = math.cos(roll) * np.array([0.0, 0.0, 1.0]) + math.sin(roll) * side
        azimuths.append(az)
        specs.append(
            CameraSpec(
                name=f"cam{len(specs)}",
                eye=tuple(float(x) for x in eye),
                target=tuple(float(x) for x in target),
                fov_y_deg=float(rng.uniform(*fov_y_deg)),
                up=tuple(float(x) for x in up),
            )
        )
    return tuple(specs)
