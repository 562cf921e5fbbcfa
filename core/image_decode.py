"""Dataset records -> RGB pixel tensors on the 0-255 scale, with a skip reason for images that cannot be used.

Training data is messy: grey, alpha, palette, CMYK and 16-bit images are converted; corrupt or truncated files
raise :class:`UnreadableImage` carrying a short ``reason`` that the data pipeline counts.  Reading single image
files for inference (keeping alpha and 16-bit RGB) is :mod:`ipt.core.image_io`'s job.
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


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _rgb_pixels(image: PILImage.Image) -> torch.Tensor:
    """``(3, H, W)`` pixels on the 0-255 scale: uint8 for 8-bit images (4x less cache memory), else float32."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # 'I' is how Pillow opens 16-bit greyscale PNG/TIFF in some versions, so it is read as 16-bit too.
        array = np.asarray(image).astype(np.float32) * (255.0 / 65535.0)
        array = np.clip(array, 0.0, 255.0)
    elif mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if array.size and float(np.nanmax(array)) <= 1.0:  # float images are usually stored on 0..1
            array = array * 255.0
        array = np.clip(np.nan_to_num(array), 0.0, 255.0)
    elif mode in ("L", "RGB"):
        array = np.asarray(image)
    elif mode == "1":
        array = np.asarray(image.convert("L"))
    elif mode in ("LA", "La"):
        array = np.asarray(image)[..., 0]  # alpha dropped: the colour data is what is restored
    elif mode in ("RGBA", "RGBa", "RGBX"):
        array = np.asarray(image)[..., :3]
    elif mode in ("P", "PA"):
        array = np.asarray(image.convert("RGBA"))[..., :3]
    else:  # CMYK, YCbCr, HSV, ...
        try:
            array = np.asarray(image.convert("RGB"))
        except (ValueError, OSError) as exc:
            raise UnreadableImage(UNSUPPORTED_MODE, f"image mode {mode!r} cannot be converted to RGB ({exc})") from exc
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UnreadableImage(UNSUPPORTED_MODE, f"image mode {mode!r} gave pixels of shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


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
