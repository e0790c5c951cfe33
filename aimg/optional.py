"""Lazy imports of optional dependencies with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says which extra provides it."""


def require(module: str, extra: str, package: str | None = None) -> ModuleType:
    """Import `module` or raise an error that says `pip install 'aimg[extra]'`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        name = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{name} is not installed, and this feature needs it: "
            f"run `pip install 'aimg[{extra}]'` (or `pip install {name}`)."
        ) from exc
