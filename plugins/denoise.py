"""Built-in plugin: colour denoising ``denoise<sigma>`` with additive white Gaussian noise.

``denoise30`` and ``denoise50`` (the paper's pre-training tasks) are registered; any other level such as
``denoise10`` or ``denoise70`` is built on demand by the ``denoise<sigma>`` family (transfer experiments).
The noise sigma is on the 0-255 scale; the noisy image is clipped to [0, 255] and not rounded (official recipe).
"""

from __future__ import annotations

from functools import partial

import torch

from ipt.registry import MetricConventions, TaskFamily, TaskSpec, hookimpl

DEFAULT_SIGMAS = (30, 50)
MAX_SIGMA = 255


def add_noise(clean: torch.Tensor, generator: torch.Generator, sigma: float) -> torch.Tensor:
    """``clean + sigma * N(0, 1)`` clipped to [0, 255]; the noise comes from ``generator``."""
    noise = torch.randn(clean.shape, generator=generator, device=generator.device, dtype=torch.float32)
    noisy = clean + sigma * noise.to(device=clean.device, dtype=clean.dtype)
    return noisy.clamp_(0.0, 255.0)


def denoise_task(sigma: int) -> TaskSpec:
    if not 0 < sigma <= MAX_SIGMA:
        raise ValueError(f"noise level {sigma} out of range: use 1..{MAX_SIGMA} (0-255 scale)")
    return TaskSpec(
        name=f"denoise{sigma}",
        description=f"colour denoising, additive white Gaussian noise sigma={sigma} (0-255 scale)",
        scale=1,
        degrade=partial(add_noise, sigma=float(sigma)),
        metrics=MetricConventions(color_space="y", crop_border=0),
        params={"noise": "gaussian", "sigma": sigma, "clipped": True},
    )


def _build(name: str, sigma: str) -> TaskSpec:
    return denoise_task(int(sigma))


@hookimpl
def ipt_register_tasks() -> list[TaskSpec]:
    return [denoise_task(s) for s in DEFAULT_SIGMAS]


@hookimpl
def ipt_register_task_families() -> list[TaskFamily]:
    return [
        TaskFamily(
            name="denoise<sigma>",
            description="Gaussian denoising at any noise level sigma in 1..255 (0-255 scale)",
            pattern=r"denoise(?P<sigma>[1-9][0-9]{0,2})",
            build=_build,
            examples=["denoise10", "denoise70"],
        )
    ]
