"""Device and precision of inference, resolved once per command: names -> ``torch.device`` and a context manager.

Precisions (``--dtype``): ``fp32`` (nothing changes), ``bf16``/``fp16`` (autocast: matmuls and convolutions in
half precision, LayerNorm/softmax in fp32; fp16 on CUDA only), ``int8`` (CPU only: the linear layers of the
transformer body in int8 through oneDNN, everything else fp32; :func:`ipt.core.model.fused_linear.int8_inference`).
"""

from __future__ import annotations

import contextlib

import torch

from ipt.core.model.fused_linear import int8_available, int8_inference

__all__ = ["PRECISIONS", "resolve_device", "check_precision", "precision"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a ``ValueError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def check_precision(name: str, device: torch.device) -> str:
    """``name`` if it runs on ``device``, else a ``ValueError`` naming ``--dtype`` and what to use instead."""
    if name not in PRECISIONS:
        raise ValueError(f"--dtype must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device (on the CPU use bf16)")
    if name == "int8" and (device.type != "cpu" or not int8_available()):
        raise ValueError("--dtype int8 runs on the CPU only (oneDNN's int8 kernels; on a GPU use bf16)")
    return name


def precision(device: torch.device, name: str) -> contextlib.AbstractContextManager:
    """The context a forward pass of precision ``name`` runs in on ``device`` (see the module docstring)."""
    if name == "int8":
        return int8_inference()
    if name in _AUTOCAST:
        return torch.autocast(device.type, dtype=_AUTOCAST[name])
    return contextlib.nullcontext()
