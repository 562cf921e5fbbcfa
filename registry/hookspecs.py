"""The hooks a plugin can implement (pluggy project name ``ipt``).

A plugin is a module (or object) with functions decorated by :data:`hookimpl`; it is found through an entry
point in the group ``ipt``. Every hook is documented in ``docs/plugins.md``.
"""

from __future__ import annotations

import pluggy

from ipt.registry.commands import Command
from ipt.registry.layouts import DatasetLayout
from ipt.registry.metrics import MetricSpec
from ipt.registry.spec import TaskFamily, TaskSpec

PROJECT = "ipt"
ENTRY_POINT_GROUP = "ipt"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def ipt_register_tasks() -> list[TaskSpec]:
    """Return the tasks this plugin provides (fixed names such as ``sr2`` or ``derain``).

    Called once, when the registry loads the plugins (the first time a task is looked up or listed).
    """


@hookspec
def ipt_register_task_families() -> list[TaskFamily]:
    """Return parametric task families (e.g. ``denoise<sigma>``) resolved on demand by name.

    Called once, when the registry loads the plugins; a family's ``build`` is called the first time a
    matching task name (e.g. ``denoise70``) is asked for.
    """


@hookspec
def ipt_register_commands() -> list[Command]:
    """Return ``ipt`` subcommands this plugin adds (e.g. ``ipt dehaze-prepare``), as :class:`Command` objects.

    Called once, when the registry loads the plugins, by any ``ipt`` command line whose command is not a
    built-in one (and by ``ipt plugins``, which lists them). Built-in command names always win.
    """


@hookspec
def ipt_register_dataset_layouts() -> list[DatasetLayout]:
    """Return folder layouts (how to find and pair degraded/clean files) used by ``ipt train`` and ``ipt eval``.

    Called once, when the registry loads the plugins; a layout's ``find`` is called for every ``--data`` folder
    that is detected (see :mod:`ipt.registry.layouts`).
    """


@hookspec
def ipt_register_metrics() -> list[MetricSpec]:
    """Return image-quality metrics (name, higher-is-better, function, colour space; :mod:`ipt.registry.metrics`).

    Called once, when the registry loads the plugins; a metric's ``compute`` is called per scored image.
    """
