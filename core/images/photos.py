"""The built-in training data: real colour photos shipped inside the scikit-image and scikit-learn wheels.

No download is ever needed: every file below is part of the installed wheel (listed in its ``RECORD``), unlike
scikit-image's on-demand ``skimage.data`` fetches.  Only colour natural photos at least 300 px on each side are
used; synthetic images (``color``, ``logo``, chessboards), greyscale scans and the mostly black ``retina`` are left
out.

========================  =================  ==========  ==========================================
name                      package file       size (WxH)  content
========================  =================  ==========  ==========================================
astronaut                 skimage/data       512x512     portrait (Eileen Collins)
chelsea                   skimage/data       451x300     cat
coffee                    skimage/data       600x400     cup of coffee             (held out)
hubble_deep_field         skimage/data       1000x872    galaxies
ihc                       skimage/data       512x512     immunohistochemistry microscope photo
motorcycle_left           skimage/data       741x500     stereo pair, left view
motorcycle_right          skimage/data       741x500     stereo pair, right view
rocket                    skimage/data       640x427     rocket launch
china                     sklearn/datasets   640x427     Chinese temple
flower                    sklearn/datasets   640x427     flower                    (held out)
========================  =================  ==========  ==========================================

``coffee`` and ``flower`` are held out of training for validation and evaluation: one from each package, both
with fine texture and smooth regions, and neither is a near-duplicate of a training photo (the motorcycle
stereo pair is, so neither view could be held out without leaking the other).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from ipt.core.images.io import read_image

__all__ = [
    "HELD_OUT",
    "PHOTOS",
    "builtin_photos",
    "centre_crop",
    "heldout_photos",
    "photo",
    "sized_photo",
    "train_photos",
]

# name -> (package, folder inside the package, file name)
PHOTOS: dict[str, tuple[str, str, str]] = {
    "astronaut": ("skimage", "data", "astronaut.png"),
    "chelsea": ("skimage", "data", "chelsea.png"),
    "coffee": ("skimage", "data", "coffee.png"),
    "hubble_deep_field": ("skimage", "data", "hubble_deep_field.jpg"),
    "ihc": ("skimage", "data", "ihc.png"),
    "motorcycle_left": ("skimage", "data", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "data", "motorcycle_right.png"),
    "rocket": ("skimage", "data", "rocket.jpg"),
    "china": ("sklearn", "datasets/images", "china.jpg"),
    "flower": ("sklearn", "datasets/images", "flower.jpg"),
}

HELD_OUT: tuple[str, ...] = ("coffee", "flower")

_DISTRIBUTIONS = {"skimage": "scikit-image", "sklearn": "scikit-learn"}


def _package_dir(package: str) -> Path:
    # find_spec locates the package without importing it (importing sklearn/skimage costs seconds).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the built-in photos need the package {_DISTRIBUTIONS[package]!r}, which is not installed: "
            f"pip install {_DISTRIBUTIONS[package]}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def photo(name: str) -> Path:
    """The path of the built-in photo ``name`` (see :data:`PHOTOS`)."""
    if name not in PHOTOS:
        raise ValueError(f"unknown built-in photo {name!r}; known: {', '.join(sorted(PHOTOS))}")
    package, folder, filename = PHOTOS[name]
    path = _package_dir(package) / folder / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"built-in photo {name!r} is missing from the installed {_DISTRIBUTIONS[package]} ({path}); "
            f"reinstall it: pip install --force-reinstall {_DISTRIBUTIONS[package]}"
        )
    return path


def builtin_photos() -> list[Path]:
    """All built-in photos, sorted by name (a stable order)."""
    return [photo(name) for name in sorted(PHOTOS)]


def train_photos() -> list[Path]:
    """The built-in photos used for training: all but :data:`HELD_OUT`, sorted by name."""
    return [photo(name) for name in sorted(PHOTOS) if name not in HELD_OUT]


def heldout_photos() -> list[Path]:
    """The held-out built-in photos (validation/evaluation), in :data:`HELD_OUT` order."""
    return [photo(name) for name in HELD_OUT]


def centre_crop(name: str, size: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` crop of built-in photo ``name``: float32 ``(3, size, size)`` on 0-255 (read
    with the one decoder of :mod:`ipt.core.images.io`). Raises ``ValueError`` when the photo is smaller."""
    rgb = read_image(photo(name)).rgb
    h, w = rgb.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"built-in photo {name!r} is {h}x{w}, smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return rgb[:, top : top + size, left : left + size].contiguous()


def sized_photo(h: int, w: int, name: str = "astronaut") -> torch.Tensor:
    """A natural photo of exactly ``h`` x ``w``: the top-left crop of built-in photo ``name``, first enlarged
    (bicubic, rounded to 8-bit values) when it is smaller. Float32 ``(3, h, w)`` on 0-255; used by ``ipt bench``."""
    img = read_image(photo(name)).rgb.double()
    if img.shape[1] < h or img.shape[2] < w:
        size = (max(h, img.shape[1]), max(w, img.shape[2]))
        img = F.interpolate(img[None], size=size, mode="bicubic", align_corners=False)[0].clamp(0, 255).round()
    return img[:, :h, :w].float().contiguous()
