"""Latent codecs: pixels [B, 3, T, H, W] in [-1, 1] <-> latents [B, C, T_l, h, w].

Both follow the Wan VAE's time layout: latent frame 0 holds pixel frame 0 alone, every further
latent frame holds `temporal_factor` pixel frames, so T_l = 1 + (T - 1) / temporal_factor.

- `PixelCodec`: exact and parameter-free space-to-depth, for small models that train on a CPU.
  Channel index = ((colour * t + dt) * s + dy) * s + dx. Pixel frame 0 is repeated t times to
  fill latent frame 0; decoding averages those copies (exact on encoded data).
- `WanVAECodec`: `diffusers.AutoencoderKLWan` from a local directory, posterior mode normalised
  per channel with the VAE's latents_mean / latents_std (docs/reference.md §4.2).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch


class LatentCodec(ABC):
    """Interface shared by the codecs; see the module docstring for the layout."""

    latent_channels: int
    spatial_factor: int
    temporal_factor: int

    def latent_frames(self, num_frames: int) -> int:
        """T_l for T pixel frames; T must be 1 + k * temporal_factor."""
        if num_frames < 1 or (num_frames - 1) % self.temporal_factor:
            raise ValueError(
                f"{num_frames} frames do not fit temporal factor {self.temporal_factor}: "
                f"use 1 + k*{self.temporal_factor} frames"
            )
        return 1 + (num_frames - 1) // self.temporal_factor

    def pixel_frames(self, latent_frames: int) -> int:
        """T for T_l latent frames (inverse of `latent_frames`)."""
        return 1 + (latent_frames - 1) * self.temporal_factor

    def _check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 5 or pixels.shape[1] != 3:
            raise ValueError(f"pixels must be [B, 3, T, H, W], got {tuple(pixels.shape)}")
        _, _, frames, height, width = pixels.shape
        self.latent_frames(frames)
        s = self.spatial_factor
        if height % s or width % s:
            raise ValueError(f"image {height}x{width} is not a multiple of spatial factor {s}")

    @abstractmethod
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, T, H, W] in [-1, 1] -> latents [B, C, T_l, H/s, W/s]."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, T_l, h, w] -> pixels [B, 3, T, h*s, w*s] in [-1, 1]."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move any weights; returns self."""
        return self


class PixelCodec(LatentCodec):
    """Exact space-to-depth codec (no parameters); see the module docstring."""

    def __init__(self, spatial_factor: int = 8, temporal_factor: int = 4) -> None:
        if spatial_factor <= 0 or temporal_factor <= 0:
            raise ValueError("spatial_factor and temporal_factor must be positive")
        self.spatial_factor = spatial_factor
        self.temporal_factor = temporal_factor
        self.latent_channels = 3 * spatial_factor**2 * temporal_factor

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixels)
        t, s = self.temporal_factor, self.spatial_factor
        b, c, frames, height, width = pixels.shape
        first = pixels[:, :, :1].expand(b, c, t, height, width)
        x = torch.cat([first, pixels[:, :, 1:]], dim=2)
        t_l = x.shape[2] // t
        x = x.reshape(b, c, t_l, t, height // s, s, width // s, s)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * t * s * s, t_l, height // s, width // s)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        t, s = self.temporal_factor, self.spatial_factor
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, T_l, h, w], "
                f"got {tuple(latents.shape)}"
            )
        b, _, t_l, h, w = latents.shape
        x = latents.reshape(b, 3, t, s, s, t_l, h, w)
        x = x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, 3, t_l, t, h * s, w * s)
        first = x[:, :, 0].mean(dim=2, keepdim=True)
        rest = x[:, :, 1:].flatten(2, 3)
        return torch.cat([first, rest], dim=2)


class WanVAECodec(LatentCodec):
    """The Wan VAE (`diffusers.AutoencoderKLWan`), frozen, with per-channel normalisation."""

    def __init__(self, vae) -> None:
        cfg = vae.config
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = int(cfg.z_dim)
        self.spatial_factor = int(cfg.scale_factor_spatial)
        self.temporal_factor = int(cfg.scale_factor_temporal)
        mean, std = cfg.latents_mean, cfg.latents_std
        sizes = {len(mean or ()), len(std or ())}
        if sizes != {self.latent_channels}:
            raise ValueError(
                f"the VAE config needs latents_mean and latents_std with {self.latent_channels} "
                "values each (one per latent channel)"
            )
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)

    @classmethod
    def from_directory(cls, path: str | Path) -> WanVAECodec:
        """Load `AutoencoderKLWan` from a local diffusers directory (never downloads)."""
        from diffusers import AutoencoderKLWan

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{path} is not a local AutoencoderKLWan directory (no config.json); download "
                "the Wan2.2 VAE (diffusers format) there first"
            )
        return cls(AutoencoderKLWan.from_pretrained(path, local_files_only=True))

    def to(self, device=None, dtype=None):
        self.vae.to(device=device, dtype=dtype)
        return self

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        self._check_pixels(pixels)
        p = self._param
        mu = self.vae.encode(pixels.to(p.device, p.dtype)).latent_dist.mode()
        mean, std = self._mean.to(mu.device), self._std.to(mu.device)
        return ((mu.float() - mean) / std).to(mu.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[1] != self.latent_channels:
            raise ValueError(
                f"latents must be [B, {self.latent_channels}, T_l, h, w], "
                f"got {tuple(latents.shape)}"
            )
        p = self._param
        z = latents.float() * self._std.to(latents.device) + self._mean.to(latents.device)
        pixels = self.vae.decode(z.to(p.device, p.dtype)).sample
        return pixels.clamp(-1.0, 1.0)
