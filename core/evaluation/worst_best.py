"""The worst and best images of an evaluation, side by side (``ipt eval --save-dir``: ``_worst_best_grid.png``).

:class:`WorstBest` keeps, while images stream past, the ``k`` lowest- and ``k`` highest-PSNR images as crops (the
window where the restored image is furthest from the target, :func:`~ipt.core.images.grid.error_window`), so
memory stays bounded whatever the benchmark size; :meth:`WorstBest.grid` lays them out as degraded (nearest-
upscaled for SR) | restored | target rows captioned with the image name and its PSNR-Y.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from ipt.core.files import atomic_write_file
from ipt.core.images.grid import error_window, image_grid, upscale_nearest

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

GRID_NAME = "_worst_best_grid.png"


@dataclass(order=True)
class _Entry:
    key: float
    name: str = field(compare=False)
    psnr: float = field(compare=False)
    crops: tuple[Tensor, Tensor, Tensor] = field(compare=False)


class WorstBest:
    """Collects the ``k`` worst and ``k`` best images by PSNR-Y (dB); crops are ``crop`` output pixels square."""

    def __init__(self, k: int = 3, crop: int = 128) -> None:
        self.k, self.crop = k, crop
        self._worst: list[_Entry] = []  # max-heap by PSNR (key = -psnr): the k lowest
        self._best: list[_Entry] = []  # min-heap by PSNR: the k highest

    def add(self, name: str, psnr: float, degraded: Tensor, restored: Tensor, target: Tensor) -> None:
        """One image: ``restored``/``target`` ``(3, H, W)`` on 0-255, ``degraded`` ``(3, H/s, W/s)`` (one-plane grey
        images are shown as RGB)."""
        degraded, restored, target = (x.expand(3, -1, -1) if x.shape[0] == 1 else x
                                      for x in (degraded, restored, target))
        size = tuple(target.shape[-2:])
        top, left, side = error_window(restored, target, self.crop)
        window = (slice(None), slice(top, top + side), slice(left, left + side))
        crops = tuple(img[window].clone() for img in (upscale_nearest(degraded, size), restored, target))
        for heap, key in ((self._worst, -psnr), (self._best, psnr)):
            entry = _Entry(key, name, psnr, crops)  # type: ignore[arg-type]
            (heapq.heappush if len(heap) < self.k else heapq.heappushpop)(heap, entry)

    def entries(self) -> list[tuple[str, str, float, tuple[Tensor, Tensor, Tensor]]]:
        """``(rank, name, psnr, crops)``, worst first then best (an image in both lists appears once)."""
        worst = sorted(self._worst, key=lambda e: e.psnr)
        best = [e for e in sorted(self._best, key=lambda e: e.psnr) if e.name not in {w.name for w in worst}]
        rows = [(f"worst {i + 1}", e) for i, e in enumerate(worst)]
        rows += [(f"best {len(best) - i}", e) for i, e in enumerate(best)]
        return [(rank, e.name, e.psnr, e.crops) for rank, e in rows]

    def grid(self, task: str) -> "Image.Image":
        """The comparison grid; each row's crop has its own size when images are smaller than ``crop``."""
        entries = self.entries()
        side = min(min(c[0].shape[-2:]) for *_, c in entries)
        rows = [(f"{rank}: {name}  PSNR-Y {psnr:.2f} dB", [c[:, :side, :side] for c in crops])
                for rank, name, psnr, crops in entries]
        return image_grid(rows, [f"degraded ({task})", "restored", "target"])

    def save(self, path: str | Path, task: str) -> Path | None:
        """Write the grid as PNG (atomically); None when no image was added."""
        if not self._worst:
            return None
        image = self.grid(task)
        return atomic_write_file(Path(path), lambda tmp: image.save(tmp, format="PNG"))
