"""Flow-matching Euler sampler with shift, classifier-free guidance and the reference step cache.

Spec §6: start from clean conditioning latents where the mask is set and seeded Gaussian noise
elsewhere; at each σ_k predict v̂ (CFG: v_neg + s·(v_pos - v_neg), negative = the empty prompt,
skipped when s == 1) and update x <- x + v̂·(σ_{k+1} - σ_k) on the free frames only, so the
conditioning frames stay bit-exactly clean. Only the segments a caller needs are decoded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from aimg.model.codecs import LatentCodec
from aimg.model.config import SamplingConfig
from aimg.model.packing import unpack_latents
from aimg.model.schedule import NUM_TRAIN_TIMESTEPS, sampler_sigmas


class StepCache:
    """The reference `--dynamic_cache_schedule` rule (docs/reference.md §6, `should_run_model`).

    Keeps the last two computed (CFG-combined) predictions. With fewer than two, run. A
    countdown > 1 decrements and skips; a countdown of 1 resets and runs. Otherwise the mean
    cosine similarity of the two: > 0.95 skips (countdown 4), > 0.93 skips (countdown 2), else
    run. A skipped step reuses the last computed prediction.
    """

    def __init__(self, high: float = 0.95, low: float = 0.93) -> None:
        self.high, self.low = high, low
        self.history: list[torch.Tensor] = []
        self.countdown = 0

    def should_run(self) -> bool:
        if len(self.history) < 2:
            return True
        if self.countdown > 1:
            self.countdown -= 1
            return False
        if self.countdown == 1:
            self.countdown = 0
            return True
        last, prev = self.history[-1], self.history[-2]
        sim = F.cosine_similarity(last.flatten(1).float(), prev.flatten(1).float(), dim=1).mean()
        if sim > self.high:
            self.countdown = 4
            return False
        if sim > self.low:
            self.countdown = 2
            return False
        return True

    def update(self, velocity: torch.Tensor) -> None:
        self.history = [*self.history[-1:], velocity]

    @property
    def last(self) -> torch.Tensor:
        return self.history[-1]


@dataclass
class SampleOutput:
    """Sampled packed latents [B, C, F, h, w] and which steps ran the model."""

    latents: torch.Tensor
    computed_steps: list[bool] = field(default_factory=list)
    model_calls: int = 0


def _timestep(sigma: float, batch: int, mask: torch.Tensor, per_token: bool, dtype) -> torch.Tensor:
    """[B] (scalar mode) or [B, F] (per-token mode, clean frames t = 0) timesteps 1000·σ."""
    t = torch.full((batch,), sigma * NUM_TRAIN_TIMESTEPS, dtype=torch.float32, device=mask.device)
    if dtype in (torch.bfloat16, torch.float16):
        t = t.to(dtype).float()  # the reference rounds t to bf16 (docs/reference.md §6)
    if per_token:
        t = t[:, None].expand(batch, mask.shape[-1]).masked_fill(mask.expand(batch, -1), 0.0)
    return t


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(x [B, C, F, h, w], t [B] or [B, F], text [B, L, D], cams [B, F, ...]) -> velocity."""


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    clean_latents: torch.Tensor,
    mask: torch.Tensor,
    text_embeds: torch.Tensor,
    camera_latents: torch.Tensor,
    *,
    negative_embeds: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    per_token_timesteps: bool | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> SampleOutput:
    """Denoise packed latents with a torch model (see `flow_sample` for the arguments).

    The model's device and dtype decide where the loop runs and what the model is fed.
    """
    if per_token_timesteps is None:
        per_token_timesteps = getattr(model.config, "timestep_mode", "scalar") == "per_token"
    param = next(model.parameters())
    return flow_sample(
        model,
        clean_latents,
        mask,
        text_embeds,
        camera_latents,
        negative_embeds=negative_embeds,
        sampling=sampling,
        seed=seed,
        per_token_timesteps=per_token_timesteps,
        device=param.device,
        dtype=param.dtype,
        callback=callback,
    )


