"""The task registry: loads every plugin of the entry-point group ``ipt`` and validates what it registers.

Built-in plugins are entry points of our own distribution, so they are loaded exactly like third-party ones.
Each entry point is loaded and called on its own: an import error or an exception in a hook (``SystemExit``
included), an unknown hook name, an invalid spec, a task name another distribution provides (or that matches
another distribution's task family) is recorded on that plugin (see :class:`PluginInfo`) and never stops the
others. A plugin's prints go to stderr while it is imported or called (:func:`plugin_call`).
Set ``IPT_DISABLE_PLUGINS=name[,name...]`` (entry-point or distribution names) to skip plugins.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import sys
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Callable, Iterable

import pluggy
import torch
from pydantic import ValidationError

from ipt.registry import hookspecs
from ipt.registry.commands import Command
from ipt.registry.layouts import DatasetLayout
from ipt.registry.metrics import MetricSpec
from ipt.registry.spec import DegradeError, TaskFamily, TaskSpec

DISABLE_ENV = "IPT_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "ipt-framework"
PATCH = 48  # side of the dry-run crop of TaskRegistry.check (the paper's patch size, what training feeds degrade)


class UnknownTaskError(KeyError):
    """A task name that no loaded plugin provides. ``str()`` is the full, user-facing message."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownMetricError(ValueError):
    """A metric name that no loaded plugin provides (``ipt eval --metrics``, ``MetricConventions.report``)."""


class PluginError(RuntimeError):
    """A plugin failed to load or registered something invalid."""


@dataclass
class PluginInfo:
    """What the registry knows about one plugin (one entry point)."""

    name: str
    distribution: str | None
    version: str | None
    value: str = ""
    tasks: list[str] = field(default_factory=list)
    families: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    layouts: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    disabled: bool = False

    @property
    def error(self) -> str | None:
        return "; ".join(self.errors) if self.errors else None

    @property
    def origin(self) -> str:
        dist = self.distribution or "?"
        return f"plugin {self.name!r} ({dist} {self.version or '?'})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "entry_point": self.value,
            "tasks": list(self.tasks),
            "families": list(self.families),
            "commands": list(self.commands),
            "layouts": list(self.layouts),
            "metrics": list(self.metrics),
            "disabled": self.disabled,
            "error": self.error,
        }


def _disabled_names() -> set[str]:
    raw = os.environ.get(DISABLE_ENV, "")
    return {n.strip().lower() for n in raw.split(",") if n.strip()}


def _sort_key(ep: EntryPoint) -> tuple[int, str]:
    dist = ep.dist.name if ep.dist is not None else ""
    # Built-ins first so that a third-party plugin can never take over a built-in task name.
    return (0 if dist == BUILTIN_DISTRIBUTION else 1, ep.name)


