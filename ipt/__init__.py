"""IPT: a plugin-based, multi-task framework for the Image Processing Transformer.

Importing :mod:`ipt` is light; the model, trainer and tools live in :mod:`ipt.core`, the plugin machinery in
:mod:`ipt.registry`, and the built-in tasks in :mod:`ipt.plugins`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ipt-framework")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__", "IPT", "ModelConfig", "TaskSpec", "get_task", "hookimpl", "load_model"]


def __getattr__(name: str) -> Any:
    # Lazy exports: ``import ipt`` must not import torch-heavy modules or the plugins.
    if name == "IPT":
        from ipt.core.model import IPT

        return IPT
    if name == "ModelConfig":
        from ipt.core.model.config import ModelConfig

        return ModelConfig
    if name in ("TaskSpec", "hookimpl", "get_task"):
        import ipt.registry as registry

        return getattr(registry, name)
    if name == "load_model":
        from ipt.core.checkpoints.pretrained import load_pretrained

        return load_pretrained
    raise AttributeError(f"module 'ipt' has no attribute {name!r}")
