"""Dataset records -> RGB pixel tensors on the 0-255 scale, through the one decoder of :mod:`ipt.core.images.io`.

Training data is messy: grey, alpha, palette, CMYK and 16-bit images are converted; corrupt, truncated or oversized
files raise :class:`~ipt.core.images.io.ImageReadError` (also importable here as ``UnreadableImage``) whose
``reason`` is a skip category (``corrupt``, ``unsupported_mode``, ``too_large``) that the data pipeline counts.
This module only adapts records (a ``datasets`` ``{"path", "bytes"}`` dict, a path or encoded bytes) to
:func:`~ipt.core.images.io.decode_samples` and drops alpha.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from ipt.core.images.io import (
    CORRUPT,
    TOO_LARGE,
    UNSUPPORTED_MODE,
    ImageReadError,
    Samples,
    UnsupportedImageMode,
    decode_samples,
    pil_pixels,
)
from PIL import Image as PILImage
from PIL import ImageOps

__all__ = [
    "CORRUPT",
    "TOO_LARGE",
    "UNSUPPORTED_MODE",
    "ImageRecord",
    "UnreadableImage",
    "decode_record",
    "read_pixels",
    "to_rgb_tensor",
]

# A ``datasets`` Image(decode=False) record ({"path", "bytes"}), a file path or encoded bytes.
ImageRecord = Union[dict, str, Path, bytes]

# The one image error type, under the name the data pipeline has used.
UnreadableImage = ImageReadError


def _chw(samples: Samples) -> torch.Tensor:
    """``(3, H, W)`` colour samples, alpha dropped: uint8 for 8-bit files (4x less cache memory), else float32."""
    arr = samples.array if samples.array.ndim == 3 else samples.array[:, :, None]
    colour = arr[..., : 1 if arr.shape[2] in (1, 2) else 3]
    chw = np.broadcast_to(colour.transpose(2, 0, 1), (3, *colour.shape[:2]))
    if chw.dtype == np.uint8 and samples.scale == 1.0:
        return torch.from_numpy(np.array(chw, order="C"))  # one writable copy (decoders' arrays may be read-only)
    out = torch.from_numpy(np.array(chw, dtype=np.float32, order="C"))
    return out.mul_(samples.scale).clamp_(0, 255) if samples.scale != 1.0 else out


def to_rgb_tensor(image: PILImage.Image) -> torch.Tensor:
    """An opened PIL image as float32 ``(3, H, W)`` RGB on the 0-255 scale.

    Grey (``L``, ``1``, ``LA``) is repeated to 3 channels, alpha is dropped (``LA``, ``RGBA``, ``PA``), palette
    and CMYK/YCbCr images are converted, 16-bit (``I;16*``, ``I``) is scaled to 0-255 without rounding, EXIF
    orientation is applied. Raises :class:`UnreadableImage` when the pixels cannot be decoded or converted.
    """
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
    except Exception as exc:  # truncated/corrupt data surfaces on load(): OSError, SyntaxError, ValueError...
        raise UnreadableImage(None, f"cannot decode image ({type(exc).__name__}: {exc})", CORRUPT) from exc
    try:
        pixels = pil_pixels(image, keep_alpha=False)
    except UnsupportedImageMode as exc:
        raise UnreadableImage(None, str(exc), UNSUPPORTED_MODE) from exc
    return _chw(Samples(pixels.array, 1.0, pixels.bit_depth, False, image.mode)).float()


def _source(record: ImageRecord) -> tuple[str | Path | bytes, str | None]:
    if isinstance(record, dict):
        data, path = record.get("bytes"), record.get("path")
        if data is not None:
            return bytes(data), path
        if path is None:
            raise UnreadableImage(None, "empty image record (no bytes and no path)", CORRUPT)
        return path, path
    if isinstance(record, (bytes, bytearray)):
        return bytes(record), None
    return record, str(record)


def read_pixels(record: ImageRecord) -> torch.Tensor:
    """``(3, H, W)`` RGB on 0-255: uint8 for 8-bit images, float32 otherwise; raises :class:`UnreadableImage`."""
    source, name = _source(record)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise UnreadableImage(name, f"file not found ({source})", CORRUPT)
    return _chw(decode_samples(source, name))


def decode_record(record: ImageRecord) -> tuple[torch.Tensor | None, str | None]:
    """Decode a dataset record (``{"path", "bytes"}`` dict, path or bytes) to float32 ``(3,H,W)`` 0-255 RGB.

    Returns ``(tensor, None)``, or ``(None, reason)`` for an image that must be skipped (the caller counts it).
    """
    try:
        return read_pixels(record).float(), None
    except UnreadableImage as exc:
        return None, exc.reason
