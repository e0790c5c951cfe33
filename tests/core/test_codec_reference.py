"""Specification of aimg.codec.decode_reference: the reference decoder, bugs included.

The decoder it replicates is described in docs/reference.md §2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aimg.codec import decode, decode_reference, render, to_uint8
from aimg.codec.reference import _heat, reference_ray_scores
from aimg.geometry import Camera, euler_xyz_to_matrix, rotation_angle_between


def _decode_settings(ref: dict) -> dict:
    return {
        "near": float(ref["decode_near"]),
        "far": float(ref["decode_far"]),
        "num_samples": int(ref["decode_num_depth_samples"]),
        "apply_edge_smoothing": bool(ref["decode_apply_edge_smoothing"]),
    }


def test_decode_reference_reproduces_the_fixture_bitwise_at_64(ref, ref_cameras):
    """Bit-level float32 replication at 64x64, where every ray pick is a clear maximum (the
    runner-up scores at least 2.9e-5 below it, 11x the tie tolerance of the 512 test), so no
    CPU's rounding can change the pick. Bitwise with torch's default kernels on the development
    machine (also under MKL_CBWR=COMPATIBLE); with ATEN_CPU_CAPABILITY=default the positions move
    by 1 ulp and the directions by up to 8e-7 (G - R is only 0.1 m long), still inside 1e-6."""
    images = np.swapaxes(ref["images_64_uint8"], 0, 1)
    out = decode_reference(images, ref_cameras(64), **_decode_settings(ref))
    np.testing.assert_allclose(out, ref["decoded_64"], rtol=0, atol=1e-6)


# Tolerances of `_assert_matches_up_to_ties` (why each is what it is: the 512 test's docstring).
_UNIT_ROUNDOFF = 2.0**-24  # float32
_ON_RAY_ATOL = 1e-5  # metres


def _tie_rtol(num_views: int) -> float:
    """Relative score difference that still counts as a tie: twice the CPU-to-CPU bound."""
    return 4 * (6 * num_views - 1) * _UNIT_ROUNDOFF


@pytest.fixture(scope="module")
def rays_512(ref, ref_cameras) -> dict:
    """The reference's R and G ray candidates and scores at 512, on the replica's own heat."""
    images = np.swapaxes(ref["images_512_uint8"], 0, 1)
    cameras = ref_cameras(512)
    settings = _decode_settings(ref)
    K = torch.from_numpy(np.stack([cam.K for cam in cameras]).astype(np.float32))
    c2w = torch.from_numpy(np.stack([cam.c2w[:3, :] for cam in cameras]).astype(np.float32))
    frames = torch.from_numpy(images)
    rays = []
    with torch.inference_mode():
        for channel in (0, 1):
            candidates, score = reference_ray_scores(
                _heat(frames, channel),
                K,
                c2w,
                settings["near"],
                settings["far"],
                settings["num_samples"],
            )
            rays.append((candidates.numpy().astype(np.float64), score.numpy().astype(np.float64)))
    step = (settings["far"] - settings["near"]) / (settings["num_samples"] - 1)
    return {"images": images, "cameras": cameras, "rays": rays, "step": step, **settings}


def _tied(score: np.ndarray, num_views: int) -> np.ndarray:
    """Indices of the ray samples whose score ties the maximum within float32 rounding.

    Checks too that every other sample is more than 10x the tie tolerance below, so the tie set
    cannot depend on rounding (if this fails, the fixture cannot be checked this way).
    """
    rtol = _tie_rtol(num_views)
    best = score.max()
    tied = score >= best * (1 - rtol)
    gap = (best - score[~tied]).min() / best
    assert gap > 10 * rtol, f"the score plateau is not separated from the other samples: {gap:.2e}"
    return np.flatnonzero(tied)


def _start_index(candidates: np.ndarray, point: np.ndarray, what: str) -> int:
    """The R ray sample a decoded point is; it must lie on this machine's view-0 ray."""
    distance = np.linalg.norm(candidates - point, axis=-1)
    index = int(distance.argmin())
    assert distance[index] <= _ON_RAY_ATOL, (
        f"{what} is {distance[index] * 1e3:.3f} mm off the view-0 ray "
        f"(tolerance {_ON_RAY_ATOL * 1e3:.3f} mm)"
    )
    return index


def _end_index(candidates: np.ndarray, start: np.ndarray, direction: np.ndarray, what: str) -> int:
    """The G ray sample that [start, direction] implies (dir = normalised G - R): the sample
    nearest the half-line start + s * direction, which must pass through it."""
    offsets = candidates - start
    unit = direction / np.linalg.norm(direction)
    along = offsets @ unit
    distance = np.linalg.norm(offsets - along[:, None] * unit, axis=-1)
    distance[along <= 0] = np.inf
    index = int(distance.argmin())
    assert distance[index] <= _ON_RAY_ATOL, (
        f"{what} is {distance[index] * 1e3:.3f} mm off the view-0 ray "
        f"(tolerance {_ON_RAY_ATOL * 1e3:.3f} mm)"
    )
    return index


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.arctan2(np.linalg.norm(np.cross(a, b)), a @ b))


