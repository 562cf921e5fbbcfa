"""The contract of a dataset layout plugin: how to find (degraded, clean) image pairs in a folder.

A :class:`DatasetLayout` is registered by the hook ``ipt_register_dataset_layouts`` and used by *both*
``ipt train --data DIR`` and ``ipt eval --data DIR`` (:func:`ipt.core.data.pairing.detect_layout`). Its ``find``
gets the folder and the task's :class:`~ipt.registry.spec.TaskSpec` and returns:

* ``None`` when the folder is not of this layout (the next layout is asked);
* a :class:`LayoutMatch` (a one-line description and the :class:`ImagePair` list) when it is;
* raises :class:`PairingError` (one line naming the files) when the folder is of this layout but broken
  (unmatched names, an input folder that is also the target folder, ...).

A pair whose ``degraded`` is ``None`` is a clean image that the task's ``degrade`` turns into an input on the fly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from pydantic import ConfigDict, field_validator

from ipt.registry.origin import PluginItem

__all__ = ["ImagePair", "LayoutMatch", "PairingError", "DatasetLayout", "LAYOUT_NAME_RE"]

LAYOUT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class PairingError(ValueError):
    """A folder whose files cannot be paired; ``str()`` is one line that lists the offending files."""


@dataclass(frozen=True)
class ImagePair:
    """One sample: the ``degraded`` input file and its ``clean`` target; ``degraded=None``: made on the fly."""

    name: str
    clean: Path
    degraded: Path | None = None


@dataclass
class LayoutMatch:
    """What a layout's ``find`` returns for a folder it recognises."""

    description: str
    pairs: list[ImagePair] = field(default_factory=list)


# (folder: Path, task: TaskSpec) -> LayoutMatch | None; typed loosely so pydantic needs no TaskSpec schema.
FindFn = Callable[..., Any]


class DatasetLayout(PluginItem):
    """A folder layout: ``find(folder, task_spec) -> LayoutMatch | None`` (see the module doc).

    ``name`` is unique over all plugins (``sr_benchmark``, ``reside``); ``plugin``/``distribution``/``version``
    are filled in by the registry.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str
    description: str
    find: FindFn

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not LAYOUT_NAME_RE.match(v):
            raise ValueError(f"layout name {v!r} must match {LAYOUT_NAME_RE.pattern}")
        return v

    @field_validator("find")
    @classmethod
    def _check_find(cls, v: FindFn) -> FindFn:
        if not callable(v):
            raise ValueError("find must be callable")
        return v

    @property
    def origin(self) -> str:
        return f"layout {self.name!r} of plugin {self.plugin!r} ({self.distribution or '?'} {self.version or '?'})"

