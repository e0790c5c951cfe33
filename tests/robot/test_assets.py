"""The light xArm URDF: same robot as pybullet_data's, lighter visual meshes, a TCP marker."""

from __future__ import annotations

import numpy as np
import pybullet as p
from pybullet_utils.bullet_client import BulletClient

from aimg.robot.sim.assets import (
    TCP_MARKER_LINK,
    URDF_NAME,
    cluster_mesh,
    light_xarm_urdf,
    pybullet_data_path,
)
from aimg.robot.sim.world import TCP_OFFSET_M


def _grid_triangles(n: int) -> np.ndarray:
    """A unit square split into 2 n^2 triangles, [2 n^2, 3, 3]."""
    ticks = np.linspace(0.0, 1.0, n + 1)
    tris = []
    for i in range(n):
        for j in range(n):
            a, b = (ticks[i], ticks[j], 0.0), (ticks[i + 1], ticks[j], 0.0)
            c, d = (ticks[i + 1], ticks[j + 1], 0.0), (ticks[i], ticks[j + 1], 0.0)
            tris += [(a, b, c), (a, c, d)]
    return np.array(tris)


def test_vertex_clustering_reduces_triangles_and_keeps_the_extent_within_half_a_cell():
    triangles = _grid_triangles(40)
    vertices, faces = cluster_mesh(triangles, cell=0.1)
    assert len(faces) < len(triangles) / 10
    assert faces.max() < len(vertices)
    np.testing.assert_allclose(vertices.min(axis=0), [0, 0, 0], atol=0.05)
    np.testing.assert_allclose(vertices.max(axis=0), [1, 1, 0], atol=0.05)


def _link_frames(urdf: str, joints: np.ndarray) -> np.ndarray:
    client = BulletClient(connection_mode=p.DIRECT)
    try:
        robot = client.loadURDF(urdf, useFixedBase=True)
        for joint, angle in enumerate(joints):
            client.resetJointState(robot, joint, float(angle))
        states = [
            client.getLinkState(robot, link, computeForwardKinematics=True) for link in range(14)
        ]
        return np.array([[*s[4], *s[5]] for s in states])
    finally:
        client.disconnect()


def test_light_urdf_has_the_original_kinematics_and_a_tcp_marker(tmp_path):
    light = light_xarm_urdf(tmp_path, tcp_offset_m=TCP_OFFSET_M)
    joints = np.random.default_rng(0).uniform(-1.0, 1.0, 14)
    joints[0] = joints[7] = 0.0  # fixed joints
    joints[8:] = np.abs(joints[8:]) * 0.8
    original = _link_frames(str(pybullet_data_path() / URDF_NAME), joints)
    np.testing.assert_allclose(_link_frames(str(light), joints), original, atol=1e-9)
    text = light.read_text()
    assert f'<child link="{TCP_MARKER_LINK}"/>' in text
    assert f'xyz="0 0 {TCP_OFFSET_M}"' in text
    assert light_xarm_urdf(tmp_path, tcp_offset_m=TCP_OFFSET_M) == light  # cached
