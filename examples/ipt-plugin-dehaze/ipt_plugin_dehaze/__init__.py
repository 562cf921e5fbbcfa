"""ipt-plugin-dehaze: the IPT task ``dehaze`` (remove synthetic haze), shipped as a separate distribution.

The framework finds this module through the entry point ``dehaze = "ipt_plugin_dehaze"`` of the group ``ipt``
and calls its hooks: :func:`ipt_register_tasks` (the task), :func:`ipt_register_dataset_layouts` (the RESIDE
``hazy/`` + ``clear/`` folders, for ``ipt train`` and ``ipt eval``) and :func:`ipt_register_metrics` (CIEDE2000).
Only the public API of ``ipt.registry`` and the pairing helpers of ``ipt.core.data.pairing`` are used; the head
and tail are the framework defaults (conv3x3 + 2 ResBlocks, conv3x3 for scale 1), so the shared pre-trained body
fits as is.
"""

from __future__ import annotations

from ipt.registry import DatasetLayout, MetricConventions, MetricSpec, TaskSpec, hookimpl

from ipt_plugin_dehaze.haze import PARAMS, add_haze
from ipt_plugin_dehaze.reside import LAYOUT, METRIC

__version__ = "0.1.0"
__all__ = ["dehaze_task", "ipt_register_tasks", "ipt_register_dataset_layouts", "ipt_register_metrics"]


def dehaze_task() -> TaskSpec:
    """The ``dehaze`` task: input = the clean image seen through random synthetic haze, same size."""
    return TaskSpec(
        name="dehaze",
        description="haze removal; haze synthesised by the atmospheric scattering model I = J*t + A*(1 - t)",
        scale=1,
        degrade=add_haze,
        # Haze shifts colours (tinted airlight), so RGB PSNR is the main score; `ipt eval` reports Y as well.
        # CIEDE2000 (lower is better) measures the colour shifts haze leaves behind.
        metrics=MetricConventions(color_space="rgb", crop_border=0, report=("psnr", "ssim", "ciede2000")),
        params={"transmission": "t = exp(-beta * depth)", **PARAMS},
    )


@hookimpl
def ipt_register_tasks() -> list[TaskSpec]:
    return [dehaze_task()]


@hookimpl
def ipt_register_dataset_layouts() -> list[DatasetLayout]:
    return [LAYOUT]


@hookimpl
def ipt_register_metrics() -> list[MetricSpec]:
    return [METRIC]
