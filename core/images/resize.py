"""MATLAB-compatible bicubic ``imresize`` in torch (the degradation SR benchmarks are built with).

MATLAB's algorithm, per axis:

* cubic kernel with ``a = -0.5``;
* when downscaling (``scale < 1``) with antialiasing the kernel is stretched, ``h(x) = scale * cubic(scale * x)``,
  and its support widens from 4 to ``4 / scale`` input pixels;
* output pixel ``x`` (1-based) samples input coordinate ``u = x / scale + 0.5 * (1 - 1 / scale)``;
* the ``ceil(width) + 2`` nearest input pixels get weights ``h(u - j)``, normalised to sum to 1;
* indices outside ``1..in`` are mirrored (MATLAB's ``'symmetric'`` padding: ``... 2 1 | 1 2 ... n | n n-1 ...``).

Each axis becomes a dense ``(out, in)`` matrix (cached), so a resize is two matmuls. Mirrored taps are summed
into the matrix and all-zero taps contribute nothing, which is MATLAB's trimming of zero columns for free.
The two axes are applied in MATLAB's order (smallest scale first, rows first on ties); the result is not rounded
or clamped, callers decide (see :func:`bicubic_degrade`).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["bicubic_degrade", "imresize", "resize_weights"]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def _output_length(in_len: int, scale: float) -> int:
    """MATLAB's ``ceil(in * scale)``, tolerant to float noise such as ``48 * (1/3) = 16.000000000000004``."""
    exact = in_len * scale
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9 * max(1.0, abs(exact)):
        return int(nearest)
    return int(math.ceil(exact))


@lru_cache(maxsize=256)
def _weights_np(in_len: int, out_len: int, scale: float, antialias: bool) -> np.ndarray:
    if antialias and scale < 1:
        def kernel(d: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * d)

        width = 4.0 / scale
    else:
        kernel = _cubic
        width = 4.0
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]  # 1-based input indices
    w = kernel(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # 'symmetric' mirroring: period 2*in, sequence 1..n, n..1 (0-based here).
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    src = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_len)[:, None], src.shape)
    np.add.at(mat, (rows, src), w)  # mirrored taps land on the same input pixel: sum them
    mat.setflags(write=False)
    return mat


def resize_weights(in_len: int, out_len: int, scale: float, antialias: bool = True) -> np.ndarray:
    """The ``(out_len, in_len)`` float64 matrix that resizes one axis (``out = W @ in``)."""
    return _weights_np(int(in_len), int(out_len), float(scale), bool(antialias))


@lru_cache(maxsize=256)
def _weights_torch(
    in_len: int, out_len: int, scale: float, antialias: bool, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    # Cached per device/dtype so repeated CUDA resizes do not re-upload the matrix.
    return torch.from_numpy(np.array(_weights_np(in_len, out_len, scale, antialias))).to(device=device, dtype=dtype)


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize ``x`` (``(..., H, W)``, e.g. ``(B,C,H,W)`` or ``(C,H,W)``) like MATLAB ``imresize(x, ..., 'bicubic')``.

    Give either ``scale`` (output ``ceil(H*scale) x ceil(W*scale)``) or ``size=(out_h, out_w)`` (per-axis scale
    ``out/in``). Integer inputs are converted to float32; the output is neither rounded nor clamped.
    """
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if x.dim() < 2:
        raise ValueError(f"imresize expects (..., H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.float()
    in_h, in_w = x.shape[-2], x.shape[-1]
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        sh = sw = float(scale)
        out_h, out_w = _output_length(in_h, sh), _output_length(in_w, sw)
    else:
        out_h, out_w = int(size[0]), int(size[1])  # type: ignore[index]
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"size must be positive, got {size}")
        sh, sw = out_h / in_h, out_w / in_w

    def resize_h(t: torch.Tensor) -> torch.Tensor:
        if out_h == in_h and sh == 1.0:
            return t
        return torch.matmul(_weights_torch(in_h, out_h, sh, antialias, t.dtype, t.device), t)

    def resize_w(t: torch.Tensor) -> torch.Tensor:
        if out_w == in_w and sw == 1.0:
            return t
        return torch.matmul(t, _weights_torch(in_w, out_w, sw, antialias, t.dtype, t.device).T)

    # MATLAB resizes along the dimension with the smaller scale first (rows first on ties); the two passes
    # commute mathematically, keeping the order keeps float round-off identical in spirit and the
    # intermediate small.
    if sh <= sw:
        return resize_w(resize_h(x))
    return resize_h(resize_w(x))


def bicubic_degrade(clean: torch.Tensor, scale: float) -> torch.Tensor:
    """The 8-bit LR image of an SR dataset: ``imresize(clean, 1/scale)``, rounded and clamped to ``[0, 255]``."""
    return imresize(clean, scale=1.0 / scale).round().clamp(0.0, 255.0)
