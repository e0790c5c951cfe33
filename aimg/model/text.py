"""Text encoders: prompts -> [B, L, D_text] embeddings, zero past each prompt's length.

- `UMT5TextEncoder`: the reference's umT5 encoder (docs/reference.md §4.2) from a local
  directory holding the encoder weights and its tokenizer; 512 tokens, padded and truncated.
- `HashTextEncoder`: the built-in encoder of our small models. Words (lower-cased, split on
  non-alphanumerics) map to fixed unit-variance vectors derived from a BLAKE2b hash, plus a
  sinusoidal position code, so it needs no vocabulary, no weights and no download, and gives the
  same numbers on every machine. The learned text embedding of the transformer does the rest.

Both cache embeddings per prompt (instructions rarely change).
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

_WORD_RE = re.compile(r"[a-z0-9]+")


class TextEncoder(ABC):
    """Interface: `encode(prompts) -> float32 [B, max_length, dim]` (cached per prompt)."""

    dim: int
    max_length: int

    def __init__(self, cache_size: int = 64) -> None:
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    @abstractmethod
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        """[B, max_length, dim] float32 on the CPU."""

    def encode(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Embeddings [B, max_length, dim] float32 (CPU); "" gives the all-zero negative."""
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            for prompt, emb in zip(missing, self._encode_uncached(missing), strict=True):
                self._cache[prompt] = emb
        for prompt in prompts:
            self._cache.move_to_end(prompt)
        out = torch.stack([self._cache[p] for p in prompts])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return out

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        return self.encode(prompts)


def tokenize_words(prompt: str) -> list[str]:
    """Lower-cased alphanumeric words of a prompt."""
    return _WORD_RE.findall(prompt.lower())


def word_vector(word: str, dim: int) -> np.ndarray:
    """A fixed, unit-variance vector [dim] for a word (uniform in ±sqrt(3), from BLAKE2b)."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dim:
        raw += hashlib.blake2b(f"{counter}:{word}".encode(), digest_size=64).digest()
        counter += 1
    u = np.frombuffer(raw[: 4 * dim], dtype="<u4").astype(np.float64) / 2**32
    return ((u * 2.0 - 1.0) * math.sqrt(3.0)).astype(np.float32)


def position_code(length: int, dim: int) -> np.ndarray:
    """Sinusoidal position code [length, dim] (cos half, sin half), amplitude 1."""
    half = dim // 2
    freqs = np.exp(-math.log(10000.0) * np.arange(half) / max(half, 1))
    angles = np.arange(length)[:, None] * freqs[None]
    code = np.zeros((length, dim), dtype=np.float32)
    code[:, :half] = np.cos(angles)
    code[:, half : 2 * half] = np.sin(angles)
    return code


class HashTextEncoder(TextEncoder):
    """Built-in deterministic word-hashing encoder; see the module docstring."""

    def __init__(self, dim: int, max_length: int = 32, cache_size: int = 64) -> None:
        super().__init__(cache_size)
        if dim <= 0 or max_length <= 0:
            raise ValueError("dim and max_length must be positive")
        self.dim = dim
        self.max_length = max_length
        self._positions = position_code(max_length, dim)

    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        out = np.zeros((len(prompts), self.max_length, self.dim), dtype=np.float32)
        for i, prompt in enumerate(prompts):
            words = tokenize_words(prompt)[: self.max_length]
            for j, word in enumerate(words):
                out[i, j] = word_vector(word, self.dim) + 0.5 * self._positions[j]
        return torch.from_numpy(out)


class UMT5TextEncoder(TextEncoder):
    """umT5 encoder + tokenizer from a local directory (transformers; nothing downloaded)."""

    def __init__(self, model, tokenizer, max_length: int = 512, cache_size: int = 64) -> None:
        super().__init__(cache_size)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.d_model)

    @classmethod
    def from_directory(
        cls, path: str | Path, max_length: int = 512, tokenizer_path: str | Path | None = None
    ) -> UMT5TextEncoder:
        """Load `UMT5EncoderModel` from `path` and its tokenizer from `tokenizer_path`.

        Local files only; the tokenizer defaults to `path` too.
        """
        from aimg.optional import require

        transformers = require("transformers", "train")
        path = Path(path)
        tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else path
        if not (path / "config.json").is_file():
            raise ValueError(
                f"{path} is not a local umT5 encoder directory (no config.json); put the "
                "UMT5EncoderModel weights and the google/umt5-xxl tokenizer files there"
            )
        model = transformers.UMT5EncoderModel.from_pretrained(path, local_files_only=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            tokenizer_path, local_files_only=True
        )
        return cls(model, tokenizer, max_length)

    def to(self, device=None, dtype=None) -> UMT5TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> torch.Tensor:
        cleaned = [" ".join(p.split()) for p in prompts]
        tokens = self.tokenizer(
            cleaned,
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            add_special_tokens=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        ids = tokens.input_ids.to(device)
        mask = tokens.attention_mask.to(device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return hidden.float().cpu()
