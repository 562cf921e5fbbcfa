"""Plugin machinery: hookspecs, the :class:`TaskSpec` contract and the task registry."""

from ipt.registry.hookspecs import hookimpl
from ipt.registry.layouts import DatasetLayout, ImagePair, LayoutMatch, PairingError
from ipt.registry.metrics import MetricSpec
from ipt.registry.spec import MetricConventions, TaskFamily, TaskSpec

__all__ = [
    "hookimpl", "MetricConventions", "TaskFamily", "TaskSpec", "get_registry", "get_task",
    "DatasetLayout", "ImagePair", "LayoutMatch", "PairingError", "MetricSpec",
]


def get_registry():  # noqa: ANN201 - lazy import keeps ``import ipt.registry`` light
    from ipt.registry.manager import get_registry as _get

    return _get()


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` for ``name`` (raises :class:`~ipt.registry.manager.UnknownTaskError`)."""
    return get_registry().get(name)
