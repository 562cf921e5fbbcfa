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

MATLAB keeps the class of a ``uint8`` image: ``imresize`` then converts the result of *each* 1-D pass to uint8
(round half away from zero, saturate) before the next pass. ``round_each_pass=True`` does the same; with it the
degradation of the modcropped Set5/Set14 HR images reproduces the official ``LR_bicubic`` files bit for bit
(0 of 4,586,496 values differ at x2/x3/x4), where one rounding at the end misses 12.8% of them (up to +-12 on
sharp text) and halves rounded to even (``torch.round``) miss 0.3%: the x2 and x4 kernels have dyadic weights,
so a pass can land exactly on ``k + 0.5`` (measured for issue 20).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = ["MATLAB_BICUBIC", "bicubic_degrade", "imresize", "matlab_uint8", "resize_weights"]

# The ``params["kernel"]`` a task declares when its degradation is :func:`bicubic_degrade` (the SR plugin does);
# evaluation under the MATLAB convention then makes on-the-fly LR images with per-pass rounding.
MATLAB_BICUBIC = "bicubic (MATLAB imresize, antialiased)"


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with ``a = -0.5`` (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


def matlab_uint8(x: torch.Tensor) -> torch.Tensor:
    """MATLAB's ``uint8(x)``: round half away from zero, saturate to ``[0, 255]``; float dtype kept.

    ``torch.round`` rounds halves to even, which differs on exact halves (``uint8(2.5)`` is 3 in MATLAB).
    Integer inputs come back as float64.
    """
    if not x.is_floating_point():
        x = x.to(torch.float64)
    return (torch.sign(x) * torch.floor(torch.abs(x) + 0.5)).clamp_(0.0, 255.0)


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


def _target(in_h: int, in_w: int, scale: float | None, size: tuple[int, int] | None) -> tuple[int, int, float, float]:
    """(out_h, out_w, scale_h, scale_w) from exactly one of ``scale`` and ``size``; ValueError otherwise."""
    if (scale is None) == (size is None):
        raise ValueError("give exactly one of scale or size")
    if scale is not None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        return _output_length(in_h, float(scale)), _output_length(in_w, float(scale)), float(scale), float(scale)
    out_h, out_w = int(size[0]), int(size[1])  # type: ignore[index]
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"size must be positive, got {size}")
    return out_h, out_w, out_h / in_h, out_w / in_w


def imresize(
    x: torch.Tensor,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    antialias: bool = True,
    round_each_pass: bool = False,
) -> torch.Tensor:
    """Resize ``x`` (``(..., H, W)``, e.g. ``(B,C,H,W)`` or ``(C,H,W)``) like MATLAB ``imresize(x, ..., 'bicubic')``.

    Give either ``scale`` (output ``ceil(H*scale) x ceil(W*scale)``) or ``size=(out_h, out_w)`` (per-axis scale
    ``out/in``). Integer inputs are converted to float32; the output is neither rounded nor clamped.

    ``round_each_pass=True`` is MATLAB on a ``uint8`` image: the input is taken as 8-bit samples
    (:func:`matlab_uint8`), the passes run in float64 and each pass's result is converted to uint8; the output
    holds integers in [0, 255], float64 for float64 input and float32 otherwise. Raises ValueError for bad
    ``scale``/``size`` or fewer than 2 dimensions.
    """
    if x.dim() < 2:
        raise ValueError(f"imresize expects (..., H, W), got shape {tuple(x.shape)}")
    in_h, in_w = x.shape[-2], x.shape[-1]
    out_h, out_w, sh, sw = _target(in_h, in_w, scale, size)
    out_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    if round_each_pass:
        x = matlab_uint8(x.to(torch.float64))
    elif not x.is_floating_point():
        x = x.float()
    step = matlab_uint8 if round_each_pass else (lambda t: t)

    def resize_h(t: torch.Tensor) -> torch.Tensor:
        if out_h == in_h and sh == 1.0:
            return t
        return step(torch.matmul(_weights_torch(in_h, out_h, sh, antialias, t.dtype, t.device), t))

    def resize_w(t: torch.Tensor) -> torch.Tensor:
        if out_w == in_w and sw == 1.0:
            return t
        return step(torch.matmul(t, _weights_torch(in_w, out_w, sw, antialias, t.dtype, t.device).T))

    # MATLAB resizes along the dimension with the smaller scale first (rows first on ties). Without rounding the
    # passes commute up to float round-off; with per-pass rounding the order matters (columns first misses 17.5%
    # of the official LR values).
    out = resize_w(resize_h(x)) if sh <= sw else resize_h(resize_w(x))
    return out.to(out_dtype) if round_each_pass else out


def bicubic_degrade(clean: torch.Tensor, scale: float, round_each_pass: bool = False) -> torch.Tensor:
    """The 8-bit LR image of an SR dataset: ``imresize(clean, 1/scale)`` with integer values in ``[0, 255]``.

    ``clean`` is ``(..., H, W)`` on 0-255 (modcropped by the caller). By default the float result is rounded once
    (the project's training degradation); ``round_each_pass=True`` is MATLAB's ``imresize`` on uint8, which
    reproduces the official ``LR_bicubic`` files bit for bit (grey images give the official grey LR files too).
    """
    if round_each_pass:
        return imresize(clean, scale=1.0 / scale, round_each_pass=True)
    return imresize(clean, scale=1.0 / scale).round().clamp(0.0, 255.0)
