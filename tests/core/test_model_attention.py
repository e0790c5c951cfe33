"""Export-friendly attention and camera pooling compute what diffusers and torch compute."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor

from aimg.model.attention import CameraPool, WanAttentionProcessor, apply_rotary, rms_norm


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [((384, 8, 8), (48, 4, 4)), ((96, 32, 32), (48, 16, 16)), ((10, 7, 5), (4, 3, 2))],
)
def test_camera_pool_equals_adaptive_average_pooling(size_in, size_out):
    x = _randn(2, 3, *size_in)
    expected = torch.nn.AdaptiveAvgPool3d(size_out)(x).flatten(2)
    torch.testing.assert_close(CameraPool(size_out)(x), expected, atol=1e-6, rtol=1e-5)


def test_rotary_without_slice_assignment_equals_the_interleaved_rotation():
    x = _randn(1, 6, 2, 8)
    angles = _randn(1, 6, 1, 4, seed=1)
    cos = angles.cos().repeat_interleave(2, dim=-1)
    sin = angles.sin().repeat_interleave(2, dim=-1)
    expected = torch.empty_like(x)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    expected[..., 0::2] = x1 * angles.cos() - x2 * angles.sin()
    expected[..., 1::2] = x1 * angles.sin() + x2 * angles.cos()
    torch.testing.assert_close(apply_rotary(x, cos, sin), expected)


def test_decomposed_rms_norm_equals_torch_rms_norm():
    norm = torch.nn.RMSNorm(16, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    x = _randn(3, 5, 16)
    torch.testing.assert_close(rms_norm(x, norm.weight, 1e-6), norm(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("decomposed", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_processor_matches_diffusers_wan_attention(decomposed, cross):
    torch.manual_seed(0)
    attn = WanAttention(dim=32, heads=4, dim_head=8, eps=1e-6, processor=WanAttnProcessor())
    for norm in (attn.norm_q, attn.norm_k):
        torch.nn.init.normal_(norm.weight, 1.0, 0.2)
    hidden = _randn(2, 12, 32, seed=1)
    context = _randn(2, 5, 32, seed=2) if cross else None
    rotary = None
    if not cross:
        angles = _randn(1, 12, 1, 4, seed=3)
        rotary = (angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1))
    expected = attn(hidden, context, None, rotary)
    attn.set_processor(WanAttentionProcessor(decomposed=decomposed))
    torch.testing.assert_close(attn(hidden, context, None, rotary), expected, atol=2e-6, rtol=1e-5)
