"""The contract a task plugin fulfils: :class:`TaskSpec`, :class:`TaskFamily`, :class:`MetricConventions`.

Images are float tensors on the 0-255 scale, shape ``(B, 3, H, W)`` (a single ``(3, H, W)`` image is accepted
by :meth:`TaskSpec.degrade` too); the network input of a task with ``extra_inputs`` has more channels after the
RGB ones. ``degrade`` must draw all its randomness from the ``torch.Generator`` it is given, so that the same
seed gives the same corrupted image in any process or DataLoader worker.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ipt.registry.origin import PluginItem

if TYPE_CHECKING:  # pragma: no cover - type hints only: registry/ never imports core/ at run time
    from torch import nn

    from ipt.core.model.config import ModelConfig

TASK_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

DegradeFn = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# Gets the model's ModelConfig, returns an nn.Module (typed loosely so pydantic needs no torch.nn schema).
BuildFn = Callable[..., Any]


class MetricConventions(BaseModel):
    """How a task is scored (DESIGN.md, evaluation conventions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    color_space: Literal["y", "rgb"] = Field("y", description="Main PSNR/SSIM colour space (Y = BT.601 luma).")
    crop_border: int | None = Field(
        None, ge=0, description="Pixels cropped from each border before scoring; None = the task's scale if > 1, else 0."
    )
    report: tuple[str, ...] = Field(
        ("psnr", "ssim"), min_length=1,
        description="Metrics (names registered by ipt_register_metrics) that ipt eval reports by default.",
    )

    def border_for(self, scale: int) -> int:
        if self.crop_border is not None:
            return self.crop_border
        return scale if scale > 1 else 0


class DegradeError(ValueError):
    """A plugin's ``degrade`` returned something unusable (not a tensor, wrong shape); names the plugin."""


class ExtraInput(BaseModel):
    """One input of a task beyond the RGB image, e.g. the mask of an inpainting task.

    ``degrade`` returns it after the three RGB channels; ``ipt restore``/``ipt eval`` read it from a file beside
    each image, ``<stem>_<name>.png`` (``photo.png`` -> ``photo_mask.png``): one channel is read as grey, three
    as RGB, on the same 0-255 scale and at the size of the image.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(..., description="Short name, also the file suffix: 'mask' -> <stem>_mask.png")
    channels: int = Field(1, description="1 (grey) or 3 (RGB)")
    description: str = Field(..., description="What the channel holds, e.g. '255 = missing pixel, 0 = known'")

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not TASK_NAME_RE.match(v):
            raise ValueError(f"extra input name {v!r} must match {TASK_NAME_RE.pattern}")
        return v

    @field_validator("channels")
    @classmethod
    def _check_channels(cls, v: int) -> int:
        if v not in (1, 3):
            raise ValueError(f"an extra input has 1 (grey) or 3 (RGB) channels, got {v}")
        return v


_NONFINITE_WARNED: set[str] = set()


class TaskSpec(PluginItem):
    """One restoration task: its name, scale, network parts, degradation and metric conventions.

    ``build_head``/``build_tail`` get the model's :class:`~ipt.core.model.config.ModelConfig` and return a fresh
    ``nn.Module``; ``None`` (the default) lets the model build the official IPT part (conv3x3 + 2 ResBlocks head;
    pixel-shuffle upsampler for ``scale`` + conv3x3 tail, :mod:`ipt.core.model.blocks`), so official checkpoints
    convert 1:1. ``extra_inputs`` declares channels the network gets beside the RGB image (``in_channels`` =
    3 + theirs; the default head then takes ``in_channels``). ``params`` lists the degradation's parameters (shown by ``ipt tasks``).
    ``plugin``/``distribution``/``version`` are filled in by the registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str
    scale: int = Field(1, ge=1, le=8)
    degrade_fn: DegradeFn = Field(..., alias="degrade")
    build_head: BuildFn | None = None
    build_tail: BuildFn | None = None
    extra_inputs: tuple[ExtraInput, ...] = ()
    metrics: MetricConventions = MetricConventions()
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not TASK_NAME_RE.match(v):
            raise ValueError(f"task name {v!r} must match {TASK_NAME_RE.pattern} (lower case, digits, underscores)")
        return v

    @field_validator("description")
    @classmethod
    def _check_description(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("description must not be empty")
        return v

    @model_validator(mode="after")
    def _check_callables(self) -> "TaskSpec":
        if not callable(self.degrade_fn):
            raise ValueError("degrade must be callable")
        for field in ("build_head", "build_tail"):
            if getattr(self, field) is not None and not callable(getattr(self, field)):
                raise ValueError(f"{field} must be callable or None")
        names = [e.name for e in self.extra_inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"extra input names must be unique, got {names}")
        return self

    @property
    def crop_border(self) -> int:
        return self.metrics.border_for(self.scale)

    @property
    def in_channels(self) -> int:
        """Channels of the network input: 3 (RGB) plus those of ``extra_inputs``."""
        return 3 + sum(e.channels for e in self.extra_inputs)

    @property
    def origin(self) -> str:
        """``plugin 'sr' (ipt-framework 0.1.0)``: where the task comes from, for messages."""
        return f"plugin {self.plugin or '?'!r} ({self.distribution or '?'} {self.version or '?'})"

    def head(self, cfg: "ModelConfig") -> "nn.Module | None":
        """The plugin's head, mapping ``(B, in_channels, P, P)`` to ``(B, C, P, P)`` (``P = cfg.patch_size``,
        ``C = cfg.n_feats``), or ``None``: the model then builds the IPT head."""
        with contextlib.redirect_stdout(sys.stderr):
            return None if self.build_head is None else self.build_head(cfg)

    def tail(self, cfg: "ModelConfig") -> "nn.Module | None":
        """The plugin's tail, mapping ``(B, C, P, P)`` to ``(B, 3, P*scale, P*scale)``, or ``None``: the model
        then builds the IPT tail for ``scale``."""
        with contextlib.redirect_stdout(sys.stderr):
            return None if self.build_tail is None else self.build_tail(cfg)

    def degrade(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``clean`` (0-255 float, ``(B,3,H,W)`` or ``(3,H,W)``) into the network input.

        Returns ``(B, in_channels, H/scale, W/scale)`` (or ``(in_channels, H/s, W/s)``): the degraded RGB image,
        then the ``extra_inputs`` in their order. The plugin's function gets a copy of ``clean``, so an in-place
        write cannot corrupt the caller's training target. SR tasks expect ``H`` and ``W`` divisible by ``scale``.

        Raises :class:`DegradeError` (naming the plugin and distribution) when the result is not a tensor of that
        shape; warns once per task and process (``RuntimeWarning``) when it holds NaN/inf values.
        """
        if generator is None:
            generator = torch.Generator(device=clean.device).manual_seed(0)
        single = clean.dim() == 3
        x = clean.unsqueeze(0) if single else clean
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"task {self.name!r}: degrade expects (B,3,H,W) or (3,H,W), got {tuple(clean.shape)}")
        with contextlib.redirect_stdout(sys.stderr):  # a plugin's prints never mix with `--json` output
            out = self.degrade_fn(x.clone(), generator)
        self._check_degraded(x, out)
        return out[0] if single else out

    def _check_degraded(self, x: torch.Tensor, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            raise DegradeError(
                f"task {self.name!r} of {self.origin}: degrade returned {type(out).__name__}, not a torch.Tensor"
            )
        b, _, h, w = x.shape
        s = self.scale
        expected = (b, self.in_channels, h // s, w // s)
        spatial_ok = h % s or w % s or tuple(out.shape[-2:]) == expected[-2:]  # odd sizes: the plugin rounds
        if out.dim() != 4 or tuple(out.shape[:2]) != expected[:2] or not spatial_ok:
            raise DegradeError(
                f"task {self.name!r} of {self.origin}: degrade returned shape {tuple(out.shape)} for a "
                f"{tuple(x.shape)} batch, expected {expected} (scale {s}, {self.in_channels} input channels)"
            )
        if self.name not in _NONFINITE_WARNED and out.is_floating_point() and not bool(torch.isfinite(out).all()):
            _NONFINITE_WARNED.add(self.name)
            warnings.warn(
                f"task {self.name!r} of {self.origin}: degrade returned {int((~torch.isfinite(out)).sum())} "
                f"NaN/inf values (training skips such steps)", RuntimeWarning, stacklevel=3,
            )


    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``ipt tasks``)."""
        return {
            "name": self.name,
            "description": self.description,
            "scale": self.scale,
            "params": self.params,
            "in_channels": self.in_channels,
            "extra_inputs": [e.model_dump() for e in self.extra_inputs],
            "color_space": self.metrics.color_space,
            "crop_border": self.crop_border,
            "metrics": list(self.metrics.report),
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }


class TaskFamily(PluginItem):
    """A parametric family of tasks resolved on demand, e.g. ``denoise<sigma>`` -> ``denoise10``, ``denoise70``.

    ``pattern`` is a regular expression with named groups that must match the whole task name; ``build`` gets
    the task name and the matched groups (strings) and returns the :class:`TaskSpec`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(..., description="Display name, e.g. 'denoise<sigma>'.")
    description: str
    pattern: str
    build: Callable[..., TaskSpec]
    examples: list[str] = Field(default_factory=list)

    @field_validator("pattern")
    @classmethod
    def _check_pattern(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"pattern {v!r} is not a valid regular expression: {exc}") from exc
        return v

    def match(self, task_name: str) -> dict[str, str] | None:
        m = re.fullmatch(self.pattern, task_name)
        return m.groupdict() if m else None

