"""Wan attention and camera pooling written so that they export to plain ONNX ops.

diffusers' `WanAttnProcessor` applies RoPE with strided slice assignment (`out[..., 0::2] =
...`), which the ONNX exporter turns into ScatterND nodes, and its RMSNorm is `aten::rms_norm`,
which becomes `RMSNormalization` only from opset 23 (TensorRT 10.3 on Jetson parses up to opset
20). `WanAttentionProcessor` computes the same numbers with RoPE as stack-and-flatten and, in
`decomposed` mode (set by the exporter for opset < 23), RMSNorm and attention as elementary ops
(mean of squares, rsqrt; scaled MatMul, Softmax, MatMul), so the graph holds no op that a
TensorRT 10.3 parser lacks. `CameraPool` replaces `nn.AdaptiveAvgPool3d`, which has no ONNX
export, with exact box averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMSNorm over the last axis in float32 as elementary ops: x / sqrt(mean(x²) + eps) * w."""
    xf = x.float()
    y = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.float()
    return y.to(x.dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of x [B, S, H, d] by the RoPE angles.

    cos, sin: [1, S, 1, d] with each angle repeated for both members of its pair (diffusers'
    table layout). Same result as diffusers' slice assignment, without ScatterND.
    """
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    rotated = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return rotated.type_as(x)


def attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, decomposed: bool
) -> torch.Tensor:
    """Full bidirectional attention of [B, S, H, d] tensors -> [B, S, H, d].

    decomposed: q·kᵀ with both scaled by d^-1/4, Softmax, ·v, the pattern TensorRT fuses into
    its attention kernels; otherwise torch's fused scaled_dot_product_attention.
    """
    q, k, v = (t.transpose(1, 2) for t in (query, key, value))
    if decomposed:
        scale = q.shape[-1] ** -0.25
        scores = (q * scale) @ (k * scale).transpose(-1, -2)
        out = scores.softmax(dim=-1) @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2)


class WanAttentionProcessor:
    """Processor for diffusers' `WanAttention` (self and text cross-attention, no image KV).

    Same computation as diffusers' `WanAttnProcessor`: q/k/v projections, RMSNorm across
    heads on q and k, RoPE on self-attention, attention, output projection.
    """

    def __init__(self, decomposed: bool = False) -> None:
        self.decomposed = decomposed

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if attention_mask is not None or attn.add_k_proj is not None:
            raise NotImplementedError("aimg's Wan attention takes no mask and no image context")
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        if self.decomposed:
            query = rms_norm(query, attn.norm_q.weight, attn.norm_q.eps)
            key = rms_norm(key, attn.norm_k.weight, attn.norm_k.eps)
        else:
            query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
        if rotary_emb is not None:
            query = apply_rotary(query, *rotary_emb)
            key = apply_rotary(key, *rotary_emb)
        out = attention(query, key, value, self.decomposed).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def pooling_matrix(size_in: int, size_out: int) -> torch.Tensor:
    """[size_out, size_in] float64 rows that average adaptive-pooling windows (PyTorch's
    window rule: start = floor(i·n/m), end = ceil((i+1)·n/m))."""
    matrix = torch.zeros(size_out, size_in, dtype=torch.float64)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


class CameraPool(nn.Module):
    """AdaptiveAvgPool3d over (C_cam, h, w) of [B, F, C_cam, h, w], then flatten -> [B, F, P].

    Box averages are separable, so each axis is pooled on its own: a reshape-and-mean when the
    size divides (every preset), else a MatMul with `pooling_matrix`. Both export to ONNX.
    """

    def __init__(self, output_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.output_size = tuple(int(s) for s in output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for axis, size_out in zip((2, 3, 4), self.output_size, strict=True):
            x = self._pool_axis(x, axis, size_out)
        return x.flatten(2)

    @staticmethod
    def _pool_axis(x: torch.Tensor, axis: int, size_out: int) -> torch.Tensor:
        size_in = x.shape[axis]
        if size_in == size_out:
            return x
        if size_in % size_out == 0:
            shape = (*x.shape[:axis], size_out, size_in // size_out, *x.shape[axis + 1 :])
            return x.reshape(shape).mean(dim=axis + 1)
        matrix = pooling_matrix(size_in, size_out).to(device=x.device, dtype=x.dtype)
        return (x.movedim(axis, -1) @ matrix.T).movedim(-1, axis)
