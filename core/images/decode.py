"""Dataset records -> RGB pixel tensors on the 0-255 scale, with a skip reason for images that cannot be used.

Training data is messy: grey, alpha, palette, CMYK and 16-bit images are converted (by
:func:`ipt.core.image_io.pil_pixels`, shared with inference); corrupt or truncated files raise
:class:`UnreadableImage` carrying a short ``reason`` that the data pipeline counts.  Reading single image files for
inference (keeping alpha and 16-bit RGB) is :mod:`ipt.core.images.io`'s job.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps

from ipt.core.images.io import UnsupportedImageMode, pil_pixels

__all__ = [
    "CORRUPT",
    "UNSUPPORTED_MODE",
    "ImageRecord",
    "UnreadableImage",
    "to_rgb_tensor",
    "read_pixels",
    "decode_record",
]

# Skip reasons (keys of the data pipeline's ``skipped`` counters).
CORRUPT = "corrupt"
UNSUPPORTED_MODE = "unsupported_mode"

# A ``datasets`` Image(decode=False) record ({"path", "bytes"}), a file path or encoded bytes.
ImageRecord = Union[dict, str, Path, bytes]


class UnreadableImage(ValueError):
    """An image that cannot become an RGB tensor; ``reason`` is a skip category (``corrupt``, ...)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _rgb_pixels(image: PILImage.Image) -> torch.Tensor:
    """``(3, H, W)`` pixels on the 0-255 scale: uint8 for 8-bit images (4x less cache memory), else float32."""
    try:
        samples = pil_pixels(image, keep_alpha=False)  # alpha dropped: the colour data is what is restored
    except UnsupportedImageMode as exc:
        raise UnreadableImage(UNSUPPORTED_MODE, str(exc)) from exc
    chw = samples.array.transpose(2, 0, 1)
    if chw.shape[0] == 1:
        chw = np.broadcast_to(chw, (3, *chw.shape[1:]))
    return torch.from_numpy(np.array(chw, order="C"))  # one writable copy (Pillow's arrays are read-only)


def to_rgb_tensor(image: PILImage.Image) -> torch.Tensor:
    """A PIL image as float32 ``(3, H, W)`` RGB on the 0-255 scale.

    Grey (``L``, ``1``, ``LA``) is repeated to 3 channels, alpha is dropped (``LA``, ``RGBA``, ``PA``), palette
    and CMYK/YCbCr images are converted, 16-bit (``I;16*``, ``I``) is scaled to 0-255 without rounding, EXIF
    orientation is applied.  Raises :class:`UnreadableImage` when the pixels cannot be decoded or converted.
    """
    return _decode(image).float()


def _decode(image: PILImage.Image) -> torch.Tensor:
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except UnreadableImage:
        raise
    except Exception as exc:  # truncated/corrupt data surfaces on load(): OSError, SyntaxError, ValueError...
        raise UnreadableImage(CORRUPT, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    return _rgb_pixels(image)


def _open(record: ImageRecord) -> PILImage.Image:
    if isinstance(record, dict):
        data, path = record.get("bytes"), record.get("path")
        record = data if data is not None else path
        if record is None:
            raise UnreadableImage(CORRUPT, "empty image record (no bytes and no path)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            if isinstance(record, (bytes, bytearray)):
                return PILImage.open(io.BytesIO(record))
            return PILImage.open(record)
    except FileNotFoundError as exc:
        raise UnreadableImage(CORRUPT, f"file not found ({exc.filename})") from exc
    except Exception as exc:
        raise UnreadableImage(CORRUPT, f"cannot open image ({type(exc).__name__}: {exc})") from exc


def read_pixels(record: ImageRecord) -> torch.Tensor:
    """``(3, H, W)`` RGB on 0-255: uint8 for 8-bit images, float32 otherwise; raises :class:`UnreadableImage`."""
    image = _open(record)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            return _decode(image)
    finally:
        image.close()


def decode_record(record: ImageRecord) -> tuple[torch.Tensor | None, str | None]:
    """Decode a dataset record (``{"path", "bytes"}`` dict, path or bytes) to float32 ``(3,H,W)`` 0-255 RGB.

    Returns ``(tensor, None)``, or ``(None, reason)`` for an image that must be skipped (the caller counts it).
    """
    try:
        return read_pixels(record).float(), None
    except UnreadableImage as exc:
        return None, exc.reason
