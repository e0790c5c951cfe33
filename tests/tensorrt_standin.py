"""A stand-in for a deserialised TensorRT engine's I/O queries (no GPU or TensorRT here)."""

from __future__ import annotations

from types import SimpleNamespace


class StandInEngine:
    """Answers `ICudaEngine`'s tensor queries for `io` = [(name, shape, dtype, mode), ...]."""

    def __init__(self, io: list[tuple[str, tuple, str, str]]) -> None:
        self.io = io
        self.num_io_tensors = len(io)
        self.shapes: dict[str, tuple] = {}

    def _get(self, name: str) -> tuple:
        return next(t for t in self.io if t[0] == name)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_shape(self, name: str) -> tuple:
        return self._get(name)[1]

    def get_tensor_dtype(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=self._get(name)[2])

    def get_tensor_mode(self, name: str) -> str:
        return self._get(name)[3]

    def create_execution_context(self) -> SimpleNamespace:
        return SimpleNamespace(set_input_shape=self.shapes.__setitem__)
