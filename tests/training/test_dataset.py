"""Training clips from episodes: shapes, ranges, cameras, action images, sampling, task mixture."""

from __future__ import annotations

import collections
import dataclasses

import numpy as np
import pytest
import torch
from training_fixtures import VIEWS, make_camera, synthetic_episode, write_synthetic_episodes

from aimg.codec import render
from aimg.episodes import read_episode, write_episode
from aimg.geometry import Camera
from aimg.model.packing import Task
from aimg.observation import crop_box, crop_resize_camera, crop_resize_frames
from aimg.training.config import DataConfig, TaskMixture
from aimg.training.dataset import (
    DatasetError,
    EpisodeClipDataset,
    clip_indices,
    find_episodes,
)
from aimg.training.tasks import draw_task


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes")
    write_synthetic_episodes(root, 2, frames=12, views=VIEWS)
    return find_episodes([root])


def _dataset(episodes, **cfg) -> EpisodeClipDataset:
    base = {"roots": [episodes[0].parent], "stride": 2}
    return EpisodeClipDataset(episodes, DataConfig(**{**base, **cfg}), 5, 32, 32)


def test_item_has_two_views_of_video_and_action_images_in_minus_one_to_one(episodes):
    item = _dataset(episodes)[(1, 5)]
    for key in ("video", "action_images"):
        assert item[key].shape == (2, 3, 5, 32, 32)
        assert item[key].dtype == torch.float32
        assert item[key].min() >= -1.0 and item[key].max() <= 1.0
    assert item["K"].shape == (2, 5, 3, 3) and item["c2w"].shape == (2, 5, 4, 4)
    assert item["poses"].shape == (5, 7)
    assert item["frame_indices"].shape == (5,)


def test_action_images_render_the_clip_poses_with_the_resized_cameras(episodes):
    ds = _dataset(episodes)
    item = ds[(0, 9)]
    ep = read_episode(episodes[0])
    views = item["views"].split("|")
    cams = [crop_resize_camera(ep.camera(v), 32, 32) for v in views]
    poses = ep.poses[item["frame_indices"].numpy()]
    expected = render(poses, cams, 32, 32)  # [T, V, H, W, 3] in [0, 1]
    got = (item["action_images"].permute(2, 0, 3, 4, 1).numpy() + 1) / 2
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_array_equal(item["poses"].numpy(), poses)


def test_video_frames_are_the_episode_frames_at_the_clip_indices(episodes):
    item = _dataset(episodes, start_at_zero=1.0)[(0, 3)]
    ep = read_episode(episodes[0])
    cond = item["views"].split("|")[0]
    expected = crop_resize_frames(ep.frames(cond)[item["frame_indices"].numpy()], 32, 32)
    assert item["frame_indices"][0] == 0
    torch.testing.assert_close(item["video"][0], expected)


def test_items_are_a_pure_function_of_index_and_seed(episodes):
    a, b = _dataset(episodes)[(1, 123)], _dataset(episodes)[(1, 123)]
    for key in ("video", "action_images", "frame_indices"):
        assert torch.equal(a[key], b[key])
    assert a["views"] == b["views"]


def test_view_pairs_are_distinct_and_cover_every_ordered_pair(episodes):
    ds = _dataset(episodes)
    pairs = collections.Counter(ds.choices(0, s)[1] for s in range(120))
    assert ds[(0, 7)]["views"] == "|".join(ds.choices(0, 7)[1])
    assert all(len(set(p)) == 2 for p in pairs)
    assert len(pairs) == 6  # 3 views -> 6 ordered pairs (condition view first)


def test_configured_views_restrict_the_pair(episodes):
    ds = _dataset(episodes, views=["front", "top"])
    assert {ds.choices(0, s)[1] for s in range(30)} == {("front", "top"), ("top", "front")}


def test_unknown_view_is_a_clear_error(episodes):
    with pytest.raises(DatasetError, match="no view"):
        _dataset(episodes, views=["front", "wrist"])[(0, 1)]


def test_text_dropout_replaces_the_instruction_with_the_empty_prompt(episodes):
    assert _dataset(episodes, text_dropout=1.0)[(0, 1)]["instruction"] == ""
    kept = _dataset(episodes, text_dropout=0.0)[(0, 1)]["instruction"]
    assert kept == read_episode(episodes[0]).instruction
    ds = _dataset(episodes, text_dropout=0.3)
    dropped = sum(ds.choices(0, s)[2] for s in range(200))
    assert 35 < dropped < 85


def test_clip_starting_at_zero_and_running_past_the_end_repeats_the_last_frame():
    idx = clip_indices(10, 5, 3, start_at_zero=1.0, rng=np.random.default_rng(0))
    assert idx.tolist() == [0, 3, 6, 9, 9]


def test_clip_starts_stay_where_the_clip_fits_unless_late_starts_are_allowed():
    rng = np.random.default_rng(0)
    starts = {clip_indices(20, 5, 2, 0.0, rng)[0] for _ in range(300)}
    assert starts == set(range(0, 12))
    late = {clip_indices(20, 5, 2, 0.0, rng, max_start_fraction=0.9)[0] for _ in range(500)}
    assert max(late) == 17


@pytest.mark.parametrize("region", [None, (0.2, 0.25, 0.6, 0.5)])
def test_crop_resize_keeps_projections_consistent_for_a_wide_source(region):
    cam = make_camera("front", 48, 64)
    point = np.array([0.45, 0.05, 0.15])
    uv, _ = cam.project(point)
    frames = np.zeros((1, 48, 64, 3), dtype=np.uint8)
    u, v = np.round(uv).astype(int)
    frames[0, v - 1 : v + 2, u - 1 : u + 2] = 255
    small = crop_resize_frames(frames, 24, 24, region)[0, 0].numpy() + 1  # [24, 24]
    new_uv, _ = crop_resize_camera(cam, 24, 24, region).project(point)
    rows, cols = np.indices(small.shape)
    centroid = np.array([(cols * small).sum(), (rows * small).sum()]) / small.sum()
    assert np.linalg.norm(centroid - new_uv) < 0.6