class TaskRegistry:
    """Tasks and task families registered by plugins, looked up by name."""

    def __init__(self, plugins: Iterable[tuple[str, Any, str | None, str | None]] | None = None) -> None:
        """Load plugins.

        With ``plugins=None`` (the normal case) every entry point of the group ``ipt`` is loaded. Tests may pass
        ``(name, module_or_object, distribution, version)`` tuples instead.
        """
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.tasks: dict[str, TaskSpec] = {}
        self.families: list[TaskFamily] = []
        self.commands: dict[str, Command] = {}
        self.layouts: dict[str, DatasetLayout] = {}
        self.metrics: dict[str, MetricSpec] = {}
        self._resolved: dict[str, TaskSpec] = {}
        self._checked: set[str] = set()
        self._lock = threading.RLock()
        if plugins is None:
            self._load_entry_points()
        else:
            for name, obj, dist, version in plugins:
                info = PluginInfo(name=name, distribution=dist, version=version, value=repr(obj))
                self.plugins[name] = info
                self._register(info, obj)

    # -- loading -------------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        disabled = _disabled_names()
        for ep in sorted(entry_points(group=hookspecs.ENTRY_POINT_GROUP), key=_sort_key):
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            info = PluginInfo(name=ep.name, distribution=dist, version=version, value=ep.value)
            if ep.name in self.plugins:
                other = self.plugins[ep.name]
                info.errors.append(
                    f"entry point name {ep.name!r} is already used by {other.distribution} {other.version}; ignored"
                )
                self.plugins[f"{ep.name}@{dist}"] = info
                continue
            self.plugins[ep.name] = info
            if ep.name.lower() in disabled or (dist or "").lower() in disabled:
                info.disabled = True
                continue
            ok, obj = plugin_call(info, f"import of {ep.value!r}", ep.load)
            if ok:
                self._register(info, obj)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        ok, _ = plugin_call(info, "registration", lambda: self.pm.register(obj, name=info.name))
        if not ok:
            return
        self._check_hook_names(info, obj)
        for impl in self.pm.hook.ipt_register_tasks.get_hookimpls():
            if impl.plugin is obj:
                for spec in self._call(info, impl.function, TaskSpec, "ipt_register_tasks"):
                    self._add_task(info, spec)
        for impl in self.pm.hook.ipt_register_task_families.get_hookimpls():
            if impl.plugin is obj:
                for fam in self._call(info, impl.function, TaskFamily, "ipt_register_task_families"):
                    self._add_family(info, fam)
        for impl in self.pm.hook.ipt_register_commands.get_hookimpls():
            if impl.plugin is obj:
                for cmd in self._call(info, impl.function, Command, "ipt_register_commands"):
                    self._add_command(info, cmd)

        self._register_data_hooks(info, obj)

    def _check_hook_names(self, info: PluginInfo, obj: Any) -> None:
        """Report hook implementations without a hookspec (a misspelled hook), as pluggy's ``check_pending``."""
        known = [n for n in vars(self.pm.hook) if getattr(self.pm.hook, n).has_spec()]
        for name, caller in vars(self.pm.hook).items():
            if caller.has_spec() or not any(i.plugin is obj for i in caller.get_hookimpls()):
                continue
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the hooks are {', '.join(sorted(known))}"
            info.errors.append(f"unknown hook {name!r} (no such hook in {hookspecs.PROJECT!r}{hint})")

    def _register_data_hooks(self, info: PluginInfo, obj: Any) -> None:
        """Dataset layouts and metrics of one plugin; a name another plugin took first is reported and ignored."""
        hooks = ((self.pm.hook.ipt_register_dataset_layouts, DatasetLayout, self.layouts, info.layouts, "layout"),
                 (self.pm.hook.ipt_register_metrics, MetricSpec, self.metrics, info.metrics, "metric"))
        for hook, kind, table, names, what in hooks:
            for impl in hook.get_hookimpls():
                if impl.plugin is not obj:
                    continue
                for item in self._call(info, impl.function, kind, hook.name):
                    if item.name in table:
                        first = table[item.name]
                        info.errors.append(
                            f"{what} {item.name!r} is also registered by plugin {first.plugin!r} "
                            f"({first.distribution} {first.version}); this one ({info.distribution} {info.version}) "
                            "is ignored"
                        )
                        continue
                    table[item.name] = item.with_origin(info.name, info.distribution, info.version)
                    names.append(item.name)

    def _call(self, info: PluginInfo, fn: Any, kind: type, hook: str) -> list[Any]:
        ok, result = plugin_call(info, f"{hook}()", fn)
        if not ok or result is None:
            return []
        if isinstance(result, (kind, dict)):
            result = [result]
        out = []
        for i, item in enumerate(result):
            try:
                out.append(item if isinstance(item, kind) else kind.model_validate(item))
            except ValidationError as exc:
                info.errors.append(f"{hook}() item {i} is not a valid {kind.__name__}: {_short(exc)}")
            except Exception as exc:  # noqa: BLE001
                info.errors.append(f"{hook}() item {i} is not a valid {kind.__name__}: {exc}")
        return out

    def _add_task(self, info: PluginInfo, spec: TaskSpec) -> None:
        if spec.name in self.tasks:
            first = self.tasks[spec.name]
            info.errors.append(
                f"task {spec.name!r} clashes with the task of the same name from plugin {first.plugin!r} "
                f"({first.distribution} {first.version}); this one ({info.distribution} {info.version}) is ignored"
            )
            return
        fam = self._family_of(spec.name, other_than=info.distribution)
        if fam is not None:
            info.errors.append(
                f"task {spec.name!r} belongs to the family {fam.name!r} of plugin {fam.plugin!r} "
                f"({fam.distribution} {fam.version}); this one ({info.distribution} {info.version}) is ignored"
            )
            return
        self.tasks[spec.name] = spec.with_origin(info.name, info.distribution, info.version)
        info.tasks.append(spec.name)

    def _add_family(self, info: PluginInfo, fam: TaskFamily) -> None:
        taken = [
            f"{n!r} ({owner})" for n in [fam.name, *fam.examples] if (owner := self._owner(n, info.distribution))
        ]
        if taken:
            info.errors.append(
                f"family {fam.name!r} would take task names another distribution provides: {', '.join(taken)}; "
                f"this one ({info.distribution} {info.version}) is ignored"
            )
            return
        self.families.append(fam.with_origin(info.name, info.distribution, info.version))
        info.families.append(fam.name)

    def _add_command(self, info: PluginInfo, cmd: Command) -> None:
        if cmd.name in self.commands:
            first = self.commands[cmd.name]
            info.errors.append(f"command {cmd.name!r} is already added by {first.origin}; this one is ignored")
            return
        self.commands[cmd.name] = cmd.with_origin(info.name, info.distribution, info.version)
        info.commands.append(cmd.name)

    def plugin_commands(self, builtin: Iterable[str]) -> dict[str, Command]:
        """The plugins' commands whose names are not ``builtin`` ones; a clash is recorded on its plugin (once)."""
        builtin = set(builtin)
        for name in [n for n in self.commands if n in builtin]:
            cmd = self.commands.pop(name)
            info = self.plugins.get(cmd.plugin or "")
            if info is not None:
                info.commands.remove(name)
                info.errors.append(f"command {name!r} is a built-in ipt command; the plugin's one is ignored")
        return dict(self.commands)

    def _family_of(self, name: str, other_than: str | None) -> TaskFamily | None:
        """The first family of another distribution whose pattern matches ``name``."""
        return next((f for f in self.families if f.distribution != other_than and f.match(name) is not None), None)

    def _owner(self, name: str, other_than: str | None) -> str | None:
        """``plugin 'x' (dist)`` when a task or family of another distribution already has ``name``."""
        spec = self.tasks.get(name)
        if spec is not None and spec.distribution != other_than:
            return f"task of plugin {spec.plugin!r}, {spec.distribution}"
        for f in self.families:
            if f.distribution != other_than and (f.name == name or f.match(name) is not None):
                return f"family {f.name!r} of plugin {f.plugin!r}, {f.distribution}"
        return None

    # -- lookup --------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tasks)

    def get(self, name: str) -> TaskSpec:
        """The task ``name``: a registered task, or one built on demand by a family (``denoise70``).

        The first lookup of each task runs its ``degrade`` once on a training-sized batch (:meth:`check`), so a
        wrong output shape fails here with :class:`PluginError` naming the plugin, not at the first training step.
        """
        with self._lock:
            spec = self.tasks.get(name) or self._resolved.get(name) or self._from_family(name)
            if name not in self._checked:
                self.check(spec)
                self._checked.add(name)
            return spec

    def _from_family(self, name: str) -> TaskSpec:
        for fam in self.families:
            groups = fam.match(name)
            if groups is None:
                continue
            origin = f"family {fam.name!r} of plugin {fam.plugin!r} ({fam.distribution} {fam.version})"
            holder = PluginInfo(name=fam.plugin or "?", distribution=fam.distribution, version=fam.version)
            ok, spec = plugin_call(holder, "build", functools.partial(fam.build, name, **groups))
            try:
                if not ok:
                    raise PluginError(f"task {name!r}: {origin} failed: {holder.errors[0].removeprefix('build ')}")
                if not isinstance(spec, TaskSpec):
                    spec = TaskSpec.model_validate(spec)
            except ValidationError as exc:
                raise PluginError(f"task {name!r}: {origin} built an invalid TaskSpec: {_short(exc)}") from exc
            if spec.name != name:
                raise PluginError(f"{origin} built task {spec.name!r} when asked for {name!r}")
            spec = spec.with_origin(fam.plugin or "?", fam.distribution, fam.version)
            self._resolved[name] = spec
            return spec
        raise UnknownTaskError(self.unknown_message(name))

    def check(self, spec: TaskSpec) -> None:
        """Run ``spec.degrade`` once on two smooth ``(3, 48*scale, 48*scale)`` images (a training crop) with a
        seeded generator; a failure or a wrong shape raises :class:`PluginError` naming the plugin and
        distribution, and is recorded on the plugin (``ipt plugins`` shows it)."""
        size = PATCH * spec.scale
        ramp = torch.linspace(0, 255, size)
        clean = (ramp.view(1, 1, -1, 1) + 0 * ramp.view(1, 1, 1, -1)).expand(2, 3, size, size).contiguous()
        try:
            spec.degrade(clean, torch.Generator().manual_seed(0))
            return
        except DegradeError as exc:  # already names the task, plugin and distribution
            msg = str(exc)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - SystemExit too
            msg = f"task {spec.name!r} of {spec.origin}: degrade failed on a {tuple(clean.shape)} batch: {_describe(exc)}"
        info = self.plugins.get(spec.plugin or "")
        if info is not None and msg not in info.errors:
            info.errors.append(msg)
        raise PluginError(msg)

    def check_all(self) -> None:
        """:meth:`check` every registered task (the failures are recorded on their plugins)."""
        for name in list(self.tasks):
            try:
                self.get(name)
            except PluginError:
                pass

    def unknown_message(self, name: str) -> str:
        known = sorted(self.tasks)
        fams = [f.name for f in self.families]
        msg = f"unknown task {name!r}"
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        if close:
            msg += f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        msg += f". Known tasks: {', '.join(known) or 'none'}"
        if fams:
            msg += f"; families: {', '.join(fams)}"
        for info in self.plugins.values():
            if info.disabled and name.startswith(info.name):
                msg += f". Plugin {info.name!r} ({info.distribution}) is disabled by {DISABLE_ENV}"
            elif info.errors and (name.startswith(info.name) or not info.tasks):
                msg += f". Broken {info.origin}: {info.error}"
        return msg

    def metric(self, name: str) -> MetricSpec:
        """The metric ``name``; :class:`UnknownMetricError` (one line listing the known metrics) if none has it."""
        if name not in self.metrics:
            close = difflib.get_close_matches(name, list(self.metrics), n=2, cutoff=0.6)
            hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
            raise UnknownMetricError(f"unknown metric {name!r}{hint}. Known metrics: {', '.join(self.metrics) or 'none'}")
        return self.metrics[name]

    def errors(self) -> dict[str, str]:
        return {k: v.error for k, v in self.plugins.items() if v.error}


def plugin_call(info: PluginInfo, what: str, fn: Callable[[], Any]) -> tuple[bool, Any]:
    """Run plugin code ``fn()``: its prints go to stderr (stdout stays clean for ``--json``), and any exception,
    ``SystemExit`` included, is recorded on ``info`` as ``"<what> failed: Type: first line"``; ``(ok, result)``.

    Only ``KeyboardInterrupt`` (the user's Ctrl-C) and ``GeneratorExit`` pass through.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):
            return True, fn()
    except (KeyboardInterrupt, GeneratorExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - SystemExit too: a plugin must not end the tool
        info.errors.append(f"{what} failed: {_describe(exc)}")
        return False, None


def _describe(exc: BaseException) -> str:
    line = _first_line(exc)
    if isinstance(exc, SystemExit):
        return f"SystemExit: {line}" if line and line != "None" else "SystemExit (the plugin called sys.exit())"
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _short(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


_REGISTRY: TaskRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def get_registry() -> TaskRegistry:
    """The process-wide registry (loaded on first use)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            _REGISTRY = TaskRegistry()
        return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded plugins (after installing one, or changing ``IPT_DISABLE_PLUGINS``)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        _REGISTRY = None
