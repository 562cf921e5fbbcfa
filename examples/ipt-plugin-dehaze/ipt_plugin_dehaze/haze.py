"""Haze synthesis by the atmospheric scattering model (Koschmieder's law, as in RESIDE-style datasets).

    I = J * t + A * (1 - t),    t = exp(-beta * d)

``J`` is the clean image, ``d`` in [0, 1] a smooth random depth proxy, ``beta`` the scattering coefficient and
``A`` the airlight (a bright, slightly tinted colour). Per image, one draw of (ranges in :data:`PARAMS`):

* the depth proxy: a linear ramp in a random direction (a receding ground plane) mixed with bicubically
  upsampled noise on a coarse grid (hills and buildings), rescaled to exactly [0, 1];
* ``beta`` (haze density) and the airlight level ``A`` as a fraction of 255, times a per-channel tint.

Everything random comes from the ``torch.Generator`` passed in; images stay on the 0-255 scale, clamped to
[0, 255] and not rounded.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["PARAMS", "add_haze", "depth_map", "scatter"]

PARAMS: dict[str, Any] = {
    "beta": [0.6, 1.8],  # scattering coefficient; t ranges down to exp(-beta) at the farthest point
    "airlight": [0.7, 1.0],  # airlight level as a fraction of 255
    "tint": 0.05,  # each channel of A is scaled by 1 + U(-tint, tint)
    "depth_grid": 4,  # coarse noise grid (grid x grid) upsampled to the image: low-frequency depth
    "ramp_weight": [0.3, 0.8],  # weight of the linear ramp in the depth mix (rest: smooth noise)
}


def _uniform(generator: torch.Generator, shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
    """``U(lo, hi)`` draws in float32 on the generator's device (the caller moves them)."""
    return lo + (hi - lo) * torch.rand(shape, generator=generator, device=generator.device)


def _rescale(x: torch.Tensor) -> torch.Tensor:
    """Min-max rescale each image of ``(N, 1, H, W)`` to [0, 1] (a constant image becomes 0)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    span = x.amax(dim=(-2, -1), keepdim=True) - lo
    return (x - lo) / span.clamp_min(1e-12)


def depth_map(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator,
    grid: int = PARAMS["depth_grid"],
    ramp_weight: tuple[float, float] = tuple(PARAMS["ramp_weight"]),
) -> torch.Tensor:
    """``n`` smooth random depth proxies ``(n, 1, height, width)`` (float32, CPU), each spanning [0, 1]."""
    angle = _uniform(generator, (n, 1, 1, 1), 0.0, 2 * math.pi).cpu()
    weight = _uniform(generator, (n, 1, 1, 1), *ramp_weight).cpu()
    coarse = torch.rand((n, 1, grid, grid), generator=generator, device=generator.device).cpu()
    ys = torch.linspace(-1.0, 1.0, height).view(1, 1, -1, 1)
    xs = torch.linspace(-1.0, 1.0, width).view(1, 1, 1, -1)
    ramp = _rescale(torch.cos(angle) * xs + torch.sin(angle) * ys)
    hills = _rescale(F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True))
    return _rescale(weight * ramp + (1 - weight) * hills)


def scatter(clean: torch.Tensor, depth: torch.Tensor, beta: torch.Tensor, airlight: torch.Tensor) -> torch.Tensor:
    """The scattering model ``J * t + A * (1 - t)`` with ``t = exp(-beta * depth)`` (broadcasting, no clamp)."""
    t = torch.exp(-beta * depth)
    return clean * t + airlight * (1 - t)


def add_haze(
    clean: torch.Tensor,
    generator: torch.Generator,
    beta: tuple[float, float] = tuple(PARAMS["beta"]),
    airlight: tuple[float, float] = tuple(PARAMS["airlight"]),
    tint: float = PARAMS["tint"],
) -> torch.Tensor:
    """Hazy version of ``clean`` (B, 3, H, W) on the 0-255 scale: same shape, dtype and device, in [0, 255]."""
    n, _, h, w = clean.shape
    depth = depth_map(n, h, w, generator)
    b = _uniform(generator, (n, 1, 1, 1), *beta).cpu()
    level = _uniform(generator, (n, 1, 1, 1), *airlight).cpu()
    colour = 1 + _uniform(generator, (n, 3, 1, 1), -tint, tint).cpu()
    a = (level * colour).clamp(max=1.0) * 255.0
    dev, dt = clean.device, clean.dtype
    hazy = scatter(clean, depth.to(dev, dt), b.to(dev, dt), a.to(dev, dt))
    return hazy.clamp_(0.0, 255.0)
