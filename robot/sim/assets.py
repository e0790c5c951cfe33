"""The xArm6-with-gripper URDF from `pybullet_data`, with lighter visual meshes for rendering.

PyBullet's CPU renderer spends most of a 128x128 frame on the ~100k triangles of the bundled
STL meshes. We keep the URDF's kinematics, inertias and collision meshes unchanged and replace
only each visual mesh by a vertex-clustered copy (cells of a few millimetres, far below one pixel
of a 128-pixel camera a metre away), which makes a frame about 3x faster. The light copy is
written once into a cache directory, atomically, so concurrent worker processes can share it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

URDF_NAME = "xarm/xarm6_with_gripper.urdf"
DEFAULT_CELL_M = 0.004
TCP_MARKER_LINK = "tcp_marker"
#: Bump when the generated URDF changes, so caches are rebuilt.
_LIGHT_VERSION = 2
_MESH = re.compile(r'filename="package://([^"]+)"')


def pybullet_data_path() -> Path:
    from aimg.optional import require

    return Path(require("pybullet_data", "sim", package="pybullet").getDataPath())


def read_binary_stl(path: Path) -> np.ndarray:
    """Triangles of a binary STL file: [N, 3, 3] float64 (metres, as stored)."""
    data = path.read_bytes()
    count = int(np.frombuffer(data, dtype="<u4", count=1, offset=80)[0])
    record = np.dtype([("normal", "<f4", 3), ("vertices", "<f4", (3, 3)), ("attr", "<u2")])
    if len(data) < 84 + count * record.itemsize:
        raise ValueError(f"{path} is not a binary STL file (truncated or ASCII)")
    return np.frombuffer(data, dtype=record, count=count, offset=84)["vertices"].astype(np.float64)


def cluster_mesh(triangles: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertex clustering: merge vertices in each `cell`-sized cube, drop collapsed triangles.

    triangles: [N, 3, 3]. Returns vertices [M, 3] (cell means) and faces [F, 3] (indices),
    keeping each triangle's winding.
    """
    vertices = triangles.reshape(-1, 3)
    keys = np.floor(vertices / cell).astype(np.int64)
    _, inverse, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    sums = np.zeros((counts.size, 3))
    np.add.at(sums, inverse, vertices)
    faces = inverse.reshape(-1, 3)
    keep = (
        (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    )
    faces = np.unique(faces[keep], axis=0)
    return sums / counts[:, None], faces


def write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def default_cache_dir() -> Path:
    base = os.environ.get("AIMG_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "aimg"
    )
    return Path(base) / "sim"


def light_xarm_urdf(
    cache_dir: Path | None = None, cell: float = DEFAULT_CELL_M, tcp_offset_m: float = 0.172
) -> Path:
    """Path of the light xArm URDF, building it on first use (takes about a second).

    It also gains a massless link `tcp_marker` fixed to the flange at the TCP (`tcp_offset_m`
    along flange z) with an invisible sphere: PyBullet renders it with its own kinematics, which
    is how the simulator checks that the tool pose it reports lands on the rendered TCP.
    """
    data = pybullet_data_path()
    source = data / URDF_NAME
    text = source.read_text()
    digest = hashlib.sha256(f"{text}|{cell}|{tcp_offset_m}|{_LIGHT_VERSION}".encode()).hexdigest()[
        :12
    ]
    target = (cache_dir or default_cache_dir()) / f"xarm6_light_{digest}"
    urdf = target / "xarm6_with_gripper_light.urdf"
    if urdf.exists():
        return urdf
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _build(source, text, tmp, cell, tcp_offset_m)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first: use its copy
            if not urdf.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return urdf


def _build(source: Path, text: str, out: Path, cell: float, tcp_offset_m: float) -> None:
    """Write the light URDF into `out`: visual meshes clustered, collision meshes referenced."""
    package_root = source.parent
    visual_spans = [m.span() for m in re.finditer(r"<visual>.*?</visual>", text, flags=re.S)]

    def in_visual(pos: int) -> bool:
        return any(a <= pos < b for a, b in visual_spans)

    def replace(match: re.Match[str]) -> str:
        relative = match.group(1)
        mesh = package_root / relative
        if in_visual(match.start()) and mesh.suffix.lower() == ".stl":
            name = relative.replace("/", "_")[: -len(mesh.suffix)] + ".obj"
            vertices, faces = cluster_mesh(read_binary_stl(mesh), cell)
            write_obj(out / name, vertices, faces)
            return f'filename="{name}"'
        return f'filename="{mesh}"'

    light = _MESH.sub(replace, text)
    end = light.rindex("</robot>")
    light = light[:end] + _TCP_MARKER.format(z=tcp_offset_m, name=TCP_MARKER_LINK) + light[end:]
    (out / "xarm6_with_gripper_light.urdf").write_text(light)


_TCP_MARKER = """
  <joint name="{name}_joint" type="fixed">
    <parent link="link6"/>
    <child link="{name}"/>
    <origin rpy="0 0 0" xyz="0 0 {z}"/>
  </joint>
  <link name="{name}">
    <inertial>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <mass value="0.0001"/>
      <inertia ixx="1e-9" ixy="0" ixz="0" iyy="1e-9" iyz="0" izz="1e-9"/>
    </inertial>
    <visual>
      <origin rpy="0 0 0" xyz="0 0 0"/>
      <geometry><sphere radius="0.015"/></geometry>
      <material name="{name}_material"><color rgba="1 0 1 0"/></material>
    </visual>
  </link>
"""
