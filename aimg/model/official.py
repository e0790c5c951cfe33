"""Convert the reference ActionImages checkpoint (original Wan key names) into ours.

The reference `.ckpt` is `torch.save(dit.state_dict())`; it is read here, and only here, with
`torch.load(weights_only=True)`. Keys are renamed with the docs/reference.md §7 table; anything
unexpected or missing is an error that lists the keys, so a wrong file never loads half-way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from aimg.model.config import ModelConfig

# Reference (Wan/DiffSynth) name -> diffusers name, top level.
TOP_LEVEL_KEYS: dict[str, str] = {
    "patch_embedding.weight": "patch_embedding.weight",
    "patch_embedding.bias": "patch_embedding.bias",
    "text_embedding.0.weight": "condition_embedder.text_embedder.linear_1.weight",
    "text_embedding.0.bias": "condition_embedder.text_embedder.linear_1.bias",
    "text_embedding.2.weight": "condition_embedder.text_embedder.linear_2.weight",
    "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
    "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight",
    "time_embedding.0.bias": "condition_embedder.time_embedder.linear_1.bias",
    "time_embedding.2.weight": "condition_embedder.time_embedder.linear_2.weight",
    "time_embedding.2.bias": "condition_embedder.time_embedder.linear_2.bias",
    "time_projection.1.weight": "condition_embedder.time_proj.weight",
    "time_projection.1.bias": "condition_embedder.time_proj.bias",
    "head.head.weight": "proj_out.weight",
    "head.head.bias": "proj_out.bias",
    "head.modulation": "scale_shift_table",
}

# Per block (prefix `blocks.N.` on both sides).
BLOCK_KEYS: dict[str, str] = {
    **{
        f"{ref}_attn.{p}.{leaf}": f"{ours}.to_{p}.{leaf}"
        for ref, ours in (("self", "attn1"), ("cross", "attn2"))
        for p in ("q", "k", "v")
        for leaf in ("weight", "bias")
    },
    **{
        f"{ref}_attn.o.{leaf}": f"{ours}.to_out.0.{leaf}"
        for ref, ours in (("self", "attn1"), ("cross", "attn2"))
        for leaf in ("weight", "bias")
    },
    **{
        f"{ref}_attn.norm_{p}.weight": f"{ours}.norm_{p}.weight"
        for ref, ours in (("self", "attn1"), ("cross", "attn2"))
        for p in ("q", "k")
    },
    "norm3.weight": "norm2.weight",
    "norm3.bias": "norm2.bias",
    "ffn.0.weight": "ffn.net.0.proj.weight",
    "ffn.0.bias": "ffn.net.0.proj.bias",
    "ffn.2.weight": "ffn.net.2.weight",
    "ffn.2.bias": "ffn.net.2.bias",
    "modulation": "scale_shift_table",
    "cam_encoder.2.weight": "cam_encoder.2.weight",
    "cam_encoder.2.bias": "cam_encoder.2.bias",
    "projector.weight": "projector.weight",
    "projector.bias": "projector.bias",
}

_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


class CheckpointKeyError(ValueError):
    """A state dict does not have exactly the expected keys or shapes."""


def reference_key_map(num_layers: int) -> dict[str, str]:
    """The full docs/reference.md §7 table for `num_layers` blocks: reference key -> our key."""
    mapping = dict(TOP_LEVEL_KEYS)
    for n in range(num_layers):
        for ref, ours in BLOCK_KEYS.items():
            mapping[f"blocks.{n}.{ref}"] = f"blocks.{n}.{ours}"
    return mapping


def count_blocks(keys: object) -> int:
    """Number of blocks in a state dict: 1 + the largest `blocks.N.` index (0 if none)."""
    indices = [int(m.group(1)) for k in keys if (m := _BLOCK_RE.match(str(k)))]
    return max(indices) + 1 if indices else 0


def _check_keys(given: set[str], expected: set[str], what: str) -> None:
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s), e.g. {unexpected[:5]}")
        raise CheckpointKeyError(
            f"{what}: {'; '.join(parts)}. Is this an ActionImages DiT checkpoint "
            "(docs/reference.md §7) with the camera branch (cam_encoder, projector) in every block?"
        )


def convert_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """Reference (Wan names) -> our (diffusers names) state dict; tensors are not copied."""
    num_layers = count_blocks(state_dict) if num_layers is None else num_layers
    mapping = reference_key_map(num_layers)
    _check_keys(set(state_dict), set(mapping), "reference checkpoint")
    return {mapping[k]: v for k, v in state_dict.items()}


def to_reference_state_dict(
    state_dict: Mapping[str, torch.Tensor], num_layers: int | None = None
) -> dict[str, torch.Tensor]:
    """Our state dict -> reference key names (the inverse of `convert_reference_state_dict`)."""
    num_layers = count_blocks(state_dict) if num_layers is None else num_layers
    inverse = {ours: ref for ref, ours in reference_key_map(num_layers).items()}
    _check_keys(set(state_dict), set(inverse), "WorldActionModel state dict")
    return {inverse[k]: v for k, v in state_dict.items()}


def check_shapes(
    converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size | tuple[int, ...]]
) -> None:
    """Raise CheckpointKeyError naming every tensor whose shape differs from the model's."""
    _check_keys(set(converted), set(expected), "converted checkpoint vs model")
    wrong = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in converted.items()
        if tuple(v.shape) != tuple(expected[k])
    ]
    if wrong:
        raise CheckpointKeyError(
            f"{len(wrong)} tensor(s) do not match the model config, e.g. {wrong[:3]}; "
            "build the model from the preset the checkpoint was trained with "
            "(configs/official-5b.yaml)"
        )


