"""Labelled image grids (rows of equally sized panels) for people who would rather look than read.

:func:`image_grid` lays out ``(3, h, w)`` tensors on 0-255 in rows under column titles, each row with a caption;
:func:`error_window` finds the crop where a restored image is furthest from its target, which is where a reader
should look first. Used by ``ipt eval --save-dir`` (worst and best images).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ipt.core.images.io import to_uint8

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

CELL = 192  # shortest side of a displayed panel, px (small crops are enlarged with nearest neighbours)
_GAP, _CAPTION, _TITLE = 4, 20, 20


def _font(size: int):  # noqa: ANN202 - PIL font object
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def image_grid(rows: Sequence[tuple[str, Sequence[Tensor]]], titles: Sequence[str]) -> "Image.Image":
    """A PIL RGB image: one row per ``(caption, panels)``, ``titles`` above the columns.

    Panels are ``(3, h, w)`` on 0-255, all of one size; displayed enlarged by an integer factor (nearest) so that the
    shorter side is at least :data:`CELL` px. Raises ``ValueError`` for no rows or panels of different sizes.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("image_grid needs at least one row")
    h, w = rows[0][1][0].shape[-2:]
    if any(tuple(p.shape[-2:]) != (h, w) for _, panels in rows for p in panels):
        raise ValueError("image_grid: all panels must have the same size")
    zoom = max(1, -(-CELL // min(h, w)))
    ph, pw = h * zoom, w * zoom
    cols = max(len(panels) for _, panels in rows)
    width = cols * pw + (cols - 1) * _GAP
    height = _TITLE + len(rows) * (_CAPTION + ph + _GAP)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(14)
    for c, title in enumerate(titles):
        draw.text((c * (pw + _GAP) + 2, 2), title, fill=(0, 0, 0), font=font)
    for r, (caption, panels) in enumerate(rows):
        y = _TITLE + r * (_CAPTION + ph + _GAP)
        draw.text((2, y + 2), caption, fill=(0, 0, 0), font=font)
        for c, panel in enumerate(panels):
            tile = Image.fromarray(to_uint8(panel)).resize((pw, ph), Image.NEAREST)
            canvas.paste(tile, (c * (pw + _GAP), y + _CAPTION))
    return canvas


def error_window(restored: Tensor, target: Tensor, size: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of the ``size`` x ``size`` window (clipped to the image) with the largest mean absolute
    error between ``restored`` and ``target`` ``(3, H, W)``; searched on a grid of ``side // 4`` px."""
    H, W = target.shape[-2:]
    side = min(size, H, W)
    err = (restored.float() - target.float()).abs().mean(0, keepdim=True)[None]  # (1, 1, H, W)
    step = max(1, side // 4)
    means = F.avg_pool2d(err, side, stride=step)[0, 0]
    idx = int(torch.argmax(means))
    top, left = divmod(idx, means.shape[-1])
    return top * step, left * step, side


def upscale_nearest(img: Tensor, size: tuple[int, int]) -> Tensor:
    """``(3, h, w)`` -> ``(3, *size)`` by nearest neighbour (shows the degraded input of SR at the output size)."""
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return F.interpolate(img[None].float(), size=size, mode="nearest")[0]
