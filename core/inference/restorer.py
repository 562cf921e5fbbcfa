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

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.ipt import IPT

__all__ = [
    "InferenceOptions",
    "resolve_device",
    "resolve_dtype",
    "load_task_model",
    "TaskRestorer",
]

ProgressFn = Callable[[int, int], None]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    tile_batch: int = Field(16, ge=1, description="Tiles per forward pass (bounds memory)")
    self_ensemble: bool = Field(False, description="Average over the 8 flips/transposes (8x the cost)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    dtype: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Autocast precision (fp16 needs cuda)")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(_DTYPES)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise ValueError("--dtype fp16 needs a CUDA device (on the CPU use bf16)")
    return _DTYPES[name]


def load_task_model(model_dir: str | Path | None, task: str, device: torch.device | str = "cpu") -> "IPT":
    """Load a model directory keeping only ``task`` (an error lists the tasks the model has), in eval mode."""
    from ipt.core.checkpoints.bundled import resolve_model_dir
    from ipt.core.model.ipt import IPT

    directory = resolve_model_dir(model_dir)
    if not directory.exists():
        raise FileNotFoundError(f"{directory}: model directory not found")
    model = IPT.from_pretrained(directory, tasks=[task])
    return model.to(torch.device(device)).eval()


class TaskRestorer:
    """Restore whole images for one task with the chosen protocol; ``tiles`` counts network inputs run so far.

    ``model`` is an :class:`~ipt.core.model.IPT` (tiles go through ``model(tiles, task)``) or a tile function
    ``(b, 3, T, T) -> (b, 3, T*s, T*s)`` with ``scale`` given.
    """

    def __init__(
        self,
        model: "IPT | Callable[[Tensor], Tensor]",
        task: str,
        options: InferenceOptions | None = None,
        scale: int | None = None,
        tile: int | None = None,
    ) -> None:
        from ipt.core.model.ipt import IPT

        self.options = options or InferenceOptions()
        self.task = task
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype, self.device)
        if isinstance(model, IPT):
            model._check_task(task)
            self.model: IPT | None = model.to(self.device).eval()
            self.scale = model.scale(task)
            self.tile = model.config.patch_size
            self._net: Callable[[Tensor], Tensor] = lambda tiles: model(tiles, task)
            self.extra_channels = model.spec(task).in_channels - 3
            if self.extra_channels:  # the stitchers keep the input's channel count: pad, then drop after stitching
                self._net = lambda tiles: torch.cat(
                    [model(tiles, task), tiles.new_zeros(tiles.shape[0], self.extra_channels,
                                                         *(n * self.scale for n in tiles.shape[-2:]))], dim=1)
        else:
            if scale is None:
                raise ValueError("TaskRestorer with a tile function needs scale=")
            self.model, self.scale, self.tile, self._net = None, scale, tile or 48, model
            self.extra_channels = 0
        self.tiles = 0

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _fn(self, tiles: Tensor) -> Tensor:
        self.tiles += int(tiles.shape[0])
        with self._autocast():
            return self._net(tiles).float()

    def __call__(self, image: Tensor, progress: ProgressFn | None = None) -> Tensor:
        """``image`` ``(C, H, W)`` or ``(B, C, H, W)`` on 0-255 -> restored ``(3, H*s, W*s)`` (or batched), clamped
        to [0, 255], float32 on the CPU. ``C`` is the task's ``in_channels``: 3, or RGB then its extra inputs."""
        from ipt.core.inference.tiling import TiledRestorer, official_forward_chop

        o = self.options
        x = image.to(device=self.device, dtype=torch.float32)
        with torch.inference_mode():
            if o.protocol == "official":
                y = official_forward_chop(
                    self._fn, x, self.scale, tile=self.tile, tile_batch=o.tile_batch,
                    self_ensemble=o.self_ensemble, progress=progress,
                )
            else:
                y = TiledRestorer(
                    self._fn, self.scale, tile=self.tile, overlap=o.overlap, blend=o.blend,
                    tile_batch=o.tile_batch, self_ensemble=o.self_ensemble, progress=progress,
                )(x)
        if self.extra_channels:
            y = y[..., :3, :, :]
        return y.clamp(0, 255).float().cpu()
