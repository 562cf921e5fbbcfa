"""The contract a task plugin fulfils: :class:`TaskSpec`, :class:`TaskFamily`, :class:`MetricConventions`.

Images are float tensors on the 0-255 scale, shape ``(B, 3, H, W)`` (a single ``(3, H, W)`` image is accepted
by :meth:`TaskSpec.degrade` too). ``degrade`` must draw all its randomness from the ``torch.Generator`` it is
given, so that the same seed gives the same corrupted image in any process or DataLoader worker.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:  # pragma: no cover
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


def _default_head(cfg: "ModelConfig") -> "nn.Module":
    from ipt.core.model.blocks import build_head

    return build_head(cfg)


class TaskSpec(BaseModel):
    """One restoration task: its name, scale, network parts, degradation and metric conventions.

    ``build_head``/``build_tail`` get the model's :class:`~ipt.core.config.ModelConfig`; the defaults build the
    official IPT head (conv3x3 + 2 ResBlocks) and tail (pixel-shuffle upsampler for ``scale`` + conv3x3), so
    official checkpoints convert 1:1.  ``params`` lists the degradation's parameters (shown by ``ipt tasks``).
    ``plugin``/``distribution``/``version`` are filled in by the registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str
    scale: int = Field(1, ge=1, le=8)
    degrade_fn: DegradeFn = Field(..., alias="degrade")
    build_head: BuildFn = _default_head
    build_tail: BuildFn | None = None
    metrics: MetricConventions = MetricConventions()
    params: dict[str, Any] = Field(default_factory=dict)
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

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
        for field in ("degrade_fn", "build_head"):
            if not callable(getattr(self, field)):
                raise ValueError(f"{field} must be callable")
        if self.build_tail is not None and not callable(self.build_tail):
            raise ValueError("build_tail must be callable")
        return self

    @property
    def crop_border(self) -> int:
        return self.metrics.border_for(self.scale)

    def head(self, cfg: "ModelConfig") -> "nn.Module":
        return self.build_head(cfg)

    def tail(self, cfg: "ModelConfig") -> "nn.Module":
        if self.build_tail is not None:
            return self.build_tail(cfg)
        from ipt.core.model.blocks import build_tail

        return build_tail(cfg, self.scale)

    def degrade(self, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Corrupt ``clean`` (0-255 float, ``(B,3,H,W)`` or ``(3,H,W)``); output is ``H/scale x W/scale``.

        SR tasks expect ``H`` and ``W`` divisible by ``scale``.
        """
        if generator is None:
            generator = torch.Generator(device=clean.device).manual_seed(0)
        single = clean.dim() == 3
        x = clean.unsqueeze(0) if single else clean
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"task {self.name!r}: degrade expects (B,3,H,W) or (3,H,W), got {tuple(clean.shape)}")
        out = self.degrade_fn(x, generator)
        return out[0] if single else out

    def with_origin(self, plugin: str, distribution: str | None, version: str | None) -> "TaskSpec":
        return self.model_copy(update={"plugin": plugin, "distribution": distribution, "version": version})

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (for ``ipt tasks``)."""
        return {
            "name": self.name,
            "description": self.description,
            "scale": self.scale,
            "params": self.params,
            "color_space": self.metrics.color_space,
            "crop_border": self.crop_border,
            "metrics": list(self.metrics.report),
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }


class TaskFamily(BaseModel):
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
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

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

    def with_origin(self, plugin: str, distribution: str | None, version: str | None) -> "TaskFamily":
        return self.model_copy(update={"plugin": plugin, "distribution": distribution, "version": version})
