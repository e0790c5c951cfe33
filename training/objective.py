"""The world-action-model objective: a batch of clips -> packed latents -> masked flow loss.

Per step: draw the task (the mixture of docs/reference.md §5), encode video and action images
with the latent codec, pack views and modalities (`aimg.model.packing`), attach cached camera
and text latents, noise with per-sample seeded noise at the drawn σ and return the weighted,
masked flow-matching loss. All randomness comes from the run seed, the step and the sample seeds, so
the loss of a global batch does not depend on how it is split over ranks.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from aimg.config import to_dict
from aimg.geometry import Camera
from aimg.model.camera_latents import CameraLatentCache
from aimg.model.config import ModelConfig
from aimg.model.packing import (
    Task,
    conditioning_mask,
    num_segments,
    pack_camera_latents,
    pack_latents,
    segment_slice,
)
from aimg.training.config import DataConfig, TrainConfig
from aimg.training.latent_cache import LatentCache
from aimg.training.loss import TimestepSampler, masked_flow_loss, noised_latents, seeded_noise
from aimg.training.order import mix_seed
from aimg.training.tasks import draw_task


def batch_cameras(batch: dict[str, Any], index: int) -> list[Camera | list[Camera]]:
    """The cameras of sample `index` of a collated batch: per view one Camera (static) or a
    list with one per frame (moving)."""
    K, c2w = batch["K"][index].numpy(), batch["c2w"][index].numpy()
    height, width = batch["video"].shape[-2:]
    out: list[Camera | list[Camera]] = []
    for v in range(K.shape[0]):
        if (K[v] == K[v, :1]).all() and (c2w[v] == c2w[v, :1]).all():
            out.append(Camera(K[v, 0], c2w[v, 0], width, height))
        else:
            out.append([Camera(k, m, width, height) for k, m in zip(K[v], c2w[v], strict=True)])
    return out


class WorldActionObjective:
    """Callable objective for `Trainer` (see the module docstring)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        data_cfg: DataConfig,
        train_cfg: TrainConfig,
        codec: Any,
        text_encoder: Any,
        device: torch.device,
        latent_cache: LatentCache | None = None,
    ) -> None:
        self.model_cfg = model_cfg
        self.data_cfg = data_cfg
        self.seed = train_cfg.seed
        self.codec = codec
        self.text_encoder = text_encoder
        self.device = device
        self.latent_cache = latent_cache
        self.timesteps = TimestepSampler(
            train_cfg.shift, train_cfg.timesteps, train_cfg.loss_weighting
        )
        self.cameras = CameraLatentCache(codec, max_entries=32)  # static rigs need a few
        self.per_token = model_cfg.transformer.timestep_mode == "per_token"
        self.action_loss_weight = train_cfg.action_loss_weight

    def task(self, step: int) -> Task:
        return draw_task(self.data_cfg.tasks, self.seed, step)

    def _encode(self, pixels: torch.Tensor, batch: dict[str, Any], modality: str) -> torch.Tensor:
        """pixels [B, V, 3, T, H, W] -> latents [B, V, C, T_l, h, w] on the device."""
        b, v = pixels.shape[:2]
        if self.latent_cache is None:
            with torch.no_grad():
                lat = self.codec.encode(pixels.flatten(0, 1).to(self.device))
            return lat.unflatten(0, (b, v)).float()
        out = []
        for i in range(b):
            views = batch["views"][i].split("|")
            for j in range(v):
                key = self.latent_cache.key(
                    batch["episode_path"][i],
                    views[j],
                    modality,
                    batch["frame_indices"][i].tolist(),
                    tuple(pixels.shape[-2:]),
                )

                def compute(i: int = i, j: int = j) -> torch.Tensor:
                    with torch.no_grad():
                        return self.codec.encode(pixels[i, j][None].to(self.device))[0]

                out.append(self.latent_cache.get_or_compute(key, compute))
        return torch.stack(out).unflatten(0, (b, v)).to(self.device).float()

    def camera_latents(self, batch: dict[str, Any]) -> torch.Tensor:
        """[B, V, T_l, C_cam, h, w] from the (cached) Plücker encodings of each sample's cameras."""
        frames = batch["video"].shape[3]
        height, width = batch["video"].shape[-2:]
        out = []
        for i in range(batch["video"].shape[0]):
            cams = batch_cameras(batch, i)
            first = cams[0] if isinstance(cams[0], Camera) else cams[0][0]
            relative = first.c2w if self.data_cfg.relative_cameras else None
            out.append(self.cameras.get(cams, frames, height, width, relative))
        return torch.stack(out).to(self.device)

    def inputs(self, batch: dict[str, Any], task: Task) -> dict[str, torch.Tensor]:
        """Clean packed latents x0, mask, text and camera latents of a batch for `task`."""
        video = self._encode(batch["video"], batch, "video")
        action = None
        if task.with_actions:
            action = self._encode(batch["action_images"], batch, "action")
        num_views, latent_frames = video.shape[1], video.shape[3]
        return {
            "x0": pack_latents(video, action),
            "clean": conditioning_mask(task, num_views, latent_frames).to(self.device),
            "text": self.text_encoder(list(batch["instruction"])).to(self.device),
            "cameras": pack_camera_latents(self.camera_latents(batch), task.with_actions),
        }

    def __call__(
        self, model: nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        task = self.task(step)
        inp = self.inputs(batch, task)
        x0, clean = inp["x0"], inp["clean"]
        seeds = batch["seed"]
        draw = self.timesteps.draw(seeds, mix_seed(self.seed, 0x71AE, step))
        noise = seeded_noise(tuple(x0.shape[1:]), seeds).to(self.device)
        xt, target = noised_latents(x0, noise, draw["sigma"].to(self.device), clean)
        t = self.model_timesteps(draw["timestep"].to(self.device), clean)
        pred = model(xt, t, inp["text"], inp["cameras"])
        frame_weight = self.frame_weights(task)
        loss = masked_flow_loss(pred, target, clean, draw["weight"].to(self.device), frame_weight)
        return loss, {}

    def model_timesteps(self, t: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The model's timestep input for per-sample t [B]: [B] as is (scalar mode), or [B, F]
        with t = 0 on the clean conditioning frames `clean` [F] (per-token mode)."""
        if not self.per_token:
            return t
        return t[:, None].expand(-1, clean.shape[0]).masked_fill(clean[None], 0.0)

    def frame_weights(self, task: Task) -> torch.Tensor | None:
        """[F] loss weight per packed latent frame (None when every frame weighs 1)."""
        if self.action_loss_weight == 1.0 or not task.with_actions:
            return None
        cfg = self.model_cfg
        weights = torch.ones(num_segments(cfg.views, True) * cfg.latent_frames)
        for view in range(cfg.views):
            weights[segment_slice(view, "action", cfg.latent_frames, True)] = (
                self.action_loss_weight
            )
        return weights


def codec_signature(model_cfg: ModelConfig) -> str:
    """What identifies a codec's latents (for the latent cache)."""
    return json.dumps(to_dict(model_cfg.codec), sort_keys=True)
