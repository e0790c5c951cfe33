"""The per-step training task mixture of docs/reference.md §5.

One task per step for the whole global batch (video-only steps use a different latent layout
than the others, so a batch cannot mix them); drawn from (seed, step) so every rank agrees.
"""

from __future__ import annotations

import numpy as np

from aimg.model.packing import Task
from aimg.training.config import TaskMixture
from aimg.training.order import mix_seed


def draw_task(mixture: TaskMixture, seed: int, step: int) -> Task:
    """The task trained at `step`: video-only with its probability, else the joint layouts."""
    rng = np.random.default_rng(mix_seed(seed, 0x7A5C, step))
    if rng.random() < mixture.video_only:
        return Task.VIDEO_ONLY
    probs = np.array([mixture.i2va, mixture.first_view_video_given, mixture.v2a])
    choice = rng.choice(3, p=probs / probs.sum())
    return (Task.JOINT, Task.FIRST_VIEW_VIDEO_GIVEN, Task.VIDEO_TO_ACTION)[int(choice)]
