"""Factories: a `ModelConfig` -> the transformer, the latent codec and the text encoder."""

from __future__ import annotations

from aimg.model.config import ModelConfig
from aimg.model.transformer import WorldActionModel


def transformer_kwargs(cfg: ModelConfig) -> dict:
    """The `WorldActionModel` constructor arguments (its diffusers config) for a preset."""
    t = cfg.transformer
    return {
        "patch_size": tuple(t.patch_size),
        "num_attention_heads": t.num_heads,
        "attention_head_dim": t.head_dim,
        "in_channels": cfg.latent_channels,
        "out_channels": cfg.latent_channels,
        "text_dim": t.text_dim,
        "freq_dim": t.freq_dim,
        "ffn_dim": t.ffn_dim,
        "num_layers": t.num_layers,
        "eps": t.eps,
        "rope_max_seq_len": t.rope_max_seq_len,
        "cam_channels": cfg.cam_channels,
        "cam_pool": tuple(t.cam_pool),
        "timestep_mode": t.timestep_mode,
        "prediction": t.prediction,
        "min_sigma": t.min_sigma,
        "sigma_data": t.sigma_data,
    }


def build_model(cfg: ModelConfig, init: bool = True) -> WorldActionModel:
    """A WorldActionModel for `cfg`; `init` applies Wan's from-scratch initialisation.

    Build inside `with torch.device("meta"):` to get shapes without allocating memory.
    """
    model = WorldActionModel(**transformer_kwargs(cfg))
    if init and not next(model.parameters()).is_meta:
        model.init_weights()
    return model


def build_latent_codec(cfg: ModelConfig):
    """The latent codec of `cfg` (pixel codec, or the Wan VAE from its local directory)."""
    from aimg.model.codecs import PixelCodec, WanVAECodec

    c = cfg.codec
    if c.kind == "pixel":
        return PixelCodec(c.spatial_factor, c.temporal_factor)
    codec = WanVAECodec.from_directory(c.path)
    if codec.latent_channels != c.latent_channels:
        raise ValueError(
            f"the VAE in {c.path} has {codec.latent_channels} latent channels but the preset says "
            f"{c.latent_channels}; fix `model.codec.latent_channels` or the path"
        )
    if (codec.spatial_factor, codec.temporal_factor) != (c.spatial_factor, c.temporal_factor):
        raise ValueError(
            f"the VAE in {c.path} scales by {codec.spatial_factor} (space) and "
            f"{codec.temporal_factor} (time) but the preset says {c.spatial_factor} and "
            f"{c.temporal_factor}"
        )
    return codec


def build_text_encoder(cfg: ModelConfig):
    """The text encoder of `cfg`, producing [B, max_length, text_dim] embeddings."""
    from aimg.model.text import HashTextEncoder, UMT5TextEncoder

    t = cfg.text
    if t.kind == "builtin":
        return HashTextEncoder(dim=cfg.transformer.text_dim, max_length=t.max_length)
    encoder = UMT5TextEncoder.from_directory(t.path, t.max_length, t.tokenizer_path)
    if encoder.dim != cfg.transformer.text_dim:
        raise ValueError(
            f"the umT5 encoder in {t.path} outputs {encoder.dim} features but the transformer's "
            f"text_dim is {cfg.transformer.text_dim}"
        )
    return encoder


def precision_dtype(precision: str):
    """torch dtype of a precision name: fp32, fp16, bf16."""
    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in dtypes:
        raise ValueError(f"precision must be one of {list(dtypes)}, got {precision!r}")
    return dtypes[precision]


def cast_model(model: WorldActionModel, dtype) -> WorldActionModel:
    """Cast parameters to `dtype` in place, keeping those diffusers keeps in float32 (time
    embedder, modulation tables, norms) in float32, as `from_pretrained(torch_dtype=...)`
    does; the forward upcasts where it needs to. RoPE tables are rebuilt exactly."""
    import torch

    keep = set(model._keep_in_fp32_modules or ()) if dtype != torch.float32 else set()
    for name, param in model.named_parameters():
        target = torch.float32 if keep & set(name.split(".")) else dtype
        param.data = param.data.to(target)
    model.rebuild_rope(next(model.parameters()).device)
    return model
