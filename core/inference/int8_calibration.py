"""Calibration of int8 inference (``--dtype int8``): the patches the static activation scales are measured on.

Static int8 scales (:mod:`ipt.core.model.int8`) come from running a few patches through the fp32 model. They are
made here, the same way for every command, so that ``ipt restore``, ``ipt eval`` and ``ipt bench`` quantize a
model identically and a result never depends on which images came first: ``count`` crops (default 16) of the
built-in training photos (:func:`ipt.core.images.photos.train_photos`; the held-out ``coffee`` and ``flower`` are
not used), each ``patch_size * scale`` px, taken at seeded positions and degraded by the task's own
degradation (:meth:`ipt.registry.spec.TaskSpec.degrade`, seeded), so the network sees inputs like the ones it
restores. Cost: ``count`` fp32 patches once per (model, task) and process (paper preset: ~5 s on 2 cores).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ipt.core.images.io import read_image
from ipt.core.images.photos import train_photos

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.int8 import ActivationRanges
    from ipt.core.model.ipt import IPT

__all__ = [
    "CALIBRATION_MARGIN", "CALIBRATION_PATCHES", "calibration_patches", "ensure_int8_calibration", "task_patches",
]

#: Patches a calibration runs (two crops from each of the eight built-in training photos).
CALIBRATION_PATCHES = 16
#: Headroom on every calibrated range (see :class:`ipt.core.model.int8.ActivationRanges`), chosen by measurement
#: (``benchmarks/RESULTS.md``): at 1.0 a third of the layer calls on CBSD68 crops met a patch beyond the range
#: (the slow per-patch path); at 1.5 none did, and PSNR stayed within 0.01 dB of fp32 on natural images.
CALIBRATION_MARGIN = 1.5


def calibration_patches(model: "IPT", task: str, count: int = CALIBRATION_PATCHES, seed: int = 0) -> torch.Tensor:
    """``count`` degraded patches ``(count, in_channels, S, S)`` float32 on 0-255 (S = the model's patch size) of
    the built-in training photos, for calibrating ``task``; deterministic for a given ``seed``. Raises
    ``FileNotFoundError`` when the built-in photos are missing (scikit-image/scikit-learn not installed)."""
    return task_patches(model, task, train_photos(), count, seed)


def task_patches(model: "IPT", task: str, photos: "list[Path]", count: int, seed: int = 0) -> torch.Tensor:
    """``count`` network inputs ``(count, in_channels, S, S)`` float32 on 0-255: crops of ``photos`` (in turn, at
    seeded positions, ``S * scale`` px) degraded by ``task``'s degradation (seeded). ``ipt bench`` times its
    forward passes on these too (from the held-out photos): natural inputs, as restoring an image gives."""
    spec = model.spec(task)
    size = model.config.patch_size * spec.scale
    photos = [read_image(p).rgb for p in photos]
    gen = torch.Generator().manual_seed(seed)
    crops = []
    for i in range(count):
        img = photos[i % len(photos)]
        h, w = img.shape[-2:]
        top = int(torch.randint(0, h - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        crops.append(img[:, top : top + size, left : left + size])
    clean = torch.stack(crops).float()
    return spec.degrade(clean, gen).float()


def ensure_int8_calibration(model: "IPT", task: str) -> "ActivationRanges | None":
    """The model's int8 calibration table for ``task``, made now (:meth:`IPT.calibrate_int8` on
    :func:`calibration_patches`, on the model's device) unless the model already has one. Without the built-in
    photos (scikit-image/scikit-learn missing) it warns once and returns None: int8 then runs with dynamic
    per-patch scales (same quality, slower)."""
    ranges = model.int8_ranges.get(task)
    if ranges is None:
        try:
            patches = calibration_patches(model, task)
        except FileNotFoundError as exc:
            warnings.warn(f"int8: no calibration patches ({exc}); using dynamic per-patch scales (slower)",
                          RuntimeWarning, stacklevel=2)
            return None
        device = next(model.parameters()).device
        ranges = model.calibrate_int8(task, patches.to(device), margin=CALIBRATION_MARGIN)
    return ranges