def load_reference_checkpoint(path: str | Path, cfg: ModelConfig, dtype: torch.dtype | None = None):
    """Read a reference `.ckpt` and return a WorldActionModel built from `cfg` holding it.

    The model is built on the meta device and the converted tensors are assigned, so peak
    memory is one copy of the weights. `dtype` casts them (default: keep the file's dtype).
    """
    from aimg.model.build import build_model

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) serialisation cannot be memory-mapped
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointKeyError(f"{path} holds a {type(state).__name__}, not a state dict")
    converted = convert_reference_state_dict(state, cfg.transformer.num_layers)
    if dtype is not None:
        converted = {k: v.to(dtype) for k, v in converted.items()}
    with torch.device("meta"):
        model = build_model(cfg, init=False)
    check_shapes(converted, {k: p.shape for k, p in model.state_dict().items()})
    model.load_state_dict(converted, strict=True, assign=True)
    model.rebuild_rope()
    return model.eval()


def convert_checkpoint_file(
    ckpt_path: str | Path, output_dir: str | Path, preset: str | Path, dtype: str | None = None
) -> Path:
    """Reference `.ckpt` -> our checkpoint directory (`model.safetensors` + `config.json`)."""
    from aimg.model.checkpoint import save_checkpoint
    from aimg.model.config import load_preset

    model_cfg, sampling, _ = load_preset(preset)
    torch_dtype = {None: None, "fp32": torch.float32, "bf16": torch.bfloat16}.get(dtype, "bad")
    if torch_dtype == "bad":
        raise ValueError(
            f"dtype must be fp32 or bf16 (or left out to keep the file's), got {dtype}"
        )
    model = load_reference_checkpoint(ckpt_path, model_cfg, torch_dtype)
    return save_checkpoint(
        output_dir, model, model_cfg, sampling, {"converted_from": str(Path(ckpt_path).name)}
    )


def main(argv: list[str] | None = None) -> None:
    """`python -m aimg.model.official CKPT OUT_DIR --preset configs/official-5b.yaml`."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="reference .ckpt (torch.save of the DiT state dict)")
    parser.add_argument("output_dir", help="directory to write model.safetensors + config.json")
    parser.add_argument("--preset", default="configs/official-5b.yaml")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None)
    args = parser.parse_args(argv)
    out = convert_checkpoint_file(args.checkpoint, args.output_dir, args.preset, args.dtype)
    print(out)


if __name__ == "__main__":
    main()
