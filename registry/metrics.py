"""The contract of a metric plugin: :class:`MetricSpec`, registered by the hook ``ipt_register_metrics``.

``compute(restored, reference)`` gets two float64 tensors ``(C, H, W)`` on the 0-255 scale: the restored image
already 8-bit quantised (clamped and rounded), both converted to the metric's ``color_space`` (``"y"``: BT.601
luma, C = 1; ``"rgb"``: C = 3; ``"task"``: the task's own ``MetricConventions.color_space``) and cropped by the
task's border. It returns one float (``inf`` is allowed, e.g. PSNR of identical images; NaN is an error).
"""

from __future__ import annotations

import re
from typing import Callable, Literal

from pydantic import ConfigDict, field_validator

from ipt.registry.origin import PluginItem

__all__ = ["MetricSpec", "METRIC_NAME_RE"]

METRIC_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

ComputeFn = Callable[..., float]


class MetricSpec(PluginItem):
    """One image-quality metric (name, direction, function, colour space); origin filled in by the registry."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str
    higher_is_better: bool
    compute: ComputeFn
    color_space: Literal["y", "rgb", "task"] = "task"
    unit: str = ""
    label: str | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not METRIC_NAME_RE.match(v):
            raise ValueError(f"metric name {v!r} must match {METRIC_NAME_RE.pattern}")
        return v

    @field_validator("compute")
    @classmethod
    def _check_compute(cls, v: ComputeFn) -> ComputeFn:
        if not callable(v):
            raise ValueError("compute must be callable")
        return v

    def space_for(self, task_color_space: str) -> str:
        """The colour space the metric is computed in for a task scored in ``task_color_space``."""
        return task_color_space if self.color_space == "task" else self.color_space

    def column(self, task_color_space: str) -> str:
        """Table header, e.g. ``PSNR-Y`` for ``psnr`` on a Y task, ``PSNR-B`` for ``psnr_b``."""
        if self.label:
            return self.label
        base = self.name.upper().replace("_", "-")
        return f"{base}-{self.space_for(task_color_space).upper()}" if self.color_space == "task" else base

    @property
    def origin(self) -> str:
        return f"metric {self.name!r} of plugin {self.plugin!r} ({self.distribution or '?'} {self.version or '?'})"

