"""Optional on-disk cache of encoded clip latents, for codecs that are costly (the Wan VAE).

An entry is one view's video or action clip of one episode at given frame indices, keyed by
everything that determines it (episode path, view, modality, frames, resolution, codec).
Entries are safetensors files written atomically, so concurrent ranks can share a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch


class LatentCache:
    """Latents [C, T_l, h, w] on disk under `root`, computed once by the caller's encoder."""

    def __init__(self, root: Path, codec_signature: str) -> None:
        self.root = Path(root)
        self.codec_signature = codec_signature
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def key(self, episode: str, view: str, modality: str, frames: list[int], size: tuple) -> str:
        record = [self.codec_signature, str(episode), view, modality, list(frames), list(size)]
        return hashlib.sha256(json.dumps(record).encode()).hexdigest()[:32]

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The cached tensor for `key`, or `compute()` stored for next time (CPU, contiguous)."""
        from safetensors.torch import load_file, save_file

        path = self.root / key[:2] / f"{key}.safetensors"
        if path.is_file():
            self.hits += 1
            return load_file(str(path))["latents"]
        self.misses += 1
        value = compute().detach().to("cpu").contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        save_file({"latents": value}, str(tmp))
        os.replace(tmp, path)
        return value
