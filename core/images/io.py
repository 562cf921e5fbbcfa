"""The one image decoder and encoder: files (or bytes) <-> float tensors on the 0-255 scale.

PNG, JPEG, WebP, TIFF, BMP, GIF, PNM and TGA at 8 and 16 bit; used by inference, evaluation and the training data
pipeline (:mod:`ipt.core.images.decode` adapts dataset records to it).

* :func:`read_image` / :func:`decode_image` return a :class:`LoadedImage`: RGB ``(3, H, W)`` float32 on 0-255
  (grey is repeated to RGB, 16-bit samples are scaled by 255/65535), the alpha channel kept aside ``(H, W)`` on
  0-255 (RGBA, LA, palette or grey/RGB images with a transparent colour), whether the image is grey (one channel in
  the file, or R = G = B everywhere), the source bit depth (8 or 16) and the mode it had.
* :func:`decode_samples` is the decoder underneath: the file's own samples ``(H, W, C)`` (uint8 for 8-bit files,
  kept small for the training cache) before any conversion to float.
* :func:`write_image` quantises ``(3, H, W)`` RGB or ``(1, H, W)`` grey to 8 or 16 bit and re-attaches an alpha
  channel, resizing it (bicubic) when the image changed size (super-resolution). Files are written under a
  temporary name and renamed (:func:`ipt.core.files.atomic_write_file`).
* :func:`iter_images` expands folders (sorted, non-recursive) into image files with :data:`IMAGE_EXTENSIONS`.

Pillow decodes 16-bit RGB(A) PNG and TIFF files to 8 bit, so those go through torchvision's PNG decoder and
tifffile (a dependency of scikit-image) instead; 16-bit PNGs are written by a small encoder here (Pillow cannot).
Every decoder refuses images over Pillow's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``, refused above twice that
as Pillow does) from the header, before any pixel memory is allocated. Any unreadable, truncated, oversized or
unsupported image raises :class:`ImageReadError` naming the file and carrying a skip category (``reason``).
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from ipt.core.files import atomic_write_file
from torch import Tensor

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

__all__ = [
    "CORRUPT",
    "IMAGE_EXTENSIONS",
    "TOO_LARGE",
    "UNSUPPORTED_MODE",
    "ImageReadError",
    "LoadedImage",
    "PilPixels",
    "Samples",
    "UnsupportedImageMode",
    "check_pixel_limit",
    "decode_image",
    "decode_samples",
    "image_size",
    "is_image_file",
    "iter_images",
    "list_images",
    "pil_pixels",
    "pixel_limit",
    "read_image",
    "resize_alpha",
    "to_uint8",
    "write_image",
]

# The one list of image file extensions (lower case): inference, evaluation and the training data all use it.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".ppm", ".pgm", ".pnm", ".tga"}
)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_U16_TO_255 = 255.0 / 65535.0
# 'I' (32-bit integers) is how Pillow opens 16-bit grey PNG/TIFF in some versions, so it is read as 16-bit too.
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")

# Skip categories (``ImageReadError.reason``), counted by the training data pipeline.
CORRUPT = "corrupt"
UNSUPPORTED_MODE = "unsupported_mode"
TOO_LARGE = "too_large"

Source = Union[str, Path, bytes, bytearray]


class ImageReadError(ValueError):
    """An image that cannot be read. ``str()`` is ``"<path>: <detail>"``; ``path`` (None for bytes without a
    name), ``detail`` (the why) and ``reason`` (a skip category: ``corrupt``, ``unsupported_mode``,
    ``too_large``) are attributes."""

    def __init__(self, path: str | Path | None, detail: str, reason: str = CORRUPT) -> None:
        self.path = Path(path) if path is not None else None
        self.detail = detail
        self.reason = reason
        super().__init__(f"{path}: {detail}" if path is not None else detail)


class UnsupportedImageMode(ValueError):
    """A PIL image whose mode cannot be converted to grey/RGB samples; ``str()`` names the mode."""


@dataclass(frozen=True)
class LoadedImage:
    """An image on the 0-255 scale: ``rgb`` float32 ``(3, H, W)``, ``alpha`` float32 ``(H, W)`` or ``None``.

    ``grey`` is True for a one-channel file (L, I;16, LA, ...) and for colour files whose three channels are
    equal everywhere; ``channels`` is the number of colour channels in the file (1 or 3, alpha not counted).
    """

    rgb: Tensor
    alpha: Tensor | None
    bit_depth: int  # 8 or 16 (bits per sample of the file)
    mode: str  # the PIL mode (or "RGB;16"/"RGBA;16"... for files decoded without PIL)
    grey: bool = False
    channels: int = 3

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.rgb.shape[-2]), int(self.rgb.shape[-1])


class Samples(NamedTuple):
    """A decoded image as stored: ``array`` ``(H, W, C)``, C = 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA; the value
    on 0-255 is ``array * scale``."""

    array: np.ndarray  # uint8 for 8-bit files, else float32 or uint16
    scale: float
    bit_depth: int
    has_alpha: bool
    mode: str


class PilPixels(NamedTuple):
    """Samples of a PIL image: ``array`` ``(H, W, C)`` on 0-255, C = 1 grey, 2 grey+alpha, 3 RGB or 4 RGBA."""

    array: np.ndarray  # uint8 when bit_depth == 8 (kept small for caches), else float32 clipped to [0, 255]
    bit_depth: int  # 8, or 16 for 16-bit integer and float images
    has_alpha: bool  # the last channel is (straight, not premultiplied) alpha


# -- the pixel limit -----------------------------------------------------------------------------------------
def pixel_limit() -> int | None:
    """Pixels above which every decoder refuses an image: twice ``PIL.Image.MAX_IMAGE_PIXELS``, where Pillow
    itself raises ``DecompressionBombError`` (None when the limit is switched off)."""
    from PIL import Image

    return None if not Image.MAX_IMAGE_PIXELS else 2 * int(Image.MAX_IMAGE_PIXELS)


def check_pixel_limit(width: int, height: int, path: str | Path | None) -> None:
    """Raise :class:`ImageReadError` (``too_large``) for a ``width`` x ``height`` image over :func:`pixel_limit`."""
    limit = pixel_limit()
    if limit is not None and width * height > limit:
        raise ImageReadError(
            path, f"image of {width}x{height} = {width * height} pixels is over the limit of {limit} pixels "
            "(a decompression bomb? raise PIL.Image.MAX_IMAGE_PIXELS to allow it)", TOO_LARGE,
        )


# -- PIL modes -> samples ------------------------------------------------------------------------------------
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


# -- decoders ------------------------------------------------------------------------------------------------
def _head(source: Source, n: int) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[:n])
    with open(source, "rb") as f:
        return f.read(n)


def _decode_png16(source: Source, name: Path | None, colour_type: int) -> Samples:
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        with warnings.catch_warnings():
            # torchvision >= 0.29 flags its image codecs as deprecated; it is the one installed decoder that keeps
            # 16-bit colour PNGs at 16 bit (Pillow reduces them to 8 bit).
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_png
    except ImportError:
        return _decode_pil(source, name)  # no 16-bit decoder: 8-bit samples from Pillow
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            chw = decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - torchvision raises RuntimeError with libpng's message
        raise ImageReadError(name, f"cannot decode 16-bit PNG ({exc})") from None
    mode = {0: "I;16", 2: "RGB;16", 4: "LA;16", 6: "RGBA;16"}.get(colour_type, "16-bit")
    arr = chw.permute(1, 2, 0).numpy()
    if arr.dtype != np.uint16:  # torchvision versions differ: int32/uint16 samples
        arr = arr.astype(np.float32)
    return Samples(arr, _U16_TO_255, 16, arr.shape[2] in (2, 4), mode)


def _decode_tiff_deep(source: Source, name: Path | None) -> Samples | None:
    """16-bit/float multi-channel TIFFs (Pillow would reduce them); None for TIFFs Pillow reads fully."""
    import tifffile

    handle: str | IO[bytes] = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else str(source)
    try:
        with tifffile.TiffFile(handle) as tif:
            page = tif.pages[0]
            if int(page.bitspersample) <= 8 or (len(page.shape) == 2 and np.dtype(page.dtype) == np.uint16):
                return None  # 8-bit, or 16-bit grey: Pillow keeps every bit
            check_pixel_limit(int(page.imagewidth), int(page.imagelength), name)
            arr = page.asarray()
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise ImageReadError(name, f"cannot decode TIFF ({exc})") from None
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar (C, H, W) storage
    channels = arr.shape[2] if arr.ndim == 3 else 1
    if arr.dtype == np.uint16:
        return Samples(arr, _U16_TO_255, 16, channels in (2, 4), f"TIFF;{arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        return Samples(_float_samples_to_255(arr), 1.0, 16, channels in (2, 4), f"TIFF;{arr.dtype}")
    raise ImageReadError(name, f"unsupported TIFF sample type {arr.dtype}", UNSUPPORTED_MODE)


def _decode_pil(source: Source, name: Path | None) -> Samples:
    from PIL import Image, ImageOps, UnidentifiedImageError

    handle = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(handle) as im:
                check_pixel_limit(*im.size, name)
                im.load()  # decode now: truncated files fail here, not later
                im = ImageOps.exif_transpose(im) or im  # camera orientation, as viewers show the photo
    except UnidentifiedImageError:
        raise ImageReadError(name, "not an image file Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(name, f"cannot decode image ({exc})", TOO_LARGE) from None
    except (ImageReadError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, SyntaxError, ValueError, struct.error... for damaged data
        raise ImageReadError(name, f"cannot decode image ({type(exc).__name__}: {exc})") from None
    try:
        pixels = pil_pixels(im, keep_alpha=True)
    except UnsupportedImageMode as exc:
        raise ImageReadError(name, str(exc), UNSUPPORTED_MODE) from None
    return Samples(pixels.array, 1.0, pixels.bit_depth, pixels.has_alpha, im.mode)


def decode_samples(source: Source, name: str | Path | None = None) -> Samples:
    """Decode an image file (a path) or its encoded bytes into :class:`Samples`; ``name`` labels errors (default:
    the path). Dispatches 16-bit colour PNGs to torchvision, deep TIFFs to tifffile, the rest to Pillow; checks
    the pixel limit from the header first. Raises :class:`ImageReadError`; a ``MemoryError`` passes through."""
    label = Path(name) if name is not None else None if isinstance(source, (bytes, bytearray)) else Path(source)
    try:
        head = _head(source, 33)
    except OSError as exc:
        raise ImageReadError(label, f"cannot open ({exc.strerror or exc})") from None
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 26 and head[24] == 16 and head[25] != 3:
        width, height = struct.unpack(">II", head[16:24])
        check_pixel_limit(width, height, label)
        return _decode_png16(source, label, head[25])
    if head.startswith(_TIFF_SIGNATURES):
        deep = _decode_tiff_deep(source, label)
        if deep is not None:
            return deep
    return _decode_pil(source, label)


def _to_loaded(samples: Samples) -> LoadedImage:
    """Samples -> LoadedImage (grey repeated, alpha split, float32 on 0-255)."""
    arr = samples.array if samples.array.ndim == 3 else samples.array[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1)
    if samples.scale != 1.0:
        t = t * samples.scale
    c = t.shape[0]
    colour_channels = 1 if c in (1, 2) else 3
    colour = t[:1].expand(3, -1, -1) if colour_channels == 1 else t[:3]
    alpha = t[c - 1].clone().clamp_(0, 255) if c in (2, 4) else None
    grey = colour_channels == 1 or bool(torch.equal(colour[0], colour[1]) and torch.equal(colour[1], colour[2]))
    return LoadedImage(colour.clone().clamp_(0, 255), alpha, samples.bit_depth, samples.mode, grey, colour_channels)


def decode_image(source: Source, name: str | Path | None = None) -> LoadedImage:
    """Decode a path or encoded bytes into a :class:`LoadedImage`; see :func:`decode_samples`."""
    return _to_loaded(decode_samples(source, name))


def read_image(path: str | Path) -> LoadedImage:
    """Read an image file into a :class:`LoadedImage` (RGB float32 0-255, alpha aside); see the module doc.

    Raises :class:`ImageReadError` naming the file (missing, a folder, unreadable, over the pixel limit)."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "no such file")
    if not path.is_file():
        raise ImageReadError(path, "not a file")
    return decode_image(path)


