"""Built-in plugin: bicubic super-resolution ``sr2``, ``sr3``, ``sr4``.

Degradation: MATLAB-compatible bicubic downscaling (antialiased ``imresize``, as the SR benchmarks use),
rounded and clipped to 8-bit values like stored LR images. Scored on Y with a border crop equal to the scale.
"""

from __future__ import annotations

from functools import partial

import torch

from ipt.core.images.resize import MATLAB_BICUBIC, bicubic_degrade
from ipt.registry import MetricConventions, TaskSpec, hookimpl

SCALES = (2, 3, 4)


def bicubic_lr(clean: torch.Tensor, generator: torch.Generator, scale: int) -> torch.Tensor:
    """Low-resolution input for ``clean`` (B,3,H,W), H and W divisible by ``scale`` (deterministic)."""
    h, w = clean.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"sr{scale}: image size {h}x{w} is not divisible by the scale {scale}")
    return bicubic_degrade(clean, scale)


def sr_task(scale: int) -> TaskSpec:
    return TaskSpec(
        name=f"sr{scale}",
        description=f"x{scale} super-resolution of MATLAB-bicubic downscaled images",
        scale=scale,
        degrade=partial(bicubic_lr, scale=scale),
        metrics=MetricConventions(color_space="y"),  # border crop = scale
        params={"kernel": MATLAB_BICUBIC, "factor": scale, "quantised": True},
    )


@hookimpl
def ipt_register_tasks() -> list[TaskSpec]:
    return [sr_task(s) for s in SCALES]
