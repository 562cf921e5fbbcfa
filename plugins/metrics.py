"""Built-in plugin: the metrics ``psnr``, ``ssim`` (the paper's) and ``psnr_b`` (JPEG artefact removal).

Each ``compute`` gets the quantised restored image and the reference already in the metric's colour space and
border-cropped (:mod:`ipt.registry.metrics`); the formulas are in :mod:`ipt.core.evaluation.metrics`.
``psnr``/``ssim`` use the task's colour space (Y for the paper's tasks); ``psnr_b`` is computed on Y, as the
JPEG-deblocking literature reports it. Registered through the entry point ``metrics`` of ``ipt-framework``.
"""

from __future__ import annotations

from torch import Tensor

from ipt.core.evaluation import metrics as m
from ipt.registry import MetricSpec, hookimpl

__all__ = ["ipt_register_metrics"]


def _psnr(restored: Tensor, reference: Tensor) -> float:
    return m.psnr(restored, reference, crop_border=0, y_only=False)


def _ssim(restored: Tensor, reference: Tensor) -> float:
    return m.ssim(restored, reference, crop_border=0, y_only=False)


@hookimpl
def ipt_register_metrics() -> list[MetricSpec]:
    return [
        MetricSpec(name="psnr", description="peak signal-to-noise ratio (8-bit peak 255)", higher_is_better=True,
                   compute=_psnr, unit="dB"),
        MetricSpec(name="ssim", description="SSIM, Gaussian 11x11 window, sigma 1.5 (Wang et al. 2004)",
                   higher_is_better=True, compute=_ssim),
        MetricSpec(name="psnr_b", description="blocking-aware PSNR (Yim & Bovik 2011), 8x8 blocks, on Y",
                   higher_is_better=True, compute=m.psnr_b, color_space="y", unit="dB", label="PSNR-B"),
    ]