@torch.no_grad()
def flow_sample(
    denoise: Denoiser,
    clean_latents: torch.Tensor,
    mask: torch.Tensor,
    text_embeds: torch.Tensor,
    camera_latents: torch.Tensor,
    *,
    negative_embeds: torch.Tensor | None = None,
    sampling: SamplingConfig | None = None,
    seed: int | None = None,
    per_token_timesteps: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_cfg: bool = False,
    inpaint: tuple[torch.Tensor, torch.Tensor] | None = None,
    callback: Callable[[int, float, torch.Tensor], None] | None = None,
) -> SampleOutput:
    """Denoise packed latents with any denoiser callable: one loop for every backend.

    clean_latents: [B, C, F, h, w]; only frames where `mask` ([F] or [B, F], True = clean) is
    set are read. text_embeds / negative_embeds: [B, L, D_text] (negative needed when
    cfg_scale != 1). camera_latents: [B, F, C_cam, h_cam, w_cam]. Noise comes from a CPU
    generator seeded with `seed` (default `sampling.seed`), so results do not depend on device.
    The state x stays float32 on `device`; the denoiser is fed `dtype`. `batch_cfg` evaluates
    the conditional and unconditional branches as one batch of 2B (a static-shape graph built
    for it), else as two calls.
    `inpaint` = (known latents [B, C, F, h, w], frames [F] bool): generated frames whose clean
    value is known (e.g. the part of a trajectory that executes while this plan is computed).
    Before every evaluation they are set to the known value noised to the current σ with the
    sample's own noise, so the model sees them exactly as it sees any frame at that σ and fills
    in the rest consistently (inpainting by replacement; no retraining); they end clean.
    """
    cfg = sampling or SamplingConfig()
    seed = cfg.seed if seed is None else seed
    batch, _, frames = clean_latents.shape[:3]
    mask = mask.to(torch.bool)
    if mask.shape[-1] != frames:
        raise ValueError(f"mask has {mask.shape[-1]} frames, latents have {frames}")
    use_cfg = cfg.cfg_scale != 1.0
    if use_cfg and negative_embeds is None:
        raise ValueError(
            f"cfg_scale {cfg.cfg_scale} needs negative_embeds (the encoded negative prompt "
            f"{cfg.negative_prompt!r}); pass them or set cfg_scale to 1"
        )

    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise = torch.randn(clean_latents.shape, generator=generator, dtype=torch.float32)
    clean = clean_latents.to(device=device, dtype=torch.float32)
    mask = mask.to(device)
    token_mask = mask[None] if mask.ndim == 1 else mask
    frame_mask = token_mask.view(token_mask.shape[0], 1, frames, 1, 1)
    x = torch.where(frame_mask, clean, noise.to(device))

    text = text_embeds.to(device=device, dtype=dtype)
    negative = negative_embeds.to(device=device, dtype=dtype) if use_cfg else None
    cams = camera_latents.to(device=device, dtype=dtype)
    if use_cfg and batch_cfg:
        both_text = torch.cat([text, negative])
        both_cams = torch.cat([cams, cams])
    sigmas = sampler_sigmas(cfg.num_steps, cfg.shift, cfg.sigmas).tolist()
    cache = StepCache() if cfg.step_cache else None
    out = SampleOutput(latents=x)
    if inpaint is not None:
        known = inpaint[0].to(device=device, dtype=torch.float32)
        known_frames = inpaint[1].to(device=device, dtype=torch.bool).view(1, 1, frames, 1, 1)
        known_frames = known_frames & ~frame_mask
        noise = noise.to(device)

    for k in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[k], sigmas[k + 1]
        if inpaint is not None:
            x = torch.where(known_frames, (1.0 - sigma) * known + sigma * noise, x)
        run = cache.should_run() if cache is not None else True
        if run:
            t = _timestep(sigma, batch, token_mask, per_token_timesteps, dtype)
            x_in = x.to(dtype)
            if use_cfg and batch_cfg:
                both = denoise(torch.cat([x_in, x_in]), torch.cat([t, t]), both_text, both_cams)
                v, v_neg = both.float().chunk(2)
                out.model_calls += 2
                v = v_neg + cfg.cfg_scale * (v - v_neg)
            else:
                v = denoise(x_in, t, text, cams).float()
                out.model_calls += 1
                if use_cfg:
                    v_neg = denoise(x_in, t, negative, cams).float()
                    out.model_calls += 1
                    v = v_neg + cfg.cfg_scale * (v - v_neg)
            if cache is not None:
                cache.update(v)
        else:
            v = cache.last
        out.computed_steps.append(run)
        x = torch.where(frame_mask, clean, x + v * (sigma_next - sigma))
        if callback is not None:
            callback(k, sigma, x)
    if inpaint is not None:
        x = torch.where(known_frames, known, x)
    out.latents = x
    return out


def decode_segments(
    codec: LatentCodec,
    latents: torch.Tensor,
    num_views: int,
    with_actions: bool,
    modality: str = "action",
) -> torch.Tensor:
    """Decode only the segments needed: pixels [B, V, 3, T, H, W] in [-1, 1].

    modality "action" (a policy) or "video"; each segment is decoded on its own
    (docs/reference.md §6).
    """
    video, action = unpack_latents(latents, num_views, with_actions)
    if modality == "action":
        if action is None:
            raise ValueError("these latents hold no action segments (video-only layout)")
        segments = action
    elif modality == "video":
        segments = video
    else:
        raise ValueError(f"modality must be 'action' or 'video', got {modality!r}")
    decoded = [codec.decode(segments[:, v]) for v in range(num_views)]
    return torch.stack(decoded, dim=1)
