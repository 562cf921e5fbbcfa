"""The contract of a plugin command: :class:`Command`, returned by the hook ``ipt_register_commands``.

A plugin adds ``ipt NAME`` (e.g. ``ipt dehaze-prepare``) the way a built-in command is made: a function that
adds its options to an ``argparse.ArgumentParser`` and a function that runs it with the parsed namespace and
returns the exit code. Built-in command names always win; a clash is reported on the plugin (``ipt plugins``).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from pydantic import ConfigDict, Field, field_validator

from ipt.registry.origin import PluginItem

COMMAND_NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class Command(PluginItem):
    """One ``ipt`` subcommand provided by a plugin.

    ``add_arguments(parser)`` gets the command's ``argparse.ArgumentParser`` (``prog`` is ``ipt NAME``);
    ``run(args)`` gets the parsed ``argparse.Namespace`` and returns the exit code (``None`` = 0). Errors the CLI
    knows (``ValueError``, ``FileNotFoundError``, ...) become one ``ipt NAME: error: ...`` line, exit code 2; any
    other exception is reported with the plugin and distribution, exit code 1.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    name: str = Field(..., description="Command name: lower case words joined by '-', e.g. 'dehaze-prepare'")
    help: str = Field(..., description="One line, shown by 'ipt --help'")
    run: Callable[[Any], Any]
    add_arguments: Callable[[Any], Any] | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not COMMAND_NAME_RE.match(v):
            raise ValueError(f"command name {v!r} must match {COMMAND_NAME_RE.pattern} (e.g. 'dehaze-prepare')")
        return v

    @field_validator("help")
    @classmethod
    def _check_help(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("help must not be empty")
        return v

    @property
    def origin(self) -> str:
        return f"plugin {self.plugin or '?'!r} ({self.distribution or '?'} {self.version or '?'})"

