"""`aimg bench codec`: decode speed against the memory-bound floor and the reference decoder.

All timings come from one process and are interleaved per repetition, so their ratios are
comparable even on a busy machine; absolute numbers are not. Numba compilation is excluded
(one warm-up call first).
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable

import numba
import numpy as np

from aimg.codec.decode import decode
from aimg.codec.evaluate import random_actions, random_rig
from aimg.codec.reference import decode_reference
from aimg.codec.render import render, to_uint8


def run_codec_benchmark(
    frames: int = 41, views: int = 2, size: int = 512, repeats: int = 5
) -> dict:
    """Time render and decode of a frames x views x size x size action video; returns a dict.

    The floor is one NumPy pass over the same uint8 bytes (`images.max()`, and the slower
    `images.sum()`): a decoder cannot read its input faster than that.
    """
    if min(frames, views, size, repeats) < 1:
        raise ValueError("frames, views, size and repeats must all be positive")
    rng = np.random.default_rng(0)
    cameras = random_rig(rng, views, size)
    actions = random_actions(rng, frames)

    render(actions[:1], cameras, size, size)  # compile
    render_times = _times(lambda: render(actions, cameras, size, size), repeats)
    images = to_uint8(render(actions, cameras, size, size))

    decode(images[:1], cameras)  # compile
    timed = {
        "floor_max": lambda: images.max(),
        "floor_sum": lambda: images.sum(),
        "decode": lambda: decode(images, cameras),
    }
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(repeats):
        for name, fn in timed.items():
            samples[name].extend(_times(fn, 1))
    reference = _times(lambda: decode_reference(images, cameras), max(1, min(repeats, 3)))

    decoded = decode(images, cameras)
    error_mm = np.linalg.norm(decoded.actions[:, :3] - actions[:, :3], axis=1) * 1e3
    med = {name: float(np.median(v)) for name, v in samples.items()}
    low = {name: float(np.min(v)) for name, v in samples.items()}
    ref_med = float(np.median(reference))
    render_med = float(np.median(render_times))
    return {
        "shape": [frames, views, size, size, 3],
        "bytes": int(images.nbytes),
        "repeats": repeats,
        "numba_threads": numba.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "floor_max_ms": 1e3 * med["floor_max"],
        "floor_sum_ms": 1e3 * med["floor_sum"],
        "decode_ms": 1e3 * med["decode"],
        "decode_reference_ms": 1e3 * ref_med,
        "decode_over_floor_max": med["decode"] / med["floor_max"],
        "decode_over_floor_sum": med["decode"] / med["floor_sum"],
        "decode_over_floor_max_best_of": low["decode"] / low["floor_max"],
        "reference_over_decode": ref_med / med["decode"],
        "decode_frames_per_s": frames / med["decode"],
        "decode_max_position_error_mm": float(error_mm.max()),
        "render_ms": 1e3 * render_med,
        "render_images_per_s": frames * views / render_med,
        "render_megapixels_per_s": frames * views * size * size / render_med / 1e6,
    }


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out