def test_crop_region_is_a_fraction_box_then_centre_cropped_to_the_model_aspect():
    # 0.6 x 0.5 of 64 x 48 = 38 x 24 px from (13, 12); square output keeps its central 24 x 24
    assert crop_box(48, 64, 24, 24, (0.2, 0.25, 0.6, 0.5)) == (13 + 7, 12, 24, 24)
    assert crop_box(48, 64, 24, 24) == (8, 0, 48, 48)
    # a region reaching past the border is clipped to the image
    assert crop_box(48, 64, 10, 10, (0.5, 0.5, 0.6, 0.6)) == (36, 24, 24, 24)


def _static_cameras_and_action_images(item) -> tuple[list[Camera], np.ndarray]:
    """An item's cameras (clip frame 0) and its action images as [T, V, H, W, 3] in [0, 1]."""
    height, width = item["action_images"].shape[-2:]
    cams = [
        Camera(k.numpy(), c.numpy(), width, height)
        for k, c in zip(item["K"][:, 0], item["c2w"][:, 0], strict=True)
    ]
    return cams, (item["action_images"].permute(2, 0, 3, 4, 1).numpy() + 1) / 2


def test_cropped_items_zoom_in_and_their_action_images_follow_the_cameras(episodes):
    whole = _dataset(episodes)[(0, 3)]
    zoomed = _dataset(episodes, crop=[0.25, 0.25, 0.5, 0.5])[(0, 3)]
    assert torch.allclose(zoomed["K"][..., 0, 0], 2 * whole["K"][..., 0, 0])
    cams, got = _static_cameras_and_action_images(zoomed)
    expected = render(zoomed["poses"].numpy(), cams, 32, 32)  # [T, V, H, W, 3]
    assert np.abs(got - expected).max() < 1e-5


def test_items_draw_blobs_as_wide_as_the_model_asks(episodes):
    cfg = DataConfig(roots=[episodes[0].parent], stride=2)
    wide = EpisodeClipDataset(episodes, cfg, 5, 32, 32, blob_sigma=0.2)[(1, 4)]
    cams, got = _static_cameras_and_action_images(wide)
    expected = render(wide["poses"].numpy(), cams, 32, 32, 0.2)
    assert np.abs(got - expected).max() < 1e-5
    narrow = render(wide["poses"].numpy(), cams, 32, 32)
    assert np.abs(got - narrow).max() > 0.1


@pytest.mark.parametrize(
    "crop, message",
    [([0.1, 0.1, 0.5], r"\[x0, y0, w, h\]"), ([0.6, 0.0, 0.5, 0.5], "inside the image")],
)
def test_bad_crop_regions_are_refused(crop, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(crop=crop)


def test_missing_episode_directory_says_to_collect_first(tmp_path):
    with pytest.raises(DatasetError, match="aimg sim collect"):
        find_episodes([tmp_path / "reach"])


def test_episodes_with_a_single_view_use_it_as_both_views(tmp_path):
    data = synthetic_episode(0, frames=6, views=("front",))
    path = write_episode(tmp_path, data)
    ds = EpisodeClipDataset([path], DataConfig(roots=[tmp_path]), 5, 32, 32)
    assert ds[(0, 1)]["views"] == "front|front"


def test_task_mixture_frequencies_follow_the_config():
    mixture = TaskMixture()
    counts = collections.Counter(draw_task(mixture, 1, step) for step in range(4000))
    assert counts[Task.VIDEO_ONLY] / 4000 == pytest.approx(0.1, abs=0.02)
    assert counts[Task.JOINT] / 4000 == pytest.approx(0.81, abs=0.03)
    assert counts[Task.FIRST_VIEW_VIDEO_GIVEN] / 4000 == pytest.approx(0.045, abs=0.015)
    assert counts[Task.VIDEO_TO_ACTION] / 4000 == pytest.approx(0.045, abs=0.015)


def test_task_mixture_can_be_restricted_to_one_task():
    mixture = dataclasses.replace(TaskMixture(), video_only=0.0, first_view_video_given=0, v2a=0)
    assert {draw_task(mixture, 3, s) for s in range(50)} == {Task.JOINT}


def test_negative_task_probability_is_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        TaskMixture(v2a=-0.1)


def test_moving_cameras_render_each_frame_with_its_own_camera(tmp_path):
    data = synthetic_episode(0, frames=8, views=("front", "side"), moving=("side",))
    path = write_episode(tmp_path, data)
    ds = EpisodeClipDataset([path], DataConfig(roots=[tmp_path], stride=1), 5, 32, 32)
    item = ds[(0, 4)]
    ep = read_episode(path)
    idx = item["frame_indices"].numpy()
    views = item["views"].split("|")
    side = views.index("side")
    assert not torch.equal(item["c2w"][side, 0], item["c2w"][side, -1])
    assert torch.equal(item["c2w"][1 - side, 0], item["c2w"][1 - side, -1])
    for k, t in enumerate(idx):
        cams = [crop_resize_camera(ep.camera(v, int(t)), 32, 32) for v in views]
        expected = render(ep.poses[t : t + 1], cams, 32, 32)[0]
        got = (item["action_images"][:, :, k].permute(0, 2, 3, 1).numpy() + 1) / 2
        np.testing.assert_allclose(got, expected, atol=1e-6)
