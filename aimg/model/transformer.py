"""`WorldActionModel`: diffusers' Wan DiT with the reference camera branch in every block.

Parameter names equal diffusers' `WanTransformer3DModel` (so a diffusers Wan2.2 transformer
state dict loads directly, camera modules then stay at their initial values), plus per block
`cam_encoder.2` (Linear prod(cam_pool) -> D, zero-initialised) and `projector` (Linear D -> D,
identity-initialised): at initialisation the model computes exactly the base transformer
(docs/reference.md §3.4). Block internals (FP32 LayerNorms, modulation order, RoPE, head
modulation) are diffusers' own modules; the block forward is ours, to inject the camera vector,
and so is the attention processor (`aimg.model.attention`), so that the model exports to ONNX.
"""

from __future__ import annotations

import math

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed,
    WanTimeTextImageEmbedding,
    WanTransformerBlock,
)
from torch import nn

from aimg.model.attention import CameraPool, WanAttentionProcessor
from aimg.model.schedule import NUM_TRAIN_TIMESTEPS


class CameraWanBlock(WanTransformerBlock):
    """A Wan block whose self-attention sees the camera vector of each token's latent frame.

    attn1 input = modulate(norm1(x)) + cam; x += gate_msa * projector(attn1(...))
    (docs/reference.md §3.4).
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        cam_pool: tuple[int, int, int],
        eps: float = 1e-6,
    ) -> None:
        super().__init__(dim, ffn_dim, num_heads, "rms_norm_across_heads", True, eps, None)
        self.attn1.set_processor(WanAttentionProcessor())
        self.attn2.set_processor(WanAttentionProcessor())
        self.cam_encoder = nn.Sequential(
            nn.AdaptiveAvgPool3d(tuple(cam_pool)),
            nn.Flatten(start_dim=2),
            nn.Linear(math.prod(cam_pool), dim),
        )
        self.projector = nn.Linear(dim, dim)
        self.reset_camera_branch()

    @torch.no_grad()
    def reset_camera_branch(self) -> None:
        """Zero camera Linear and identity projector: the block equals the plain Wan block."""
        linear = self.cam_encoder[2]
        if linear.weight.is_meta:
            return
        linear.weight.zero_()
        linear.bias.zero_()
        self.projector.weight.copy_(torch.eye(self.projector.weight.shape[0]))
        self.projector.bias.zero_()

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        camera_features: torch.Tensor,
        tokens_per_frame: int,
    ) -> torch.Tensor:
        """hidden_states [B, S, D] in "(f h w)" order; temb [B, 6, D] (one timestep per
        sample) or [B, F, 6, D] (one per latent frame); camera_features [B, F, P]."""
        batch, seq, dim = hidden_states.shape
        frames = seq // tokens_per_frame
        if temb.ndim == 4:
            table = self.scale_shift_table.unsqueeze(0) + temb.float()
            mod = [m.unsqueeze(2) for m in table.unbind(2)]
        else:
            table = self.scale_shift_table + temb.float()
            mod = [m[:, None, None] for m in table.unbind(1)]
        shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = mod

        def by_frame(x: torch.Tensor) -> torch.Tensor:
            return x.view(batch, frames, tokens_per_frame, dim)

        def by_token(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, seq, dim)

        cam = self.cam_encoder[2](camera_features)[:, :, None]
        norm_x = by_frame(self.norm1(hidden_states.float())) * (1 + scale_msa) + shift_msa
        norm_x = norm_x.type_as(hidden_states)
        attn_input = by_token(norm_x + cam.type_as(norm_x))
        attn_output = by_frame(self.projector(self.attn1(attn_input, None, None, rotary_emb)))
        residual = by_frame(hidden_states.float()) + attn_output * gate_msa
        hidden_states = by_token(residual).type_as(hidden_states)

        norm_x = self.norm2(hidden_states.float()).type_as(hidden_states)
        hidden_states = hidden_states + self.attn2(norm_x, encoder_hidden_states, None, None)

        norm_x = by_frame(self.norm3(hidden_states.float())) * (1 + c_scale_msa) + c_shift_msa
        ff_output = by_frame(self.ffn(by_token(norm_x.type_as(hidden_states))))
        residual = by_frame(hidden_states.float()) + ff_output.float() * c_gate_msa
        return by_token(residual).type_as(hidden_states)


class WorldActionModel(ModelMixin, ConfigMixin):
    """Velocity predictor over packed multi-view video + action latents (docs/reference.md §4).

    `prediction="velocity"` (the reference) regresses noise - x0 directly. `prediction="sample"`
    makes the network output the clean latents x̂0 and returns the velocity (x_t - x̂0) / σ,
    σ = t / 1000 clamped below by `min_sigma`. Small models on the pixel codec need this: a token
    holds thousands of pixel values but only D channels, so a network cannot carry the noise
    through to a velocity, while the clean action images it must draw are smooth and
    low-dimensional. The output is a velocity either way, so sampler and loss are unchanged.
    `sigma_data > 0` (sample prediction only) adds the EDM skip: x̂0 = c_skip(σ) x_t +
    c_out(σ) F with c_skip = (1-σ) s² / ((1-σ)² s² + σ²), c_out = σ s / sqrt((1-σ)² s² + σ²),
    s = sigma_data. At low noise the network then only corrects x_t instead of redrawing it
    through its narrow width, which is what keeps the final sampling steps sharp.

    forward(hidden_states [B, C, F, h, w], timestep [B] or [B, F], encoder_hidden_states
    [B, L, text_dim], camera_latents [B, F, cam_channels, h_cam, w_cam]) -> [B, C, F, h, w].
    A scalar timestep per sample is the reference behaviour (conditioning frames get the global
    t too); [B, F] gives every latent frame its own t (our per-token mode).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["CameraWanBlock"]
    _keep_in_fp32_modules = [
        "rope",
        "time_embedder",
        "scale_shift_table",
        "norm1",
        "norm2",
        "norm3",
    ]
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_attention_heads: int = 24,
        attention_head_dim: int = 128,
        in_channels: int = 48,
        out_channels: int = 48,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 14336,
        num_layers: int = 30,
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        cam_channels: int = 96,
        cam_pool: tuple[int, int, int] = (48, 16, 16),
        timestep_mode: str = "scalar",
        prediction: str = "velocity",
        min_sigma: float = 0.05,
        sigma_data: float = 0.0,
    ) -> None:
        super().__init__()
        if timestep_mode not in ("scalar", "per_token"):
            raise ValueError(f"timestep_mode must be 'scalar' or 'per_token', got {timestep_mode}")
        if prediction not in ("velocity", "sample"):
            raise ValueError(f"prediction must be 'velocity' or 'sample', got {prediction}")
        if sigma_data < 0 or (sigma_data > 0 and prediction != "sample"):
            raise ValueError(
                f"sigma_data must be 0 (no skip) or > 0 with prediction='sample', got "
                f"{sigma_data} with prediction={prediction!r}"
            )
        dim = num_attention_heads * attention_head_dim
        patch_size = tuple(patch_size)
        cam_pool = tuple(cam_pool)
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(
            dim=dim, time_freq_dim=freq_dim, time_proj_dim=dim * 6, text_embed_dim=text_dim
        )
        self.camera_pool = CameraPool(cam_pool)
        self.blocks = nn.ModuleList(
            CameraWanBlock(dim, ffn_dim, num_attention_heads, cam_pool, eps)
            for _ in range(num_layers)
        )
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False

    @torch.no_grad()
    def init_weights(self) -> None:
        """Wan's from-scratch initialisation (Xavier linears, zero biases and output head).

        Used for models trained from scratch; camera branches are reset to their no-op values.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        nn.init.zeros_(self.patch_embedding.bias)
        embedder = self.condition_embedder
        for linear in (embedder.text_embedder.linear_1, embedder.text_embedder.linear_2):
            nn.init.normal_(linear.weight, std=0.02)
        for linear in (embedder.time_embedder.linear_1, embedder.time_embedder.linear_2):
            nn.init.normal_(linear.weight, std=0.02)
        nn.init.zeros_(self.proj_out.weight)
        self.reset_camera_branch()

    def reset_camera_branch(self) -> None:
        """Put every block's camera branch back to its initial (no-op) values."""
        for block in self.blocks:
            block.reset_camera_branch()

    def rebuild_rope(self, device: torch.device | str = "cpu") -> None:
        """Recompute the RoPE tables (non-persistent buffers), e.g. after building on `meta`."""
        cfg = self.config
        with torch.device(device):
            self.rope = WanRotaryPosEmbed(
                cfg.attention_head_dim, tuple(cfg.patch_size), cfg.rope_max_seq_len
            )

    @property
    def dim(self) -> int:
        return self.config.num_attention_heads * self.config.attention_head_dim

    def set_decomposed_attention(self, decomposed: bool) -> None:
        """RMSNorm and attention as elementary ops (ONNX below opset 23) or fused torch ops."""
        for block in self.blocks:
            for attn in (block.attn1, block.attn2):
                attn.processor.decomposed = decomposed

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        camera_latents: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the flow velocity (noise - x0) of every latent, [B, C, F, h, w]."""
        noisy = hidden_states
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.config.patch_size
        post_f, post_h, post_w = frames // p_t, height // p_h, width // p_w
        tokens_per_frame = post_h * post_w
        if camera_latents.ndim != 5 or camera_latents.shape[:2] != (batch, frames):
            raise ValueError(
                f"camera_latents must be [B={batch}, F={frames}, C_cam, h, w], "
                f"got {tuple(camera_latents.shape)}"
            )

        rope_dtype = torch.float64 if hidden_states.dtype == torch.float64 else torch.float32
        rotary_emb = tuple(r.to(rope_dtype) for r in self.rope(hidden_states))
        hidden_states = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()

        if timestep.ndim == 2:
            if timestep.shape != (batch, frames):
                raise ValueError(
                    f"per-token timestep must be [B={batch}, F={frames}], "
                    f"got {tuple(timestep.shape)}"
                )
            # Tokens of one latent frame share its timestep: embed once per frame.
            temb, timestep_proj, context, _ = self.condition_embedder(
                timestep.flatten(), encoder_hidden_states, None, timestep_seq_len=frames
            )
            timestep_proj = timestep_proj.unflatten(2, (6, -1))
        else:
            timestep = timestep.expand(batch) if timestep.numel() == 1 else timestep
            temb, timestep_proj, context, _ = self.condition_embedder(
                timestep, encoder_hidden_states, None
            )
            timestep_proj = timestep_proj.unflatten(1, (6, -1))

        camera_features = self.camera_pool(camera_latents.to(hidden_states.dtype))
        for block in self.blocks:
            args = (hidden_states, context, timestep_proj, rotary_emb, camera_features)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, *args, tokens_per_frame)
            else:
                hidden_states = block(*args, tokens_per_frame)

        if temb.ndim == 3:
            table = self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)
            shift, scale = (m.unsqueeze(2) for m in table.unbind(2))
        else:
            table = self.scale_shift_table + temb.unsqueeze(1)
            shift, scale = (m[:, None, None] for m in table.unbind(1))
        dim = hidden_states.shape[-1]
        normed = self.norm_out(hidden_states.float()).view(batch, post_f, tokens_per_frame, dim)
        hidden_states = (normed * (1 + scale) + shift).flatten(1, 2).type_as(hidden_states)
        hidden_states = self.proj_out(hidden_states)
        hidden_states = hidden_states.reshape(batch, post_f, post_h, post_w, p_t, p_h, p_w, -1)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)
        output = hidden_states.flatten(6, 7).flatten(4, 5).flatten(2, 3)
        if self.config.prediction == "sample":
            return self._velocity_from_sample(noisy, output, timestep)
        return output

    def _velocity_from_sample(
        self, noisy: torch.Tensor, sample: torch.Tensor, timestep: torch.Tensor
    ) -> torch.Tensor:
        """v = (x_t - x̂0) / σ in float32, σ = t / 1000 per sample ([B]) or per frame ([B, F])."""
        sigma = timestep.float().reshape(noisy.shape[0], -1) / NUM_TRAIN_TIMESTEPS
        sigma = sigma[:, None, :, None, None].clamp(min=self.config.min_sigma)
        x_t, x0 = noisy.float(), sample.float()
        s = self.config.sigma_data
        if s > 0:
            signal = 1.0 - sigma
            norm = signal**2 * s**2 + sigma**2
            x0 = (signal * s**2 / norm) * x_t + (sigma * s / norm.sqrt()) * x0
        return ((x_t - x0) / sigma).to(sample.dtype)
