"""Plugin machinery: hookspecs, the :class:`TaskSpec` contract and the task registry.

``registry/`` imports nothing from ``ipt.core``: the model resolves the default head and tail of a task
(``ipt.core.model.ipt.IPT.add_task``), so this package stays the bottom of the import graph.
"""

from ipt.registry.hookspecs import hookimpl
from ipt.registry.layouts import DatasetLayout, ImagePair, LayoutMatch, PairingError
from ipt.registry.manager import get_registry
from ipt.registry.metrics import MetricSpec
from ipt.registry.spec import DegradeError, ExtraInput, MetricConventions, TaskFamily, TaskSpec

__all__ = [
    "hookimpl", "DegradeError", "ExtraInput", "MetricConventions", "TaskFamily", "TaskSpec", "get_registry", "get_task",
    "DatasetLayout", "ImagePair", "LayoutMatch", "PairingError", "MetricSpec",
]


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` for ``name`` (raises :class:`~ipt.registry.manager.UnknownTaskError`)."""
    return get_registry().get(name)
