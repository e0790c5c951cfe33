"""The torch backend: the checkpoint's own modules, eagerly, on CPU or CUDA (the reference
every compiled backend is checked against)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from aimg.model.build import build_latent_codec, build_text_encoder, cast_model, precision_dtype
from aimg.model.checkpoint import load_checkpoint
from aimg.runtime.backends.base import PlanBackend


class TorchBackend(PlanBackend):
    """Runs `WorldActionModel`, the latent codec and the text encoder of a checkpoint."""

    name = "torch"

    def __init__(
        self,
        checkpoint: str | Path,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        batch_cfg: bool = False,
        threads: int | None = None,
    ) -> None:
        self.threads = threads
        self.pin_threads()
        checkpoint = Path(checkpoint)
        config = json.loads((checkpoint / "config.json").read_text())
        dtype = precision_dtype(precision)
        cfg_on = config["sampling"]["cfg_scale"] != 1.0
        super().__init__(config, torch.device(device), dtype, 2 if batch_cfg and cfg_on else 1)
        loaded = load_checkpoint(checkpoint, device=self.device)
        self.model = cast_model(loaded.model, dtype).eval()
        self.codec = build_latent_codec(self.model_config).to(self.device)
        self.text_encoder = build_text_encoder(self.model_config)
        self.checkpoint = checkpoint

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(pixels[:, :, None].to(self.device))[:, :, 0].float()

    @torch.no_grad()
    def encode_videos(self, videos: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(videos.to(self.device)).float()

    @torch.no_grad()
    def denoise(self, latents, timestep, text, cams) -> torch.Tensor:
        return self.model(latents, timestep, text, cams)

    @torch.no_grad()
    def decode_segments(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents.to(self.device)).float()

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(prompts)
