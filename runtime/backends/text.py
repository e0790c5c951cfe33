"""Text embeddings for compiled backends: precomputed in the artifact, so the robot computer
never runs umT5; the built-in encoder of small models (no weights) is computed on the spot."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from aimg.artifacts import TEXT_KEY, Manifest
from aimg.model.config import ModelConfig
from aimg.runtime.backends.base import BackendError


class ArtifactText:
    """prompts -> [B, L, D_text] float32 from the artifact's table (or the built-in encoder)."""

    def __init__(self, artifact: Path, manifest: Manifest, model_config: ModelConfig) -> None:
        self.table: dict[str, torch.Tensor] = {}
        spec = manifest.text_embeddings
        if spec is not None:
            embeddings = load_file(str(Path(artifact) / spec.file.file))[TEXT_KEY]
            self.table = dict(zip(spec.instructions, embeddings.float(), strict=True))
        self.builtin = None
        if model_config.text.kind == "builtin":
            from aimg.model.build import build_text_encoder

            self.builtin = build_text_encoder(model_config)
        self.artifact = Path(artifact)

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for prompt in prompts:
            if prompt in self.table:
                out.append(self.table[prompt])
            elif self.builtin is not None:
                out.append(self.builtin([prompt])[0])
            else:
                known = sorted(self.table)[:5]
                raise BackendError(
                    f"instruction {prompt!r} has no precomputed text embedding in "
                    f"{self.artifact} (it has {len(self.table)}, e.g. {known}); list it in a file "
                    f"and re-export: `aimg export onnx CHECKPOINT --instructions FILE`"
                )
        return torch.stack(out)
