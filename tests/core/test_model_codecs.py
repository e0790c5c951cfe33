"""Latent codecs: the exact pixel codec and the Wan VAE plumbing (tiny random VAE)."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLWan

from aimg.model.build import build_latent_codec
from aimg.model.codecs import PixelCodec, WanVAECodec
from aimg.model.config import CodecConfig, ModelConfig, TextConfig, TransformerConfig


def pixels(frames: int = 9, size: int = 16, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(2, 3, frames, size, size, generator=gen) * 2 - 1


def test_pixel_codec_round_trip_is_exact():
    codec = PixelCodec(spatial_factor=4, temporal_factor=4)
    x = pixels()
    z = codec.encode(x)
    assert z.shape == (2, 3 * 16 * 4, 3, 4, 4)
    assert torch.equal(codec.decode(z), x)


def test_pixel_codec_first_latent_frame_holds_pixel_frame_zero_only():
    codec = PixelCodec(spatial_factor=2, temporal_factor=4)
    x = pixels()
    changed = x.clone()
    changed[:, :, 1:5] += 1.0
    z, z_changed = codec.encode(x), codec.encode(changed)
    assert torch.equal(z[:, :, 0], z_changed[:, :, 0])
    assert not torch.equal(z[:, :, 1], z_changed[:, :, 1])
    assert torch.equal(z[:, :, 2], z_changed[:, :, 2])


def test_pixel_codec_channel_layout_is_colour_time_row_column():
    codec = PixelCodec(spatial_factor=2, temporal_factor=4)
    x = pixels()
    z = codec.encode(x)
    # latent frame 1 = pixel frames 1..4; channel ((c*4 + dt)*2 + dy)*2 + dx
    c, dt, dy, dx, i, j = 2, 3, 1, 0, 5, 6
    assert (
        z[0, ((c * 4 + dt) * 2 + dy) * 2 + dx, 1, i, j] == x[0, c, 1 + dt, 2 * i + dy, 2 * j + dx]
    )


def test_pixel_codec_with_temporal_factor_one_keeps_every_frame():
    codec = PixelCodec(spatial_factor=8, temporal_factor=1)
    x = pixels(frames=3)
    assert codec.encode(x).shape == (2, 192, 3, 2, 2)
    assert torch.equal(codec.decode(codec.encode(x)), x)


def test_latent_frames_follow_the_wan_rule():
    codec = PixelCodec(8, 4)
    assert codec.latent_frames(41) == 11
    assert codec.pixel_frames(11) == 41
    with pytest.raises(ValueError, match="1 \\+ k\\*4"):
        codec.latent_frames(10)


def test_pixel_codec_rejects_bad_sizes():
    codec = PixelCodec(8, 4)
    with pytest.raises(ValueError, match="multiple of spatial factor"):
        codec.encode(pixels(size=12))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        codec.encode(torch.zeros(1, 4, 9, 16, 16))


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    z_dim = 4
    vae = AutoencoderKLWan(
        base_dim=8,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[2.0, 0.5, 1.0, 4.0],
    )
    path = tmp_path_factory.mktemp("vae")
    vae.save_pretrained(path)
    return str(path)


def test_wan_vae_codec_loads_from_a_local_directory(tiny_vae_dir):
    codec = WanVAECodec.from_directory(tiny_vae_dir)
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (4, 8, 4)
    x = pixels(frames=5)
    z = codec.encode(x)
    assert z.shape == (2, 4, 2, 2, 2)
    out = codec.decode(z)
    assert out.shape == x.shape
    assert out.abs().max() <= 1.0


def test_wan_vae_codec_normalises_the_posterior_mode(tiny_vae_dir):
    codec = WanVAECodec.from_directory(tiny_vae_dir)
    x = pixels(frames=5)
    with torch.no_grad():
        mode = codec.vae.encode(x).latent_dist.mode()
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, -1, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(codec.encode(x), (mode - mean) / std)
    with torch.no_grad():
        expected = codec.vae.decode(mode).sample.clamp(-1, 1)
    torch.testing.assert_close(codec.decode(codec.encode(x)), expected, atol=1e-5, rtol=1e-5)


def test_wan_vae_codec_needs_a_local_directory(tmp_path):
    with pytest.raises(ValueError, match="not a local AutoencoderKLWan directory"):
        WanVAECodec.from_directory(tmp_path / "nowhere")


def _vae_preset(path: str, channels: int, spatial: int = 8) -> ModelConfig:
    return ModelConfig(
        transformer=TransformerConfig(
            num_layers=1, num_heads=2, head_dim=8, ffn_dim=8, text_dim=4, cam_pool=(2, 1, 1)
        ),
        codec=CodecConfig(
            kind="wan_vae", path=path, latent_channels=channels, spatial_factor=spatial
        ),
        text=TextConfig(kind="builtin", max_length=2),
        frames=5,
        height=32,
        width=32,
    )


def test_build_latent_codec_loads_the_preset_vae(tiny_vae_dir):
    codec = build_latent_codec(_vae_preset(tiny_vae_dir, 4))
    assert isinstance(codec, WanVAECodec) and codec.latent_channels == 4


def test_build_latent_codec_reports_a_vae_that_does_not_fit_the_preset(tiny_vae_dir):
    with pytest.raises(ValueError, match="4 latent channels but the preset says 48"):
        build_latent_codec(_vae_preset(tiny_vae_dir, 48))
    with pytest.raises(ValueError, match="scales by 8"):
        build_latent_codec(_vae_preset(tiny_vae_dir, 4, spatial=16))


def test_wan22_style_vae_latent_frame_zero_depends_on_pixel_frame_zero_only():
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8,
        decoder_base_dim=8,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
        is_residual=True,
        patch_size=2,
        in_channels=12,
        out_channels=12,
        scale_factor_spatial=16,
    )
    codec = WanVAECodec(vae)
    x = pixels(frames=9, size=32)
    whole, first = codec.encode(x), codec.encode(x[:, :, :1])
    assert codec.spatial_factor == 16 and whole.shape == (2, 4, 3, 2, 2)
    # Equal up to float rounding: the two encodes run convolutions of different shapes, whose
    # CPU kernels may sum in different orders (this was bitwise on some CPUs, not all).
    torch.testing.assert_close(first[:, :, 0], whole[:, :, 0], rtol=1e-5, atol=1e-6)
    later = x.clone()
    later[:, :, 1:] = -later[:, :, 1:]  # frames after the first must not matter to latent 0
    torch.testing.assert_close(codec.encode(later)[:, :, 0], whole[:, :, 0], rtol=1e-5, atol=1e-6)
