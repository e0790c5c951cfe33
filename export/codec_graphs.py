"""Static-shape torch modules of the latent codec, for ONNX export (opset 20) and TensorRT.

Three graphs per codec, keyed as in `aimg.artifacts.GRAPH_NAMES`:

- "frame_encoder" `FrameEncoder`: pixels [N, 3, H, W] in [-1, 1] -> latents [N, C, h, w],
  one frame per view, as `codec.encode(pixels[:, :, None])[:, :, 0]`.
- "video_encoder" `VideoEncoder`: video [N, 3, T, H, W] -> latents [N, C, T_l, h, w], as
  `codec.encode(video)` (the Plücker camera videos).
- "action_decoder" `SegmentDecoder`: latents [N, C, T_l, h, w] -> pixels [N, 3, T, H, W] in
  [-1, 1], as `codec.decode(latents)`.

T, T_l, H, W are fixed when a module is built; h = H/s, w = W/s, T_l = 1 + (T-1)/t. For the Wan
VAE the modules run the VAE's causal frame loop themselves, unrolled for the fixed length, over
the VAE's own encoder/decoder submodules, with a cache list local to one call (never the VAE's
`_feat_map` state) and without diffusers' tiling or slicing. Nearest-exact 2x upsampling, which
the exporter lowers to GatherND with index tensors, runs as the identical Unsqueeze/Expand/
Reshape during a module's forward. The exported graphs hold only standard ONNX ops, float32
tensors and no ScatterND.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from aimg.model.codecs import LatentCodec, WanVAECodec

GRAPH_KEYS = ("frame_encoder", "video_encoder", "action_decoder")


def _upsample2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x upsampling of x [B, C, H, W] -> [B, C, 2H, 2W] by Expand and Reshape."""
    b, c, h, w = x.shape
    x = x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2)
    return x.reshape(b, c, 2 * h, 2 * w)


def _wan():
    """diffusers' Wan VAE module, imported on first use (only the Wan codec needs it)."""
    from diffusers.models.autoencoders import autoencoder_kl_wan

    return autoencoder_kl_wan


@contextmanager
def _exact_upsampling(module: nn.Module) -> Iterator[None]:
    """Run the WanUpsample layers under `module` as `_upsample2x` (same numbers, no GatherND)."""
    layers = [
        m
        for m in module.modules()
        if isinstance(m, _wan().WanUpsample)
        and m.mode in ("nearest", "nearest-exact")
        and m.size is None
        and m.scale_factor in (2.0, (2.0, 2.0))
    ]
    for layer in layers:
        layer.forward = _upsample2x  # instance attribute: shadows the class's forward
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


class _CodecGraph(nn.Module):
    """Shared part of the three graphs: the codec's encode/decode as export-friendly torch."""

    input_names: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()

    def __init__(self, codec: LatentCodec) -> None:
        super().__init__()
        self.codec = codec  # not an nn.Module: a plain attribute
        self.vae = codec.vae if isinstance(codec, WanVAECodec) else None
        if self.vae is not None:
            self.register_buffer("mean", codec._mean.float().clone(), persistent=False)
            self.register_buffer("std", codec._std.float().clone(), persistent=False)
            causal = _wan().WanCausalConv3d  # one cache slot per causal conv, as diffusers
            self._cache_sizes = {
                part: sum(isinstance(m, causal) for m in getattr(self.vae, part).modules())
                for part in ("encoder", "decoder")
            }
        self.eval()

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [N, 3, T, H, W] in [-1, 1] -> normalised latents [N, C, T_l, h, w] float32."""
        if self.vae is None:
            return self.codec.encode(video).float()
        self.codec._check_pixels(video)
        vae, t = self.vae, self.codec.temporal_factor
        x = video.to(next(vae.parameters()).dtype)
        if vae.config.patch_size is not None:
            x = _wan().patchify(x, patch_size=vae.config.patch_size)
        cache: list = [None] * self._cache_sizes["encoder"]
        chunks = [x[:, :, :1]] + [
            x[:, :, 1 + t * i : 1 + t * (i + 1)] for i in range((x.shape[2] - 1) // t)
        ]
        out = torch.cat([vae.encoder(c, feat_cache=cache, feat_idx=[0]) for c in chunks], dim=2)
        mu = vae.quant_conv(out)[:, : self.codec.latent_channels]
        return (mu.float() - self.mean) / self.std

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [N, C, T_l, h, w] -> pixels [N, 3, T, H, W] float32 clamped to [-1, 1]."""
        if self.vae is None:
            return self.codec.decode(latents).float()
        c = self.codec.latent_channels
        if latents.ndim != 5 or latents.shape[1] != c:
            raise ValueError(f"latents must be [N, {c}, T_l, h, w], got {tuple(latents.shape)}")
        vae = self.vae
        z = latents.float() * self.std + self.mean
        x = vae.post_quant_conv(z.to(next(vae.parameters()).dtype))
        cache: list = [None] * self._cache_sizes["decoder"]
        with _exact_upsampling(vae.decoder):
            frames = [
                vae.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
                for i in range(x.shape[2])
            ]
        out = torch.cat(frames, dim=2)
        if vae.config.patch_size is not None:
            out = _wan().unpatchify(out, patch_size=vae.config.patch_size)
        return out.float().clamp(-1.0, 1.0)