def _assert_matches_up_to_ties(out: np.ndarray, expected: np.ndarray, rays_512: dict) -> None:
    """out [T, 7] is the reference's expected [T, 7] up to which tied ray sample won."""
    (start_candidates, start_score), (end_candidates, end_score) = rays_512["rays"]
    num_views, step = len(rays_512["cameras"]), rays_512["step"]
    for t in range(len(expected)):
        start_tied = _tied(start_score[t], num_views)
        end_tied = _tied(end_score[t], num_views)
        picks = {}
        for name, row in (("reference", expected[t]), ("replica", out[t])):
            what = f"frame {t}: the {name}'s"
            start = _start_index(start_candidates[t], row[:3], f"{what} R point")
            end = _end_index(end_candidates[t], row[:3], row[3:6], f"{what} implied G point")
            assert start in start_tied, f"{what} R pick {start} is not in {start_tied.tolist()}"
            assert end in end_tied, f"{what} G pick {end} is not in {end_tied.tolist()}"
            picks[name] = end
        start_span = (start_tied.max() - start_tied.min()) * step
        end_span = (end_tied.max() - end_tied.min()) * step
        distance = np.linalg.norm(out[t, :3] - expected[t, :3])
        assert distance <= start_span + 2 * _ON_RAY_ATOL, (
            f"frame {t}: R point {distance * 1e3:.3f} mm from the reference's, "
            f"more than the tied samples span ({start_span * 1e3:.3f} mm)"
        )
        arm = np.linalg.norm(end_candidates[t, picks["reference"]] - expected[t, :3])
        bound = np.arcsin(min(1.0, (start_span + end_span + 4 * _ON_RAY_ATOL) / arm))
        angle = _angle(out[t, 3:6], expected[t, 3:6])
        assert angle <= bound, f"frame {t}: direction {angle:.4f} rad off (bound {bound:.4f})"
    np.testing.assert_array_equal(out[:, 6], expected[:, 6])


def test_decode_reference_matches_the_fixture_up_to_tied_ray_samples_at_512(ref, rays_512):
    """At 512 the bitwise match depends on the CPU; this asserts what holds on every CPU.

    Both views read the blob's flat top (254 after the uint8 truncation, over ~2 px around the
    centre) over a few consecutive ray samples, so the product score is flat over 2-4 samples
    (here its values differ by at most 2 float32 ulps, 1.2e-7) and float32 rounding in torch's
    CPU kernels picks the winner: another CPU's SIMD paths can move a pick along that plateau
    (seen on a 2-core AMD EPYC: one sample, directions off by up to 0.0196). Per frame, for R
    and for G, with `reference_ray_scores` on the same heat:

    (a) the reference's pick (the fixture) and the replica's both lie on this machine's view-0
        ray within 10 um (`_ON_RAY_ATOL`) and are among the samples tied with the maximum.
        10 um: CPUs differ in the ray only by the rounding of float32 sums over 512x512 pixels
        (< 1e-6 relative, a few 1e-4 px, about 1 um at these depths); the smallest plausible
        bug, the centroid without its +0.5 px, moves the ray by 1.2-1.5 mm. The G pick is the
        G ray sample on the half-line R + s * dir, within the same 10 um.
        Tie tolerance: a score is the product over V views of a bilinear sample; on a flat 2x2
        patch that is h * (sum of weights) with at most 5 roundings, and the product adds V - 1,
        so one float32 evaluation is within (6V - 1) * 2**-24 of exact and two CPUs differ by
        at most twice that. A pick that is the maximum on another CPU is then within 4 (6V - 1)
        * 2**-24 (2.6e-6 for V = 2) of this machine's maximum. `_tied` also asserts the next
        sample is over 10x that below (on this fixture >= 2.2e-4); samples off the flat patch
        also move with the rounding of where they sample (~1e-4 px at <= 1/255 per px, ~4e-7),
        so the tied set is the same on every CPU.
    (b) the R point is within the plateau's extent of the reference's: (tied samples - 1) ray
        steps of (far - near) / (samples - 1) = 1.96 mm, i.e. 1-3 steps here. Any tied sample
        can win: the AMD machine moved picks by one sample, this Intel one by up to two under
        ATEN_CPU_CAPABILITY=default or MKL_CBWR=COMPATIBLE, so one step would not hold.
    (c) the direction is within arcsin((R extent + G extent) / |G - R|) of the reference's:
        moving R and G by at most their extents turns G - R (0.1 m long) by at most that.
    The gripper column is exact: it does not depend on the ray.
    """
    out = decode_reference(
        rays_512["images"],
        rays_512["cameras"],
        near=rays_512["near"],
        far=rays_512["far"],
        num_samples=rays_512["num_samples"],
        apply_edge_smoothing=rays_512["apply_edge_smoothing"],
    )
    _assert_matches_up_to_ties(out, ref["decoded_512"].astype(np.float64), rays_512)


