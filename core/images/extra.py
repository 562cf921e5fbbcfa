"""Extra input files of a task (``TaskSpec.extra_inputs``), e.g. the mask of an inpainting task.

Layout: the extra input ``NAME`` of the image ``DIR/photo.png`` is, first found,

* ``DIR/photo_NAME.<any image extension>`` beside the image (``photo_mask.png``: for ``ipt restore``), or
* ``DIR/../NAME/photo.<ext>``: a folder named after the input beside the images' folder (paired evaluation data
  ``input/`` + ``target/`` + ``mask/``, all paired by file stem: ``ipt eval`` ignores the ``mask/`` folder itself).

It has the size of the image and the 0-255 scale. A one-channel input is read as grey (the mean of the file's
RGB channels, so a grey PNG gives its own values), a three-channel one as RGB.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ipt.core.images.io import IMAGE_EXTENSIONS, ImageReadError, read_image
from ipt.registry.spec import ExtraInput

__all__ = ["extra_input_path", "is_extra_input_file", "read_extra_inputs", "with_extra_inputs"]


def extra_input_path(image: Path, name: str) -> Path | None:
    """The file of the extra input ``name`` of ``image`` (module doc: beside it, then in ``../name/``), or None."""
    image = Path(image)
    beside = [image.with_name(f"{image.stem}_{name}{ext}") for ext in IMAGE_EXTENSIONS]
    folder = [image.parent.parent / name / f"{image.stem}{ext}" for ext in IMAGE_EXTENSIONS]
    for cand in beside + folder:
        for c in (cand, cand.with_suffix(cand.suffix.upper())):
            if c.is_file():
                return c
    return None


def is_extra_input_file(path: Path, extras: Sequence[ExtraInput], images: Sequence[Path]) -> bool:
    """``path`` is the extra input of another image among ``images`` (``photo_mask.png`` beside ``photo.png``)."""
    stems = {p.stem for p in images if p.parent == path.parent}
    return any(path.stem.endswith(f"_{e.name}") and path.stem[: -len(e.name) - 1] in stems for e in extras)


def read_extra_inputs(image: Path, extras: Sequence[ExtraInput], size: tuple[int, int]) -> Tensor:
    """The extra inputs of ``image`` stacked as ``(sum of channels, H, W)`` float32 on 0-255.

    Raises :class:`~ipt.core.images.io.ImageReadError` naming the missing file or the size that differs.
    """
    planes = []
    for e in extras:
        path = extra_input_path(image, e.name)
        if path is None:
            raise ImageReadError(image, f"the task needs its {e.name} ({e.description}): {image.stem}_{e.name}.png "
                                        f"beside it or ../{e.name}/{image.stem}.png; neither found")
        rgb = read_image(path).rgb
        if tuple(rgb.shape[-2:]) != tuple(size):
            h, w = rgb.shape[-2:]
            raise ImageReadError(image, f"its {e.name} {path} is {w}x{h}, the image is {size[1]}x{size[0]}")
        planes.append(rgb.mean(dim=0, keepdim=True) if e.channels == 1 else rgb)
    return torch.cat(planes, dim=0) if planes else torch.empty(0, *size)


def with_extra_inputs(image: Path, rgb: Tensor, extras: Sequence[ExtraInput]) -> Tensor:
    """``rgb`` ``(3, H, W)`` followed by the extra inputs read beside ``image``: ``(in_channels, H, W)``."""
    if not extras:
        return rgb
    return torch.cat([rgb, read_extra_inputs(image, extras, tuple(rgb.shape[-2:])).to(rgb)], dim=0)
