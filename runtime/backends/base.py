"""The one interface over every way of running a world action model: `PlanBackend`.

A backend encodes the current frames and action images, keeps camera latents and text
embeddings cached (cameras and instructions rarely change), samples a plan on the
checkpoint's step grid with the shared Euler loop (`aimg.model.sampler.flow_sample`, so every
backend follows the same noise, grid and guidance), and decodes only the action segments.
Subclasses supply five primitives: encode images, encode videos, one denoiser evaluation,
decode segments, and text embeddings.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from aimg.config import from_dict, to_dict
from aimg.geometry import Camera, relative_c2w
from aimg.model.camera_latents import plucker_video
from aimg.model.conditioning import joint_conditioning
from aimg.model.config import ModelConfig, SamplingConfig
from aimg.model.packing import pack_camera_latents, pack_latents, segment_slice, unpack_latents
from aimg.model.sampler import SampleOutput, flow_sample
from aimg.observation import InputSpec, ModelObservation


class BackendError(RuntimeError):
    """A backend cannot run as asked; the message says what to install or rebuild."""


@dataclass
class PlanOutput:
    """A sampled plan before decoding to poses.

    action_images: float32 [T, V, H, W, 3] in [0, 1] (the generated action video of every
    view; frame 0 is the conditioning pose); latents: the sampled packed latents [1, C, F, h, w]
    (float32, CPU); timings: seconds per component (encode, cameras, text, steps (one entry per
    transformer call), decode, total); model_calls: transformer evaluations.
    """

    action_images: np.ndarray
    latents: torch.Tensor
    timings: dict[str, Any] = field(default_factory=dict)
    model_calls: int = 0


class PlanBackend(ABC):
    """Base class; see the module docstring. `config` is the checkpoint's config.json."""

    name = "abstract"
    #: torch's intra-op threads for this backend's torch work; None = torch's default.
    threads: int | None = None

    def __init__(
        self, config: dict[str, Any], device: torch.device, dtype: torch.dtype, batch: int = 1
    ) -> None:
        self.config = config
        self.model_config: ModelConfig = from_dict(ModelConfig, config["model"], "model")
        self.sampling: SamplingConfig = from_dict(SamplingConfig, config["sampling"], "sampling")
        self.spec = InputSpec.from_checkpoint_config(config)
        self.device = torch.device(device)
        self.dtype = dtype
        self.denoiser_batch = batch
        self.per_token = self.model_config.transformer.timestep_mode == "per_token"
        self._camera_cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._text_cache: dict[str, torch.Tensor] = {}

    # -- primitives each backend implements ---------------------------------------------------
    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] float32 in [-1, 1] -> latents [N, C, h, w] float32 (one frame each)."""

    @abstractmethod
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        """[N, 3, T, H, W] -> [N, C, T_l, h, w] float32 (the camera Plücker videos)."""

    @abstractmethod
    def denoise(
        self, latents: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor, cams: torch.Tensor
    ) -> torch.Tensor:
        """One transformer evaluation -> velocity, on `self.device`."""

    @abstractmethod
    def decode_segments(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, C, T_l, h, w] -> pixels [N, 3, T, H, W] float32 in [-1, 1]."""

    @abstractmethod
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """[B, L, D_text] float32 embeddings of the prompts."""

    def synchronize(self) -> None:
        """Wait for queued device work (timings); a no-op on the CPU."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- shared machinery -------------------------------------------------------------------------
    def text_embeddings(self, instruction: str) -> torch.Tensor:
        """[1, L, D_text] on the device, cached per instruction."""
        if instruction not in self._text_cache:
            emb = self.encode_text([instruction]).to(device=self.device, dtype=torch.float32)
            self._text_cache[instruction] = emb
        return self._text_cache[instruction]

    def camera_latents(self, cameras: Sequence[Camera]) -> torch.Tensor:
        """Packed camera latents [1, F, C_cam, h, w] for static cameras at model resolution,
        computed once per calibration (the LRU keeps the last 8)."""
        cfg = self.model_config
        for view, cam in enumerate(cameras):
            if (cam.height, cam.width) != (cfg.height, cfg.width):
                raise ValueError(
                    f"view {view}: camera describes {cam.width}x{cam.height} images, the model "
                    f"works at {cfg.width}x{cfg.height}; use prepare_observation's cameras"
                )
        key = b"".join(c.K.tobytes() + c.c2w.tobytes() for c in cameras)
        if key in self._camera_cache:
            self._camera_cache.move_to_end(key)
            return self._camera_cache[key]
        reference = cameras[0].c2w if self.spec.relative_cameras else None
        videos = []
        for cam in cameras:
            c2w = cam.c2w if reference is None else relative_c2w(cam.c2w, reference)
            video = plucker_video(Camera(cam.K, c2w, cam.width, cam.height), cfg.frames)
            videos += [video[:3], video[3:]]  # direction, moment: encoded separately
        encoded = self.encode_videos(torch.stack(videos))  # [2V, C, T_l, h, w]
        views = len(cameras)
        per_view = encoded.unflatten(0, (views, 2)).flatten(1, 2)  # [V, 2C, T_l, h, w]
        latents = pack_camera_latents(per_view.permute(0, 2, 1, 3, 4)[None], True)
        latents = latents.to(self.device)
        self._camera_cache[key] = latents
        while len(self._camera_cache) > 8:
            self._camera_cache.popitem(last=False)
        return latents

    def conditioning(self, obs: ModelObservation) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed clean latents [1, C, F, h, w] and mask [F] of the joint task."""
        views = obs.frames.shape[0]
        latents = self.encode_images(torch.cat([obs.frames, obs.action_images]).float())
        frames, actions = latents[:views][None], latents[views:][None]
        return joint_conditioning(frames, actions, self.model_config.latent_frames)

    def prefix_latents(
        self, obs: ModelObservation, prefix: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Known action latents for inpainting: (packed [1, C, F, h, w], frames [F] bool).

        prefix: [P, 7] tool poses (actions) of pixel frames 1..P of the plan, i.e. what will
        execute anyway while the plan is computed. They are drawn in every view, padded to the
        segment length with the last pose, and encoded as a whole video; a latent frame counts
        as known only if every pixel frame it holds is known (the codecs are causal in time, so
        the padding does not change it).
        """
        from aimg.codec.render import render

        cfg = self.model_config
        frames, views = cfg.frames, len(obs.cameras)
        prefix = np.asarray(prefix, dtype=np.float64).reshape(-1, 7)[: frames - 1]
        if len(prefix) == 0:
            raise ValueError("an inpainting prefix needs at least one pose")
        poses = np.concatenate([prefix, np.repeat(prefix[-1:], frames - 1 - len(prefix), 0)])
        drawn = render(poses, obs.cameras, cfg.height, cfg.width, self.spec.blob_sigma)
        pixels = torch.from_numpy(np.ascontiguousarray(drawn)).float() * 2.0 - 1.0
        video = torch.cat([obs.action_images[:, :, None], pixels.permute(1, 4, 0, 2, 3)], dim=2)
        batch = 2 * views  # the video encoder graph's batch (camera videos: 2 per view)
        padded = torch.cat([video, video.new_zeros((batch - views, *video.shape[1:]))])
        encoded = self.encode_videos(padded)[:views]  # [V, C, T_l, h, w]
        t = cfg.codec.temporal_factor  # latent frame j holds pixel frames (j-1)t+1 .. jt
        known_latent = torch.tensor(
            [j >= 1 and j * t <= len(prefix) for j in range(cfg.latent_frames)]
        )
        zeros = torch.zeros_like(encoded)
        packed = pack_latents(zeros[None], encoded[None])
        mask = torch.zeros(packed.shape[2], dtype=torch.bool)
        for v in range(views):
            segment = segment_slice(v, "action", cfg.latent_frames, True)
            mask[segment] = known_latent
        return packed, mask

    def sample(
        self,
        clean: torch.Tensor,
        mask: torch.Tensor,
        text: torch.Tensor,
        cams: torch.Tensor,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        denoise=None,
        inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> SampleOutput:
        """The shared Euler loop on the checkpoint's step grid (or `sampling`)."""
        sampling = sampling or self.sampling
        negative = None
        if sampling.cfg_scale != 1.0:
            negative = self.text_embeddings(sampling.negative_prompt)
        return flow_sample(
            denoise or self.denoise,
            clean,
            mask,
            text,
            cams,
            negative_embeds=negative,
            sampling=sampling,
            seed=seed,
            per_token_timesteps=self.per_token,
            device=self.device,
            dtype=self.dtype,
            batch_cfg=self.denoiser_batch == 2,
            inpaint=inpaint,
        )

    def decode_actions(self, latents: torch.Tensor) -> np.ndarray:
        """Packed latents [1, C, F, h, w] -> action images [T, V, H, W, 3] in [0, 1]."""
        cfg = self.model_config
        _, action = unpack_latents(latents, cfg.views, True)
        pixels = self.decode_segments(action[0].to(self.device))  # [V, 3, T, H, W]
        images = (pixels.float().clamp(-1, 1) + 1) / 2
        return images.permute(2, 0, 3, 4, 1).contiguous().cpu().numpy()

    def plan(
        self,
        obs: ModelObservation,
        instruction: str,
        seed: int | None = None,
        sampling: SamplingConfig | None = None,
        prefix: np.ndarray | None = None,
    ) -> PlanOutput:
        """Observation + instruction -> the sampled action video, with per-component timings.

        prefix: optional [P, 7] poses of plan frames 1..P that are fixed in advance (inpainted,
        see `prefix_latents`), e.g. the part of the executing trajectory that runs during
        inference (real-time chunking).
        """
        self.pin_threads()
        timings: dict[str, Any] = {"steps": []}
        start = time.perf_counter()

        def timed(name: str, fn, *args):
            t0 = time.perf_counter()
            out = fn(*args)
            self.synchronize()
            timings[name] = time.perf_counter() - t0
            return out

        text = timed("text", self.text_embeddings, instruction)
        cams = timed("cameras", self.camera_latents, obs.cameras)
        clean, mask = timed("encode", self.conditioning, obs)

        def timed_denoise(*args):
            t0 = time.perf_counter()
            out = self.denoise(*args)
            self.synchronize()
            timings["steps"].append(time.perf_counter() - t0)
            return out

        inpaint = timed("prefix", self.prefix_latents, obs, prefix) if prefix is not None else None
        out = self.sample(
            clean, mask, text, cams, seed, sampling, denoise=timed_denoise, inpaint=inpaint
        )
        images = timed("decode", self.decode_actions, out.latents)
        timings["total"] = time.perf_counter() - start
        return PlanOutput(images, out.latents.float().cpu(), timings, out.model_calls)

    def pin_threads(self) -> None:
        """Apply `self.threads` (torch's intra-op budget; None = torch's default) here.

        torch's thread count is per OS thread: a count set where the backend was built does not
        hold in the scheduler's planning thread, which then ran with every core and planned
        ~1.5x slower beside the cell's camera and servo processes.
        """
        if self.threads is not None and torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def describe(self) -> dict[str, Any]:
        """What runs where (for benchmarks and logs); `distilled` says where a student's grid
        came from (None for an undistilled model)."""
        distilled = self.sampling.distilled
        return {
            "backend": self.name,
            "device": str(self.device),
            "dtype": str(self.dtype).replace("torch.", ""),
            "denoiser_batch": self.denoiser_batch,
            "steps": self.sampling.num_steps,
            "cfg_scale": self.sampling.cfg_scale,
            "evaluations_per_plan": self.sampling.evaluations_per_plan,
            "distilled": to_dict(distilled) if distilled is not None else None,
        }
