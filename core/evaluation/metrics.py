"""Image-quality metrics with the conventions of the IPT benchmarks.

All functions take images on the 0-255 scale, shaped ``(3, H, W)`` (one image) or ``(B, 3, H, W)`` (batched
variants). Scores are computed in float64 so that the result does not depend on the dtype a model ran in.

Conventions (see DESIGN.md, "Evaluation conventions"):

* the luma is BT.601 as MATLAB's ``rgb2ycbcr`` computes it (``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255``
  on 0-255 inputs); images are *not* rounded after the conversion, as the official code does not round either;
* restored images are 8-bit quantised (clamp to [0, 255] and round) before scoring;
* SR crops ``scale`` pixels from every border, other tasks crop nothing;
* SSIM uses an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, and keeps only the fully-overlapping
  ("valid") window positions, as the MATLAB reference of Wang et al. does.

Two scoring conventions (``convention=``, see :data:`CONVENTIONS`) differ in the scored channel only:

* ``"official-python"`` (default): the official IPT/EDSR Python scorer. Grey images are repeated to RGB, so a grey
  value g scores as Y = 16 + 219 g / 255; Y is not rounded.
* ``"matlab"``: the MATLAB scripts behind the published SR tables. ``rgb2ycbcr`` on uint8 returns uint8, so Y is
  rounded to 8 bit; a grey clean image is scored on its grey values (no Y at all), which is 1.32 dB lower per grey
  image (``20 log10(255/219)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ipt.core.images.resize import matlab_uint8
from ipt.registry import get_registry

if TYPE_CHECKING:  # pragma: no cover
    from ipt.registry import MetricSpec, TaskSpec

__all__ = [
    "Convention",
    "CONVENTIONS",
    "DEFAULT_CONVENTION",
    "rgb_to_y",
    "scored_channel",
    "quantize",
    "psnr",
    "psnr_batch",
    "ssim",
    "ssim_batch",
    "score",
    "psnr_b",
    "blocking_effect_factor",
    "MetricError",
    "metric_specs",
    "metric_values",
]

# BT.601 luma weights for 0-255 inputs (MATLAB rgb2ycbcr: 65.481, 128.553, 24.966 per unit of [0, 1] input).
_Y_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_Y_OFFSET = 16.0
_Y_SUM = 219.0  # 65.481 + 128.553 + 24.966: the Y of grey g is 16 + 219 g / 255

Convention = Literal["official-python", "matlab"]
CONVENTIONS: tuple[str, ...] = ("official-python", "matlab")
DEFAULT_CONVENTION: Convention = "official-python"

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


def rgb_to_y(img_255: Tensor, round_to_uint8: bool = False) -> Tensor:
    """Return the BT.601 luma of an RGB image on the 0-255 scale.

    ``img_255`` is ``(..., 3, H, W)``; the result is ``(..., 1, H, W)`` (channel kept so shapes stay image-like)
    in the input's floating dtype, with Y in [16, 235] for inputs in [0, 255]. ``round_to_uint8=True`` is MATLAB's
    ``rgb2ycbcr`` on a uint8 image (halves away from zero). Raises ValueError unless there are 3 channels.
    """
    if img_255.ndim < 3 or img_255.shape[-3] != 3:
        raise ValueError(f"rgb_to_y expects (..., 3, H, W), got shape {tuple(img_255.shape)}")
    img = img_255 if img_255.is_floating_point() else img_255.to(torch.float64)
    r, g, b = img.unbind(dim=-3)
    y = (_Y_OFFSET + _Y_WEIGHTS[0] * r + _Y_WEIGHTS[1] * g + _Y_WEIGHTS[2] * b).unsqueeze(-3)
    return matlab_uint8(y) if round_to_uint8 else y


def scored_channel(img_255: Tensor, convention: Convention = DEFAULT_CONVENTION, grey: bool = False) -> Tensor:
    """The channel PSNR-Y/SSIM-Y are computed on, ``(1, H, W)`` float64, for 8-bit ``(3, H, W)`` or ``(1, H, W)``.

    ``grey`` says the *clean* image of the pair was a grey file. ``official-python``: float Y of the RGB image
    (grey repeated). ``matlab``: rounded Y, or for grey pairs the grey values (an RGB image, e.g. a model's output
    for a grey input, is reduced to grey by ``uint8((Y - 16) * 255 / 219)``, which gives g back when R = G = B).
    Raises ValueError for an unknown convention or a channel count other than 1 or 3.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    img = img_255.detach().to(torch.float64)
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"expected (1, H, W) or (3, H, W), got shape {tuple(img.shape)}")
    if convention == "matlab" and grey:
        return img if img.shape[0] == 1 else matlab_uint8((rgb_to_y(img) - _Y_OFFSET) * (255.0 / _Y_SUM))
    rgb = img.expand(3, -1, -1) if img.shape[0] == 1 else img
    return rgb_to_y(rgb, round_to_uint8=convention == "matlab")


