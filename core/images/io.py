"""Reading and writing images as float tensors on the 0-255 scale (PNG, JPEG, WebP, TIFF, BMP; 8 and 16 bit).

* :func:`read_image` returns a :class:`LoadedImage`: RGB ``(3, H, W)`` float32 on 0-255 (grey is repeated to RGB,
  16-bit samples are scaled by 255/65535), the alpha channel kept aside ``(H, W)`` on 0-255 (RGBA, LA, palette or
  grey/RGB images with a transparent colour), the source bit depth (8 or 16) and the PIL mode it had.
* :func:`write_image` quantises to 8 or 16 bit and re-attaches an alpha channel, resizing it (bicubic) when the
  image changed size (super-resolution). Files are written under a temporary name and renamed.
* :func:`iter_images` expands folders (sorted, non-recursive) into image files.
* :func:`pil_pixels` is the one place that turns any PIL mode into grey/RGB samples on 0-255 (alpha optional); the
  training data pipeline (:mod:`ipt.core.images.decode`) uses it too.

Pillow decodes 16-bit RGB(A) PNG and TIFF files to 8 bit, so those go through torchvision's PNG decoder and
tifffile (a dependency of scikit-image) instead; 16-bit PNGs are written by a small encoder here (Pillow cannot).
Any unreadable, truncated or unsupported file raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ipt.core.files import atomic_write_file

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "UnsupportedImageMode",
    "LoadedImage",
    "PilPixels",
    "pil_pixels",
    "read_image",
    "image_size",
    "write_image",
    "resize_alpha",
    "iter_images",
    "to_uint8",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_U16_TO_255 = 255.0 / 65535.0
# 'I' (32-bit integers) is how Pillow opens 16-bit grey PNG/TIFF in some versions, so it is read as 16-bit too.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageReadError(ValueError):
    """An image file that cannot be read; ``str()`` names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class UnsupportedImageMode(ValueError):
    """A PIL image whose mode cannot be converted to grey/RGB samples; ``str()`` names the mode."""


@dataclass(frozen=True)
class LoadedImage:
    """An image on the 0-255 scale: ``rgb`` float32 ``(3, H, W)``, ``alpha`` float32 ``(H, W)`` or ``None``."""

    rgb: Tensor
    alpha: Tensor | None
    bit_depth: int  # 8 or 16 (bits per sample of the file)
    mode: str  # the PIL mode (or "RGB;16"/"RGBA;16"... for files decoded without PIL)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.rgb.shape[-2]), int(self.rgb.shape[-1])


# -- reading -------------------------------------------------------------------------------------------------
def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None if the file is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or not head.startswith(_PNG_SIGNATURE):
        return None
    return head[24], head[25]