def _decode_from_view_1(images: np.ndarray, cameras: list, **settings) -> np.ndarray:
    """The reference with the centroid ray taken in view 1 instead of view 0."""
    return decode_reference(np.ascontiguousarray(images[:, ::-1]), cameras[::-1], **settings)


def _decode_without_half_pixel(images: np.ndarray, cameras: list, **settings) -> np.ndarray:
    """The reference with the centroid at pixel indices (no +0.5) while sampling is unchanged."""
    meshgrid = torch.meshgrid

    def shifted(*tensors, **kwargs):
        return tuple(grid - 0.5 for grid in meshgrid(*tensors, **kwargs))

    torch.meshgrid = shifted  # decode_reference builds the centroid's pixel grid with it
    try:
        return decode_reference(images, cameras, **settings)
    finally:
        torch.meshgrid = meshgrid


@pytest.mark.parametrize("broken", [_decode_without_half_pixel, _decode_from_view_1])
def test_the_512_check_rejects_a_broken_replica(ref, rays_512, broken):
    """The tie-tolerant check still fails a replica with a plausible bug, for the right reason:
    its points leave the reference's view-0 ray by 1.16-2.30 mm, over 100x the 10 um tolerance
    (while their ray samples can still land on the plateau: the ray check is what catches them)."""
    settings = {k: rays_512[k] for k in ("near", "far", "num_samples", "apply_edge_smoothing")}
    out = broken(rays_512["images"], rays_512["cameras"], **settings)
    candidates = rays_512["rays"][0][0]
    off_ray = np.linalg.norm(candidates - out[:, None, :3], axis=-1).min(axis=1)
    assert off_ray.min() > 100 * _ON_RAY_ATOL
    with pytest.raises(AssertionError, match="off the view-0 ray"):
        _assert_matches_up_to_ties(out, ref["decoded_512"].astype(np.float64), rays_512)


def test_decode_reference_depends_on_the_camera_pair_not_its_convention(ref):
    images = np.swapaxes(ref["images_64_uint8"], 0, 1)
    flipped = [
        Camera.from_reference_flipped(ref["K_64_flipped"][v], ref["c2w_flipped"][v], 64, 64)
        for v in range(2)
    ]
    out = decode_reference(images, flipped, **_decode_settings(ref))
    np.testing.assert_allclose(out, ref["decoded_64_flipped"], atol=1e-5)


def _roll_pair() -> np.ndarray:
    base = np.array([0.42, 0.03, 0.12, np.pi - 0.2, 0.15, 0.7, 1.0])
    rolled = base.copy()
    rolled[3] += 0.5  # extrinsic x rotation first = rotation about the tool's own x axis
    return np.stack([base, rolled])


def test_reference_decoder_loses_roll_and_ours_recovers_it(ref, ref_cameras):
    actions = _roll_pair()
    cameras = ref_cameras(512)
    images = to_uint8(render(actions, cameras, 512, 512))
    theirs = decode_reference(images, cameras, near=0.5, far=1.5)
    np.testing.assert_allclose(theirs[0, :6], theirs[1, :6], atol=3e-3)
    ours = decode(images, cameras).actions
    error = rotation_angle_between(
        euler_xyz_to_matrix(ours[:, 3:6]), euler_xyz_to_matrix(actions[:, 3:6])
    )
    assert np.degrees(error).max() < 0.05


def test_reference_gripper_rule_says_open_for_a_closed_gripper_and_ours_does_not(ref, ref_cameras):
    actions = _roll_pair()
    actions[:, 6] = [0.0, 1.0]
    cameras = ref_cameras(512)
    images = to_uint8(render(actions, cameras, 512, 512))
    assert decode_reference(images, cameras)[:, 6].tolist() == [1.0, 1.0]
    assert decode(images, cameras).actions[:, 6].tolist() == [0.0, 1.0]


def test_edge_smoothing_interpolates_frames_whose_peak_touches_the_border(ref, ref_cameras):
    cameras = ref_cameras(64)
    actions = ref["actions_7d"][:3]
    images = to_uint8(render(actions, cameras, 64, 64))
    images[1, 0, :, :, 0] = 0
    images[1, 0, 0, 0, 0] = 255  # the R peak of frame 1 now sits in the corner of view 0
    plain = decode_reference(images, cameras, near=0.5, far=1.5)
    smooth = decode_reference(
        images, cameras, near=0.5, far=1.5, apply_edge_smoothing=True, edge_threshold=0.05
    )
    np.testing.assert_allclose(smooth[1, :3], 0.5 * (plain[0, :3] + plain[2, :3]))
    np.testing.assert_allclose(smooth[[0, 2]], plain[[0, 2]])


def test_decode_reference_accepts_float_images(ref, ref_cameras):
    images = np.swapaxes(ref["images_64_uint8"], 0, 1)
    as_float = images.astype(np.float32) / 255.0
    np.testing.assert_allclose(
        decode_reference(as_float, ref_cameras(64)),
        decode_reference(images, ref_cameras(64)),
        atol=1e-6,
    )
