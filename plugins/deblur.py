"""Built-in task ``deblur``: a random blur kernel per image, then a little Gaussian noise.

Per image, one random draw (ranges in :data:`PARAMS`):

* with probability ``p_motion`` a linear motion kernel: ``motion_length`` pixels long at ``motion_angle``
  degrees (0 = horizontal, counter-clockwise), anti-aliased;
* otherwise a Gaussian kernel of odd ``gaussian_size``; with probability ``p_anisotropic`` it has two sigmas
  drawn independently from ``gaussian_sigma`` and a random rotation, else one sigma (isotropic).

Kernels are normalised to sum 1 and applied as a true convolution with reflect padding (one grouped
``conv2d`` for the batch); then Gaussian noise with a per-image sigma from ``noise_sigma`` (0-255 scale) is
added and the result clamped to ``[0, 255]`` (not rounded). All randomness comes from the generator passed in.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from ipt.registry import MetricConventions, TaskSpec, hookimpl

__all__ = ["PARAMS", "blur", "gaussian_kernel", "motion_kernel", "random_kernel", "ipt_register_tasks"]

Range = tuple[float, float]

PARAMS: dict[str, Any] = {
    "p_motion": 0.5,
    "gaussian_size": (7, 21),
    "gaussian_sigma": (0.8, 3.0),
    "p_anisotropic": 0.5,
    "motion_length": (5.0, 21.0),
    "motion_angle": (0.0, 180.0),
    "noise_sigma": (0.0, 2.0),
}


def _rand(generator: torch.Generator, n: int = 1) -> list[float]:
    """``n`` uniform [0, 1) draws as Python floats (drawn on the generator's own device)."""
    return torch.rand(n, generator=generator, device=generator.device, dtype=torch.float64).tolist()


def _odd(n: float) -> int:
    k = int(math.ceil(n))
    return k if k % 2 == 1 else k + 1


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, angle_deg: float = 0.0) -> torch.Tensor:
    """A ``(size, size)`` float64 Gaussian kernel summing to 1.

    ``sigma_x``/``sigma_y`` are the sigmas along the kernel's own axes, rotated by ``angle_deg``
    (``sigma_y=None`` gives an isotropic kernel).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    sigma_y = sigma_x if sigma_y is None else sigma_y
    r = (size - 1) / 2
    coords = torch.arange(size, dtype=torch.float64) - r
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    th = math.radians(angle_deg)
    # Rotate the grid into the kernel's frame; y points up so that angles are counter-clockwise on screen.
    u = xx * math.cos(th) - yy * math.sin(th)
    v = xx * math.sin(th) + yy * math.cos(th)
    k = torch.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return k / k.sum()


def motion_kernel(length: float, angle_deg: float, size: int | None = None) -> torch.Tensor:
    """A linear motion-blur kernel summing to 1: a ``length``-pixel segment through the centre.

    ``angle_deg`` 0 is horizontal, 90 vertical (counter-clockwise on screen). The segment is sampled densely
    and bilinearly splatted, so any length/angle gives a smooth (anti-aliased) 1-px line. ``size`` (odd)
    defaults to the smallest odd size that holds it.
    """
    if length <= 0:
        raise ValueError(f"motion length must be positive, got {length}")
    size = _odd(length) if size is None else size
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {size}")
    c = (size - 1) / 2
    n = max(2, int(math.ceil(length * 4)) + 1)  # ~4 samples per pixel keeps the splat smooth
    t = torch.linspace(-(length - 1) / 2, (length - 1) / 2, n, dtype=torch.float64) if length > 1 else torch.zeros(1, dtype=torch.float64)
    th = math.radians(angle_deg)
    px = (c + t * math.cos(th)).clamp(0, size - 1)
    py = (c - t * math.sin(th)).clamp(0, size - 1)  # rows grow downwards
    x0, y0 = px.floor(), py.floor()
    fx, fy = px - x0, py - y0
    k = torch.zeros(size * size, dtype=torch.float64)
    for ox, oy, w in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi = (x0 + ox).clamp(max=size - 1).long()
        yi = (y0 + oy).clamp(max=size - 1).long()
        k.index_add_(0, yi * size + xi, w.to(torch.float64))
    k = k.view(size, size)
    return k / k.sum()


def random_kernel(
    generator: torch.Generator,
    p_motion: float = PARAMS["p_motion"],
    gaussian_size: tuple[int, int] = PARAMS["gaussian_size"],
    gaussian_sigma: Range = PARAMS["gaussian_sigma"],
    p_anisotropic: float = PARAMS["p_anisotropic"],
    motion_length: Range = PARAMS["motion_length"],
    motion_angle: Range = PARAMS["motion_angle"],
) -> torch.Tensor:
    """One random blur kernel (odd square, float64, CPU, non-negative, sums to 1)."""
    # A fixed number of draws per kernel keeps the generator stream aligned whatever branch is taken.
    r = _rand(generator, 6)
    if r[0] < p_motion:
        length = motion_length[0] + (motion_length[1] - motion_length[0]) * r[1]
        angle = motion_angle[0] + (motion_angle[1] - motion_angle[0]) * r[2]
        return motion_kernel(length, angle)
    lo, hi = gaussian_size
    n_sizes = (hi - lo) // 2 + 1
    size = lo + 2 * min(int(r[1] * n_sizes), n_sizes - 1)
    sx = gaussian_sigma[0] + (gaussian_sigma[1] - gaussian_sigma[0]) * r[2]
    if r[3] < p_anisotropic:
        sy = gaussian_sigma[0] + (gaussian_sigma[1] - gaussian_sigma[0]) * r[4]
        return gaussian_kernel(size, sx, sy, 180.0 * r[5])
    return gaussian_kernel(size, sx)


def _pad_to(k: torch.Tensor, size: int) -> torch.Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def blur(
    clean: torch.Tensor,
    generator: torch.Generator,
    noise_sigma: Range | None = PARAMS["noise_sigma"],
    **kernel_kwargs: Any,
) -> torch.Tensor:
    """Blur each image of ``clean`` (``(B,C,H,W)``, 0-255) with its own :func:`random_kernel`, add noise, clamp.

    ``noise_sigma=None`` disables the noise; ``kernel_kwargs`` go to :func:`random_kernel`.
    """
    if clean.dim() != 4:
        raise ValueError(f"blur expects (B,C,H,W), got shape {tuple(clean.shape)}")
    x = clean if clean.is_floating_point() else clean.float()
    b, c, h, w = x.shape
    kernels = [random_kernel(generator, **kernel_kwargs) for _ in range(b)]
    size = max(k.shape[-1] for k in kernels)
    # conv2d is a correlation: flip so the kernel is applied as a convolution (matters for asymmetric ones).
    weight = torch.stack([_pad_to(k, size).flip(-1, -2) for k in kernels])  # (B, K, K)
    weight = weight.to(device=x.device, dtype=x.dtype).repeat_interleave(c, dim=0).unsqueeze(1)
    p = size // 2
    # Reflect padding needs pad < size; tiny images fall back to replicate.
    mode = "reflect" if p < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, b * c, h, w), (p, p, p, p), mode=mode)
    out = F.conv2d(xp, weight, groups=b * c).view(b, c, h, w)
    if noise_sigma is not None:
        sig = torch.tensor(
            [noise_sigma[0] + (noise_sigma[1] - noise_sigma[0]) * u for u in _rand(generator, b)],
            dtype=x.dtype,
            device=x.device,
        )
        noise = torch.randn((b, c, h, w), generator=generator, device=generator.device, dtype=torch.float32)
        out = out + noise.to(device=x.device, dtype=x.dtype) * sig.view(b, 1, 1, 1)
    return out.clamp(0.0, 255.0)


@hookimpl
def ipt_register_tasks() -> list[TaskSpec]:
    return [
        TaskSpec(
            name="deblur",
            description="Deblurring: random Gaussian (isotropic/anisotropic) or linear motion blur plus weak noise.",
            scale=1,
            degrade=blur,
            params={k: list(v) if isinstance(v, tuple) else v for k, v in PARAMS.items()},
            metrics=MetricConventions(color_space="y"),
        )
    ]