def image_size(path: str | Path) -> tuple[int, int]:
    """(H, W) from the file header only (cheap); raises :class:`ImageReadError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                exif = path.suffix.lower() in (".jpg", ".jpeg", ".webp", ".tif", ".tiff")
                orientation = im.getexif().get(0x0112, 1) if exif else 1
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not an image file Pillow can identify") from None
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"cannot read image header ({exc})", TOO_LARGE) from None
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


def _check_write_args(path: Path, image: Tensor, bit_depth: int) -> str:
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported output format {path.suffix!r} (use one of {', '.join(_PIL_FORMATS)})")
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"write_image expects RGB (3, H, W) or grey (1, H, W), got shape {tuple(image.shape)}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and fmt not in ("PNG", "TIFF"):
        raise ValueError(f"{path}: 16-bit output needs .png or .tif, not {path.suffix}")
    return fmt


def write_image(path: str | Path, rgb: Tensor, alpha: Tensor | None = None, bit_depth: int = 8) -> Path:
    """Write ``rgb`` ``(3, H, W)`` (or grey ``(1, H, W)``) on 0-255 to ``path`` (format from the extension),
    quantised to ``bit_depth``.

    ``alpha`` ``(h, w)`` on 0-255 is resized to ``(H, W)`` if needed and stored (PNG, WebP, TIFF; JPEG and BMP
    cannot hold it and drop it). Grey is stored as one channel (L, LA, 16-bit grey). 16 bit is available for PNG
    and TIFF. Raises ``ValueError`` for an unsupported format, shape or depth.
    """
    path = Path(path)
    fmt = _check_write_args(path, rgb, bit_depth)
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

            photometric = "rgb" if arr.shape[2] >= 3 else "minisblack"
            extra = "unassalpha" if arr.shape[2] in (2, 4) else None
            atomic_write_file(path, lambda p: tifffile.imwrite(str(p), arr, photometric=photometric, extrasamples=extra))
        return path
    from PIL import Image

    arr8 = to_uint8(channels)
    im = Image.fromarray(arr8[..., 0], "L") if arr8.shape[2] == 1 else Image.fromarray(arr8)
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
                raise ValueError(f"{p}: no images in this folder (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
            yield from found
        elif p.exists():
            yield p
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