def _from_array(arr: np.ndarray, scale: float, mode: str, bit_depth: int, path: Path) -> LoadedImage:
    """(H, W), (H, W, C) with C in 1..4 -> LoadedImage (grey repeated, alpha split)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise ImageReadError(path, f"unsupported image layout {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1) * scale
    c = t.shape[0]
    color = t[:1].expand(3, -1, -1) if c in (1, 2) else t[:3]
    alpha = t[c - 1].clone() if c in (2, 4) else None
    return LoadedImage(color.clone().clamp_(0, 255), None if alpha is None else alpha.clamp_(0, 255), bit_depth, mode)


class PilPixels(NamedTuple):
    """Samples of a PIL image: ``array`` ``(H, W, C)`` on 0-255, C = 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA."""

    array: np.ndarray  # uint8 when bit_depth == 8 (kept small for caches), else float32 clipped to [0, 255]
    bit_depth: int  # 8, or 16 for 16-bit integer and float images
    has_alpha: bool  # the last channel is (straight, not premultiplied) alpha


def _float_samples_to_255(arr: np.ndarray) -> np.ndarray:
    """Float samples -> float32 on [0, 255]; samples all <= 1 are taken as 0..1 (the usual float convention)."""
    arr = np.nan_to_num(arr.astype(np.float32, copy=False))
    if arr.size and float(arr.max()) <= 1.0:
        arr = arr * 255.0
    return np.clip(arr, 0.0, 255.0)


def pil_pixels(im: PILImage, keep_alpha: bool = True) -> PilPixels:
    """The samples of a decoded PIL image in any mode; see :class:`PilPixels`.

    16-bit grey (``I;16*``, ``I``) is scaled by 255/65535, ``F`` by 255 when its samples lie in 0..1; ``1``,
    palette, CMYK, YCbCr, ... are converted to 8-bit grey/RGB. With ``keep_alpha`` the alpha of RGBA/LA/PA
    images and of images with a transparent colour is returned as the last channel (premultiplied ``RGBa``/``La``
    are un-premultiplied); without it alpha is dropped. Raises :class:`UnsupportedImageMode`.
    """
    mode = im.mode
    if mode in _SIXTEEN_BIT_MODES:
        arr = np.clip(np.asarray(im).astype(np.float32) * _U16_TO_255, 0.0, 255.0)
        return PilPixels(arr[..., None], 16, False)
    if mode == "F":
        return PilPixels(_float_samples_to_255(np.asarray(im))[..., None], 16, False)
    has_alpha = keep_alpha and (mode in _ALPHA_MODES or "transparency" in im.info)
    try:
        if mode == "La":  # Pillow converts premultiplied grey to nothing but LA
            im, mode = im.convert("LA"), "LA"
        if mode in ("L", "RGB") and not has_alpha:
            arr = np.asarray(im)
        elif mode == "LA":
            arr = np.asarray(im)[..., : 2 if has_alpha else 1]
        else:
            arr = np.asarray(im.convert("RGBA" if has_alpha else "L" if mode == "1" else "RGB"))
    except (ValueError, OSError) as exc:
        raise UnsupportedImageMode(f"image mode {mode!r} cannot be converted to RGB ({exc})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in ((1, 2, 3, 4) if has_alpha else (1, 3)):
        raise UnsupportedImageMode(f"image mode {mode!r} gave pixels of shape {arr.shape}")
    return PilPixels(arr, 8, has_alpha)


def _read_png16(path: Path, colour_type: int) -> LoadedImage:
    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 flags its image codecs as deprecated; it is the one installed decoder that keeps
            # 16-bit colour PNGs at 16 bit (Pillow reduces them to 8 bit).
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png, read_file

            data = decode_png(read_file(str(path)), mode=ImageReadMode.UNCHANGED)
    except ImportError:
        return _read_pil(path)  # no 16-bit decoder: 8-bit samples from Pillow
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError with libpng's message
        raise ImageReadError(path, f"cannot decode 16-bit PNG ({exc})") from None
    arr = data.permute(1, 2, 0).numpy().astype(np.float32)
    mode = {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}.get(colour_type, "16-bit")
    return _from_array(arr, _U16_TO_255, mode, 16, path)


def _read_tiff_deep(path: Path) -> LoadedImage:
    import tifffile

    try:
        arr = tifffile.imread(str(path), key=0)
    except Exception as exc:  # noqa: BLE001
        raise ImageReadError(path, f"cannot decode TIFF ({exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    if arr.dtype == np.uint16:
        return _from_array(arr, _U16_TO_255, f"TIFF;{arr.dtype}", 16, path)
    if arr.dtype == np.uint8:
        return _from_array(arr, 1.0, "TIFF;uint8", 8, path)
    if np.issubdtype(arr.dtype, np.floating):
        return _from_array(_float_samples_to_255(arr), 1.0, f"TIFF;{arr.dtype}", 16, path)
    raise ImageReadError(path, f"unsupported TIFF sample type {arr.dtype}")


def _read_pil(path: Path) -> LoadedImage:
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()  # decode now: truncated files fail here, not later
            im = ImageOps.exif_transpose(im)  # camera orientation, as viewers show the photo
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot decode image ({exc})") from None
    try:
        pixels = pil_pixels(im, keep_alpha=True)
    except UnsupportedImageMode as exc:
        raise ImageReadError(path, str(exc)) from None
    return _from_array(pixels.array, 1.0, im.mode, pixels.bit_depth, path)


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file into a :class:`LoadedImage` (RGB float32 0-255, alpha aside); see the module doc."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    try:
        png = _png_header(path)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open ({exc.strerror or exc})") from None
    if png is not None and png[0] == 16 and png[1] != 3:
        return _read_png16(path, png[1])
    if path.suffix.lower() in (".tif", ".tiff") and _tiff_is_deep(path):
        return _read_tiff_deep(path)
    return _read_pil(path)


def _tiff_is_deep(path: Path) -> bool:
    """True for TIFFs with more than 8 bits per sample that Pillow would reduce (multi-channel 16-bit, float)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            bits = im.tag_v2.get(258, (8,))  # BitsPerSample
            mode = im.mode
    except Exception:  # noqa: BLE001 - let the main reader report the problem
        return False
    bits = bits if isinstance(bits, tuple) else (bits,)
    return max(bits) > 8 and mode not in ("I;16", "I;16L", "I;16B", "I;16N")


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only (cheap); raises :class:`ImageReadError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1) if path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".tif", ".tiff") else 1
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can identify") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"cannot read image header ({exc})") from None
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


# -- writing -------------------------------------------------------------------------------------------------
def to_uint8(img: Tensor) -> np.ndarray:
    """(C, H, W) on 0-255 -> (H, W, C) uint8 (clamped and rounded)."""
    return img.detach().float().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def resize_alpha(alpha: Tensor, size: tuple[int, int]) -> Tensor:
    """Resize an ``(H, W)`` alpha channel to ``size`` = (H', W') (bicubic, clamped to [0, 255])."""
    if tuple(alpha.shape) == tuple(size):
        return alpha
    out = F.interpolate(alpha[None, None].float(), size=size, mode="bicubic", align_corners=False)
    return out[0, 0].clamp(0, 255)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _encode_png16(arr: np.ndarray) -> bytes:
    """A 16-bit PNG of (H, W, C) uint16 with C = 1, 2, 3 or 4 (filter 'none' on every row)."""
    h, w, c = arr.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    rows = arr.astype(">u2").reshape(h, w * c).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()
    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return _PNG_SIGNATURE + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, 6)) + _png_chunk(b"IEND", b"")


_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def write_image(path: str | Path, rgb: Tensor, alpha: Tensor | None = None, bit_depth: int = 8) -> Path:
    """Write ``rgb`` ``(3, H, W)`` on 0-255 to ``path`` (format from the extension), quantised to ``bit_depth``.

    ``alpha`` ``(h, w)`` on 0-255 is resized to ``(H, W)`` if needed and stored (PNG, WebP, TIFF; JPEG and BMP
    cannot hold it and drop it). 16 bit is available for PNG and TIFF.
    """
    path = Path(path)
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported output format {path.suffix!r} (use one of {', '.join(_PIL_FORMATS)})")
    if rgb.ndim != 3 or rgb.shape[0] != 3:
        raise ValueError(f"write_image expects an RGB image (3, H, W), got shape {tuple(rgb.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise ValueError(f"{path}: 16-bit output needs .png or .tif, not {path.suffix}")
    h, w = rgb.shape[-2:]
    channels = rgb.detach().float().cpu()
    if alpha is not None and fmt not in ("JPEG", "BMP"):
        channels = torch.cat([channels, resize_alpha(alpha.detach().float().cpu(), (h, w))[None]], dim=0)
    if bit_depth == 16:
        scaled = (channels.double().clamp(0, 255) * (65535.0 / 255.0)).round().clamp(0, 65535)
        arr = scaled.permute(1, 2, 0).numpy().astype(np.uint16)
        if fmt == "PNG":
            data = _encode_png16(arr)
            atomic_write_file(path, lambda p: p.write_bytes(data))
        else:
            import tifffile

            atomic_write_file(path, lambda p: tifffile.imwrite(str(p), arr, photometric="rgb"))
        return path
    from PIL import Image

    im = Image.fromarray(to_uint8(channels))
    save_kwargs = {"JPEG": {"quality": 95}, "WEBP": {"lossless": True}}.get(fmt, {})
    atomic_write_file(path, lambda p: im.save(p, format=fmt, **save_kwargs))
    return path


# -- listing -------------------------------------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name; hidden files skipped)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)


def iter_images(paths: Iterable[str | Path]) -> Iterator[Path]:
    """Expand ``paths``: a folder gives its image files (sorted, non-recursive), a file is kept as given.

    A path that does not exist raises ``FileNotFoundError``; a folder without images raises ``ValueError``.
    """
    for p in map(Path, paths):
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ValueError(f"{p}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)})")
            yield from found
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