class FrameEncoder(_CodecGraph):
    """Encode one frame per view: pixels [N, 3, H, W] in [-1, 1] -> latents [N, C, h, w]."""

    input_names = ("pixels",)
    output_names = ("latents",)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.ndim != 4:
            raise ValueError(f"pixels must be [N, 3, H, W], got {tuple(pixels.shape)}")
        return self._encode(pixels[:, :, None])[:, :, 0]

    def example_inputs(
        self, views: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor]:
        """Random pixels [views, 3, height, width] in [-1, 1], float32."""
        return (torch.rand(views, 3, height, width, generator=generator) * 2 - 1,)


class VideoEncoder(_CodecGraph):
    """Encode a fixed-length video: [N, 3, T, H, W] in [-1, 1] -> latents [N, C, T_l, h, w]."""

    input_names = ("video",)
    output_names = ("latents",)

    def __init__(self, codec: LatentCodec, num_frames: int) -> None:
        super().__init__(codec)
        self.num_frames = num_frames
        self.latent_frames = codec.latent_frames(num_frames)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.ndim != 5 or video.shape[2] != self.num_frames:
            raise ValueError(
                f"video must be [N, 3, {self.num_frames}, H, W], got {tuple(video.shape)}"
            )
        return self._encode(video)

    def example_inputs(
        self, views: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor]:
        """Random video [views, 3, T, height, width] in [-1, 1], float32."""
        shape = (views, 3, self.num_frames, height, width)
        return (torch.rand(shape, generator=generator) * 2 - 1,)


class SegmentDecoder(_CodecGraph):
    """Decode a fixed number of latent frames: [N, C, T_l, h, w] -> pixels [N, 3, T, H, W]."""

    input_names = ("latents",)
    output_names = ("pixels",)

    def __init__(self, codec: LatentCodec, latent_frames: int) -> None:
        super().__init__(codec)
        if latent_frames < 1:
            raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
        self.latent_frames = latent_frames
        self.num_frames = codec.pixel_frames(latent_frames)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 5 or latents.shape[2] != self.latent_frames:
            raise ValueError(
                f"latents must be [N, C, {self.latent_frames}, h, w], got {tuple(latents.shape)}"
            )
        return self._decode(latents)

    def example_inputs(
        self, views: int, height: int, width: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor]:
        """Standard-normal latents [views, C, T_l, height/s, width/s], float32 (H, W in pixels)."""
        s = self.codec.spatial_factor
        if height % s or width % s:
            raise ValueError(f"image {height}x{width} is not a multiple of spatial factor {s}")
        c = self.codec.latent_channels
        shape = (views, c, self.latent_frames, height // s, width // s)
        return (torch.randn(shape, generator=generator),)


def codec_modules(codec: LatentCodec, num_frames: int, latent_frames: int) -> dict[str, nn.Module]:
    """The three codec graphs keyed "frame_encoder", "video_encoder", "action_decoder"."""
    return {
        "frame_encoder": FrameEncoder(codec),
        "video_encoder": VideoEncoder(codec, num_frames),
        "action_decoder": SegmentDecoder(codec, latent_frames),
    }


def codec_example_inputs(
    modules: dict[str, nn.Module], views: int, height: int, width: int, seed: int = 0
) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example export inputs per module of `codec_modules`, for N = views and an H x W image."""
    generator = torch.Generator().manual_seed(seed)
    return {k: m.example_inputs(views, height, width, generator) for k, m in modules.items()}
