"""Whole-image inference with a trained model: options, model loading, device/dtype, tiling protocol.

Shared by ``ipt restore`` and ``ipt eval``. :class:`InferenceOptions` is the single source of the tiling and
device flags (``--protocol``, ``--blend``, ``--overlap``, ``--tile-batch``, ``--self-ensemble``, ``--device``,
``--dtype``); :class:`TaskRestorer` restores one image of any size for one task and counts the tiles it ran.

Protocols:

* ``paper`` (default): 48x48 tiles with ``overlap`` px (10) overlap, blended (``smooth`` cross-fade by default,
  ``average`` = the paper's uniform mean). About ``ceil((H-10)/38) * ceil((W-10)/38)`` tiles per image.
* ``official``: the official code's ``forward_chop`` (48 px tiles at a 12 px stride, centre crops averaged), what
  the published numbers were computed with: ``nH*nW + 2nH + 2nW + 1`` tiles with ``nH = (H-48)//12 + 1``,
  about nine times the paper protocol. ``blend`` and ``overlap`` do not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ipt.core.inference.int8_calibration import ensure_int8_calibration
from ipt.core.inference.precision import check_precision, precision, resolve_device
from ipt.core.inference.tiling import TiledRestorer, official_forward_chop

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.ipt import IPT

__all__ = [
    "InferenceOptions",
    "resolve_device",
    "load_task_model",
    "TileModel",
    "TaskRestorer",
]

ProgressFn = Callable[[int, int], None]
K = TypeVar("K")


class InferenceOptions(BaseModel):
    """How whole images go through the fixed-size network (flags of ``ipt restore`` and ``ipt eval``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["paper", "official"] = Field(
        "paper", description="Tiling: paper = 48 px tiles, --overlap px overlap; official = forward_chop, stride 12"
    )
    blend: Literal["smooth", "average"] = Field(
        "smooth", description="Paper protocol: blend overlaps with a seamless cross-fade or the uniform mean"
    )
    overlap: int = Field(10, ge=0, lt=48, description="Paper protocol: tile overlap in input pixels")
    tile_batch: int = Field(16, ge=1, description="Tiles per forward pass (bounds memory; filled across images)")
    self_ensemble: bool = Field(False, description="Average over the 8 flips/transposes (8x the cost)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    dtype: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        "fp32", description="Precision: bf16/fp16 autocast (fp16 needs cuda); int8 = int8 linear layers (CPU only)"
    )


def load_task_model(model_dir: str | Path | None, task: str, device: torch.device | str = "cpu") -> "IPT":
    """Load a model directory keeping only ``task`` (an error lists the tasks the model has), in eval mode."""
    from ipt.core.checkpoints.bundled import resolve_model_dir
    from ipt.core.model.ipt import IPT

    directory = resolve_model_dir(model_dir)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: model directory not found")
    model = IPT.from_pretrained(directory, tasks=[task])
    return model.to(torch.device(device)).eval()


@dataclass(frozen=True)
class TileModel:
    """A network that restores fixed-size tiles: ``fn`` maps ``(b, 3, tile, tile)`` on ``device`` to
    ``(b, 3, tile*scale, tile*scale)``. Built once per command, so nothing downstream asks "IPT or function?"."""

    fn: Callable[[Tensor], Tensor]
    scale: int
    tile: int = 48
    device: torch.device = torch.device("cpu")
    model: "IPT | None" = None  # the IPT behind ``fn``, when there is one (its task specs)
    extra_channels: int = 0  # input channels after RGB (mask...); ``fn`` pads its output with as many zeros

    @classmethod
    def of(cls, model: "IPT | TileModel | Callable[[Tensor], Tensor]", task: str, device: torch.device,
           scale: int | None = None, tile: int | None = None) -> "TileModel":
        """An :class:`~ipt.core.model.IPT` (moved to ``device`` unless it is there already, put in eval mode),
        a ready :class:`TileModel`, or a tile function with its ``scale`` (``ValueError`` without one)."""
        from ipt.core.model.ipt import IPT

        if isinstance(model, TileModel):
            return model
        if isinstance(model, IPT):
            model._check_task(task)
            if next(model.parameters()).device != device:
                model.to(device)
            model.eval()
            extra, scale = model.spec(task).in_channels - 3, model.scale(task)

            def fn(tiles: Tensor) -> Tensor:
                out = model(tiles, task)
                if extra:  # the stitchers keep the input's channel count: pad here, drop after stitching
                    out = torch.cat([out, out.new_zeros(out.shape[0], extra, *out.shape[-2:])], dim=1)
                return out

            return cls(fn, scale, model.config.patch_size, device, model, extra)
        if scale is None:
            raise ValueError("TaskRestorer with a tile function needs scale=")
        return cls(model, scale, tile or 48, device)


class TaskRestorer:
    """Restore whole images for one task with the chosen protocol; ``tiles`` counts network inputs run so far.

    ``model`` is an :class:`~ipt.core.model.IPT` (tiles go through ``model(tiles, task)``), a :class:`TileModel`,
    or a tile function ``(b, 3, T, T) -> (b, 3, T*s, T*s)`` with ``scale`` given. Device and precision are
    resolved here once (``ValueError`` for a precision the device cannot run, e.g. int8 on CUDA).
    """

    def __init__(
        self,
        model: "IPT | TileModel | Callable[[Tensor], Tensor]",
        task: str,
        options: InferenceOptions | None = None,
        scale: int | None = None,
        tile: int | None = None,
    ) -> None:
        self.options = options or InferenceOptions()
        self.task = task
        self.device = resolve_device(self.options.device)
        self.precision = check_precision(self.options.dtype, self.device)
        self.net = TileModel.of(model, task, self.device, scale, tile)
        self.scale, self.tile = self.net.scale, self.net.tile
        self.model, self.extra_channels = self.net.model, self.net.extra_channels
        if self.precision == "int8" and self.model is not None:
            ensure_int8_calibration(self.model, task)  # static scales, the same for every image (once per task)
        self.tiles = 0

    def _fn(self, tiles: Tensor) -> Tensor:
        self.tiles += int(tiles.shape[0])
        with precision(self.device, self.precision):
            return self.net.fn(tiles).float()

    def _tiler(self, progress: ProgressFn | None = None) -> TiledRestorer:
        o = self.options
        return TiledRestorer(self._fn, self.scale, tile=self.tile, overlap=o.overlap, blend=o.blend,
                             tile_batch=o.tile_batch, self_ensemble=o.self_ensemble, progress=progress)

    def __call__(self, image: Tensor, progress: ProgressFn | None = None) -> Tensor:
        """``image`` ``(C, H, W)`` or ``(B, C, H, W)`` on 0-255 -> restored ``(3, H*s, W*s)`` (or batched), clamped
        to [0, 255], float32 on the CPU. ``C`` is the task's ``in_channels``: 3, or RGB then its extra inputs."""
        o = self.options
        x = image.to(device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            if o.protocol == "official":
                y = official_forward_chop(
                    self._fn, x, self.scale, tile=self.tile, tile_batch=o.tile_batch,
                    self_ensemble=o.self_ensemble, progress=progress,
                )
            else:
                y = self._tiler(progress)(x)
        if self.extra_channels:
            y = y[..., :3, :, :]
        return y.clamp(0, 255).float().cpu()

    @torch.inference_mode()
    def stream(self, images: Iterable[tuple[K, Tensor]]) -> Iterator[tuple[K, Tensor]]:
        """Restore many images ``(key, (3, H, W))``, yielding ``(key, restored)`` in order, each equal to
        ``self(image)``. Paper protocol: every network call is filled with tiles of consecutive images
        (:meth:`TiledRestorer.stream`; images are taken from ``images`` only as tiles are needed); the official
        protocol goes image by image."""
        if self.options.protocol == "official":
            for key, image in images:
                yield key, self(image)
            return
        moved = ((key, image.to(device=self.device, dtype=torch.float32)) for key, image in images)
        for key, y in self._tiler().stream(moved):
            yield key, y[:3].clamp(0, 255).float().cpu()
