"""Episode videos: mp4 round trip, trajectory overlays, tiling."""

from __future__ import annotations

import numpy as np
import pytest

from aimg.robot.sim.cameras import default_camera_specs
from aimg.runtime.video import VideoWriter, draw_overlay, pad_even, tile


def test_an_mp4_is_written_and_reads_back_with_its_frame_count_and_padded_size(tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    path = tmp_path / "episode" / "left.mp4"
    frames = [np.full((47, 65, 3), (10 * i, 128, 255 - 10 * i), np.uint8) for i in range(12)]
    with VideoWriter(path, fps=10) as video:
        for frame in frames:
            video.append(frame)
    assert video.frames_written == 12
    reader = imageio.get_reader(str(path))
    try:
        assert reader.get_meta_data()["fps"] == pytest.approx(10.0)
        decoded = [frame for frame in reader.iter_data()]
    finally:
        reader.close()
    assert len(decoded) == 12
    assert decoded[0].shape == (48, 66, 3)
    np.testing.assert_allclose(decoded[5][:47, :65].mean(axis=(0, 1)), frames[5][0, 0], atol=6)


def test_a_video_keeps_the_size_of_its_first_frame(tmp_path):
    with VideoWriter(tmp_path / "v.mp4", fps=5) as video:
        video.append(np.zeros((32, 32, 3), np.uint8))
        with pytest.raises(ValueError, match="32x32"):
            video.append(np.zeros((32, 64, 3), np.uint8))
        with pytest.raises(ValueError, match="uint8"):
            video.append(np.zeros((32, 32, 3), np.float32))


def test_pad_even_pads_only_odd_sides():
    assert pad_even(np.ones((3, 4, 3), np.uint8)).shape == (4, 4, 3)
    even = np.ones((4, 6, 3), np.uint8)
    assert pad_even(even) is even


def test_draw_overlay_marks_the_projected_points_and_leaves_the_input_alone():
    camera = default_camera_specs(1)[0].camera(64, 80)
    image = np.zeros((64, 80, 3), np.uint8)
    points = np.array([[0.30, -0.10, 0.05], [0.40, 0.0, 0.10], [0.50, 0.10, 0.05]])
    drawn = draw_overlay(image, camera, points, colour=(0, 255, 0), dot_radius=1.5)
    assert image.max() == 0
    uv, _ = camera.project(points)
    for u, v in np.round(uv).astype(int):
        assert tuple(drawn[v, u]) == (0, 255, 0)
    middle = np.round((uv[0] + uv[1]) / 2).astype(int)
    assert drawn[middle[1] - 1 : middle[1] + 2, middle[0] - 1 : middle[0] + 2, 1].max() == 255
    assert (drawn[..., 1] > 0).mean() < 0.2


def test_draw_overlay_skips_points_behind_the_camera():
    camera = default_camera_specs(1)[0].camera(64, 64)
    behind = camera.center + 2.0 * (camera.center - np.array([0.36, 0.0, 0.12]))
    points = np.array([[0.36, 0.0, 0.12], behind, [0.40, 0.05, 0.12]])
    drawn = draw_overlay(np.zeros((64, 64, 3), np.uint8), camera, points, line_width=2)
    assert 0 < (drawn.max(axis=2) > 0).sum() < 20


def test_draw_overlay_needs_the_camera_of_the_image_size():
    camera = default_camera_specs(1)[0].camera(64, 64)
    with pytest.raises(ValueError, match="calibrated for 64x64"):
        draw_overlay(np.zeros((32, 32, 3), np.uint8), camera, np.zeros((1, 3)))


def test_tile_puts_views_side_by_side_top_aligned():
    left = np.full((4, 3, 3), 1, np.uint8)
    right = np.full((6, 2, 3), 2, np.uint8)
    tiled = tile([left, right], gap=1)
    assert tiled.shape == (6, 6, 3)
    assert (tiled[:4, :3] == 1).all() and (tiled[4:, :3] == 0).all()
    assert (tiled[:, 3] == 0).all() and (tiled[:, 4:] == 2).all()
