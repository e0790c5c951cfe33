"""The world action model: Wan DiT + camera branch, codecs, text encoders, sampler, checkpoints.

Modules: `config` (the `model:` / `sampling:` preset sections), `transformer`
(`WorldActionModel`), `packing` (views and modalities along latent frames, task masks),
`codecs` (Wan VAE and the exact pixel codec), `text` (umT5 and the built-in encoder),
`camera_latents` (Plücker rays -> latents, cached), `conditioning` (clean latents per task),
`schedule` and `sampler` (flow matching), `checkpoint` (safetensors + config.json), `official`
(the reference checkpoint converter) and `bench` (JSON timings).
Imports only `aimg` core modules, torch, diffusers and (lazily) transformers.
"""

from aimg.model.build import build_latent_codec, build_model, build_text_encoder
from aimg.model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from aimg.model.config import (
    CodecConfig,
    ModelConfig,
    SamplingConfig,
    TextConfig,
    TransformerConfig,
    load_preset,
)
from aimg.model.packing import (
    Task,
    conditioning_mask,
    pack_camera_latents,
    pack_latents,
    unpack_latents,
)
from aimg.model.sampler import SampleOutput, decode_segments, sample
from aimg.model.transformer import WorldActionModel

__all__ = [
    "Checkpoint",
    "CodecConfig",
    "ModelConfig",
    "SampleOutput",
    "SamplingConfig",
    "Task",
    "TextConfig",
    "TransformerConfig",
    "WorldActionModel",
    "build_latent_codec",
    "build_model",
    "build_text_encoder",
    "conditioning_mask",
    "decode_segments",
    "load_checkpoint",
    "load_preset",
    "pack_camera_latents",
    "pack_latents",
    "sample",
    "save_checkpoint",
    "unpack_latents",
]