def quantize(img: Tensor) -> Tensor:
    """8-bit quantisation applied to outputs before scoring: clamp to [0, 255], round to integers."""
    return img.clamp(0, 255).round()


def _check_pair(a: Tensor, b: Tensor, ndim: int) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.ndim != ndim:
        kind = "(C, H, W)" if ndim == 3 else "(B, C, H, W)"
        raise ValueError(f"expected images shaped {kind}, got {tuple(a.shape)}")


def _prepare(img: Tensor, crop_border: int, y_only: bool) -> Tensor:
    """float64, optionally luma only (3-channel inputs; 1-channel inputs are taken as luma already), cropped."""
    img = img.detach().to(torch.float64)
    if y_only and img.shape[-3] == 3:
        img = rgb_to_y(img)
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    if crop_border > 0:
        h, w = img.shape[-2:]
        if 2 * crop_border >= min(h, w):
            raise ValueError(f"crop_border {crop_border} leaves nothing of a {h}x{w} image")
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
    return img


def psnr_batch(
    a: Tensor, b: Tensor, crop_border: int = 0, y_only: bool = True, data_range: float = 255.0
) -> Tensor:
    """Per-image PSNR in dB of two ``(B, C, H, W)`` batches; float64 tensor of shape ``(B,)``, ``inf`` where equal."""
    _check_pair(a, b, 4)
    x = _prepare(a, crop_border, y_only)
    y = _prepare(b, crop_border, y_only)
    mse = (x - y).pow(2).flatten(1).mean(dim=1)
    # log10(0) would give -inf in the denominator; identical images are defined as infinitely good.
    out = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(mse == 0, torch.full_like(out, math.inf), out)


def psnr(a: Tensor, b: Tensor, crop_border: int = 0, y_only: bool = True, data_range: float = 255.0) -> float:
    """PSNR in dB of two ``(C, H, W)`` images; ``float('inf')`` for identical images."""
    _check_pair(a, b, 3)
    return float(psnr_batch(a.unsqueeze(0), b.unsqueeze(0), crop_border, y_only, data_range)[0])


