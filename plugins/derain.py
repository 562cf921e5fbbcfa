"""Built-in task ``derain``: synthetic rain streaks in the style of Rain100L.

The rain layer is built per image from one random draw of these parameters (ranges in :data:`PARAMS`):

* ``density`` - fraction of pixels that seed a streak (sparse random drops, each with a brightness in
  ``[0.5, 1]``);
* ``length`` - streak length in pixels; every seed is smeared by a line (motion-blur) kernel of that length;
* ``angle`` - streak direction in degrees from vertical (all streaks of an image share it, as wind would);
* ``width`` - Gaussian sigma across the streak in pixels (0.5-0.9 gives streaks about 1-2 px wide);
* ``intensity`` - peak brightness of the rain layer as a fraction of 255.

With the default ranges a rainy image scores about 25 dB PSNR (Y) against its clean original, close to the
26.9 dB of the Rain100L inputs (paper, Table 3): light, thin, semi-transparent streaks.

The layer is grayscale (same on the three channels), added to the clean image and clamped to ``[0, 255]``
(not rounded). Seeds are drawn on a canvas larger than the image by the kernel size and convolved without
padding, so streaks reach the borders as densely as the centre. Per-image kernels are applied with a single
grouped ``conv2d``. All randomness comes from the ``torch.Generator`` passed in.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ipt.registry import MetricConventions, TaskSpec, hookimpl

__all__ = ["PARAMS", "add_rain", "streak_kernels", "synthesize_rain", "ipt_register_tasks"]

Range = tuple[float, float]

PARAMS: dict[str, Any] = {
    "density": (0.001, 0.004),
    "length": (10.0, 35.0),
    "angle": (-30.0, 30.0),
    "width": (0.5, 0.9),
    "intensity": (0.2, 0.5),
}


def _uniform(generator: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    """``n`` float64 draws from ``U(lo, hi)`` on the CPU (drawn on the generator's device, then moved)."""
    u = torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).cpu()
    return lo + (hi - lo) * u


def streak_kernels(length: torch.Tensor, angle_deg: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Line kernels ``(N, 1, Kh, Kw)`` (float64, peak about 1) for N streaks.

    A pixel's weight is ``exp(-d^2 / (2 width^2))`` with ``d`` its distance to the segment of the given
    ``length`` through the centre at ``angle_deg`` from vertical; all kernels share the (odd) size that fits the
    largest one, so they can be stacked for a grouped convolution.
    """
    length, angle, width = (t.to(torch.float64).reshape(-1) for t in (length, angle_deg, width))
    theta = torch.deg2rad(angle)
    dx, dy = torch.sin(theta), torch.cos(theta)
    margin = 2 * math.ceil(3 * float(width.max()))
    half_h = math.ceil(float((length * dy.abs()).max()) / 2) + margin // 2
    half_w = math.ceil(float((length * dx.abs()).max()) / 2) + margin // 2
    ys = torch.arange(-half_h, half_h + 1, dtype=torch.float64).view(1, -1, 1)
    xs = torch.arange(-half_w, half_w + 1, dtype=torch.float64).view(1, 1, -1)
    dx, dy, half_len, w = (t.view(-1, 1, 1) for t in (dx, dy, length / 2, width))
    # Project each pixel on the streak direction, clamp to the segment, measure the distance to it.
    t = (xs * dx + ys * dy).clamp(-half_len, half_len)
    d2 = (xs - t * dx) ** 2 + (ys - t * dy) ** 2
    return torch.exp(-d2 / (2 * w**2)).unsqueeze(1)


def synthesize_rain(
    shape_or_image: torch.Tensor | tuple[int, ...] | torch.Size,
    generator: torch.Generator,
    density: Range = PARAMS["density"],
    length: Range = PARAMS["length"],
    angle: Range = PARAMS["angle"],
    width: Range = PARAMS["width"],
    intensity: Range = PARAMS["intensity"],
) -> torch.Tensor:
    """A rain-streak layer ``(B, 1, H, W)`` on the 0-255 scale (values in ``[0, 255 * intensity]``).

    ``shape_or_image`` is an image ``(B, C, H, W)`` (its device and float dtype are used) or a shape
    ``(B, H, W)`` / ``(B, C, H, W)`` (float32, on the generator's device). Each range is ``(low, high)`` of a
    uniform draw made once per image.
    """
    if isinstance(shape_or_image, torch.Tensor):
        if shape_or_image.dim() != 4:
            raise ValueError(f"expected an image (B,C,H,W), got shape {tuple(shape_or_image.shape)}")
        b, h, w = shape_or_image.shape[0], shape_or_image.shape[-2], shape_or_image.shape[-1]
        device = shape_or_image.device
        dtype = shape_or_image.dtype if shape_or_image.is_floating_point() else torch.float32
    else:
        shape = tuple(int(s) for s in shape_or_image)
        if len(shape) not in (3, 4):
            raise ValueError(f"expected a shape (B,H,W) or (B,C,H,W), got {shape}")
        b, h, w = shape[0], shape[-2], shape[-1]
        device, dtype = generator.device, torch.float32

    dens = _uniform(generator, b, *density)
    lens = _uniform(generator, b, *length)
    angs = _uniform(generator, b, *angle)
    wids = _uniform(generator, b, *width)
    ints = _uniform(generator, b, *intensity)

    kernels = streak_kernels(lens, angs, wids)
    kh, kw = kernels.shape[-2:]
    # Seeds on an enlarged canvas: a valid convolution then gives full-density streaks up to the borders.
    u = torch.rand(
        (b, 1, h + kh - 1, w + kw - 1), generator=generator, device=generator.device, dtype=torch.float32
    ).to(device)
    dens_d = dens.to(device=device, dtype=torch.float32).view(b, 1, 1, 1)
    # One draw serves both: u < density marks a seed, and u / density is uniform in [0, 1) given that.
    seeds = torch.where(u < dens_d, 0.5 + 0.5 * u / dens_d, torch.zeros_like(u)).to(dtype)
    layer = F.conv2d(seeds.view(1, b, *seeds.shape[-2:]), kernels.to(device=device, dtype=dtype), groups=b)
    layer = layer.view(b, 1, h, w).clamp(0.0, 1.0)  # overlapping streaks saturate instead of adding up
    return layer * (255.0 * ints.to(device=device, dtype=dtype)).view(b, 1, 1, 1)


def add_rain(clean: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``clean`` (``(B,3,H,W)``, 0-255) plus a synthetic rain layer, clamped to ``[0, 255]``."""
    x = clean if clean.is_floating_point() else clean.float()
    return (x + synthesize_rain(x, generator)).clamp(0.0, 255.0)


@hookimpl
def ipt_register_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="derain",
            description="Rain-streak removal (synthetic Rain100L-style streaks added to clean images).",
            scale=1,
            degrade=add_rain,
            params={k: list(v) for k, v in PARAMS.items()},
            metrics=MetricConventions(color_space="y"),
        )
    ]