def _gaussian_1d(size: int, sigma: float, device: torch.device) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter_valid(img: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filtering of (B, C, H, W) with 'valid' borders (no padding, output shrinks by win-1)."""
    c = img.shape[1]
    k = g.numel()
    kh = g.view(1, 1, k, 1).expand(c, 1, k, 1)
    kw = g.view(1, 1, 1, k).expand(c, 1, 1, k)
    return F.conv2d(F.conv2d(img, kh, groups=c), kw, groups=c)


def ssim_batch(a: Tensor, b: Tensor, crop_border: int = 0, y_only: bool = True) -> Tensor:
    """Per-image SSIM of two ``(B, C, H, W)`` batches on the 0-255 scale; float64 tensor ``(B,)``.

    Multi-channel inputs (``y_only=False``) score each channel separately and average, like skimage's
    ``structural_similarity(..., channel_axis=...)``.
    """
    _check_pair(a, b, 4)
    x = _prepare(a, crop_border, y_only)
    y = _prepare(b, crop_border, y_only)
    if min(x.shape[-2:]) < _SSIM_WINDOW:
        size = tuple(x.shape[-2:])
        raise ValueError(f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, got {size}")
    g = _gaussian_1d(_SSIM_WINDOW, _SSIM_SIGMA, x.device)
    c1 = (_SSIM_K1 * 255.0) ** 2
    c2 = (_SSIM_K2 * 255.0) ** 2
    mu_x = _filter_valid(x, g)
    mu_y = _filter_valid(y, g)
    # Population (not sample) covariances, as the MATLAB reference and use_sample_covariance=False.
    var_x = _filter_valid(x * x, g) - mu_x * mu_x
    var_y = _filter_valid(y * y, g) - mu_y * mu_y
    cov_xy = _filter_valid(x * y, g) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    per_channel = (num / den).flatten(2).mean(dim=2)  # (B, C)
    return per_channel.mean(dim=1)


def ssim(a: Tensor, b: Tensor, crop_border: int = 0, y_only: bool = True) -> float:
    """SSIM of two ``(C, H, W)`` images on the 0-255 scale (Gaussian 11x11, sigma 1.5, valid window positions)."""
    _check_pair(a, b, 3)
    return float(ssim_batch(a.unsqueeze(0), b.unsqueeze(0), crop_border, y_only)[0])


def score(
    restored: Tensor,
    clean: Tensor,
    scale: int,
    color_space: Literal["y", "rgb"] = "y",
    crop_border: int | None = None,
    convention: Convention = DEFAULT_CONVENTION,
    grey: bool = False,
) -> dict[str, float]:
    """Score one restored image against its clean reference with the benchmark conventions.

    ``restored`` is 8-bit quantised first; ``crop_border=None`` crops ``scale`` pixels for SR (``scale > 1``)
    and nothing otherwise. Returns ``psnr_y``, ``ssim_y`` and ``psnr_rgb`` always, plus ``psnr`` and ``ssim`` in
    the task's ``color_space`` (and ``ssim_rgb`` when that is ``"rgb"``). Images are ``(3, H, W)`` or
    ``(1, 3, H, W)``. ``psnr_y``/``ssim_y`` are on :func:`scored_channel` under ``convention`` (``grey``: the
    clean file was grey); the RGB scores do not depend on the convention.
    """
    if color_space not in ("y", "rgb"):
        raise ValueError(f"color_space must be 'y' or 'rgb', got {color_space!r}")
    if restored.ndim == 4 and restored.shape[0] == 1:
        restored = restored[0]
    if clean.ndim == 4 and clean.shape[0] == 1:
        clean = clean[0]
    border = (scale if scale > 1 else 0) if crop_border is None else crop_border
    out = quantize(restored.detach().to(torch.float64))
    ref = clean.detach().to(torch.float64)
    _check_pair(out, ref, 3)
    out_y, ref_y = scored_channel(out, convention, grey), scored_channel(ref, convention, grey)
    result = {
        "psnr_y": psnr(out_y, ref_y, border, y_only=True),
        "ssim_y": ssim(out_y, ref_y, border, y_only=True),
        "psnr_rgb": psnr(out, ref, border, y_only=False),
    }
    if color_space == "rgb":
        result["ssim_rgb"] = ssim(out, ref, border, y_only=False)
        result["psnr"], result["ssim"] = result["psnr_rgb"], result["ssim_rgb"]
    else:
        result["psnr"], result["ssim"] = result["psnr_y"], result["ssim_y"]
    return result


# -- PSNR-B and metric plugins ----------------------------------------------------------------------------------
_JPEG_BLOCK = 8


def blocking_effect_factor(img: Tensor, block: int = _JPEG_BLOCK) -> Tensor:
    """Blocking effect factor (BEF) per channel of a ``(C, H, W)`` image on the 0-255 scale; float64 ``(C,)``.

    Yim & Bovik, "Quality assessment of deblocked images", IEEE TIP 2011, eqs. 4-7: the mean squared difference
    of horizontally/vertically adjacent pixels across ``block`` boundaries (``D_B``) minus the same mean over all
    other adjacent pairs (``D_Bc``), scaled by ``eta = log2(block) / log2(min(H, W))``, and 0 when ``D_B <= D_Bc``.
    """
    x = img.detach().to(torch.float64)
    h, w = x.shape[-2:]
    if min(h, w) <= block:
        raise ValueError(f"PSNR-B needs images larger than one {block}x{block} block, got {h}x{w}")
    dh = (x[..., :, 1:] - x[..., :, :-1]).pow(2)  # (C, H, W-1): pair (j, j+1) of each row
    dv = (x[..., 1:, :] - x[..., :-1, :]).pow(2)  # (C, H-1, W)
    col_at_boundary = torch.zeros(w - 1, dtype=torch.bool)
    col_at_boundary[block - 1 :: block] = True
    row_at_boundary = torch.zeros(h - 1, dtype=torch.bool)
    row_at_boundary[block - 1 :: block] = True
    boundary = dh[..., :, col_at_boundary].flatten(1).sum(1) + dv[..., row_at_boundary, :].flatten(1).sum(1)
    inside = dh[..., :, ~col_at_boundary].flatten(1).sum(1) + dv[..., ~row_at_boundary, :].flatten(1).sum(1)
    n_boundary = h * int(col_at_boundary.sum()) + w * int(row_at_boundary.sum())
    n_inside = h * (w - 1) + w * (h - 1) - n_boundary
    d_b, d_bc = boundary / n_boundary, inside / n_inside
    eta = math.log2(block) / math.log2(min(h, w))
    return torch.where(d_b > d_bc, eta * (d_b - d_bc), torch.zeros_like(d_b))


def psnr_b(restored: Tensor, reference: Tensor, data_range: float = 255.0) -> float:
    """PSNR-B in dB (Yim & Bovik 2011, eq. 8): ``10 log10(R^2 / (MSE + BEF(restored)))``.

    ``restored`` and ``reference`` are ``(C, H, W)`` on the 0-255 scale; the BEF is measured on the restored
    image with 8x8 blocks aligned to the top-left corner (JPEG's grid). With several channels the MSE and the BEF
    are means over channels (as PSNR-RGB pools the MSE). ``inf`` for identical, block-free images.
    """
    _check_pair(restored, reference, 3)
    x, y = restored.detach().to(torch.float64), reference.detach().to(torch.float64)
    mse_b = float((x - y).pow(2).mean()) + float(blocking_effect_factor(x).mean())
    return math.inf if mse_b == 0 else 10.0 * math.log10(data_range**2 / mse_b)


class MetricError(ValueError):
    """A metric plugin that raised or returned NaN; ``str()`` names the metric, its plugin and the image."""


def metric_specs(names: Sequence[str]) -> "list[MetricSpec]":
    """The registered metrics ``names`` (in that order; :class:`~ipt.registry.manager.UnknownMetricError` if one
    is not registered)."""
    registry = get_registry()
    return [registry.metric(n) for n in dict.fromkeys(names)]


def metric_values(
    restored: Tensor, clean: Tensor, spec: "TaskSpec", metrics: "Sequence[MetricSpec]", where: str = ""
) -> dict[str, float]:
    """Every metric of ``metrics`` for one restored ``(3, H, W)`` image against ``clean`` (0-255).

    The restored image is 8-bit quantised, both are converted to each metric's colour space (the task's for
    ``"task"``) and cropped by the task's border, as :mod:`ipt.registry.metrics` promises plugins. Raises
    :class:`MetricError` naming ``where`` (the image), the metric and its plugin when one raises or gives NaN.
    """
    out = quantize(restored.detach().to(torch.float64))
    ref = clean.detach().to(torch.float64)
    _check_pair(out, ref, 3)
    border = spec.crop_border
    prepared: dict[str, tuple[Tensor, Tensor]] = {}
    values: dict[str, float] = {}
    for metric in metrics:
        space = metric.space_for(spec.metrics.color_space)
        if space not in prepared:
            prepared[space] = (_prepare(out, border, space == "y"), _prepare(ref, border, space == "y"))
        try:
            value = float(metric.compute(*prepared[space]))
        except Exception as exc:  # noqa: BLE001 - any failure of a plugin's function is reported with its name
            raise MetricError(f"{where}{metric.origin} raised {type(exc).__name__}: {exc}") from exc
        if math.isnan(value):
            raise MetricError(f"{where}{metric.origin} returned NaN")
        values[metric.name] = value
    return values
