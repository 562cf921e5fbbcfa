"""The task registry: loads every plugin of the entry-point group ``ipt`` and validates what it registers.

Built-in plugins are entry points of our own distribution, so they are loaded exactly like third-party ones.
Each entry point is loaded and called on its own: an import error, an exception in a hook, an invalid spec or a
duplicate task name is recorded on that plugin (see :class:`PluginInfo`) and never stops the others.
Set ``IPT_DISABLE_PLUGINS=name[,name...]`` (entry-point or distribution names) to skip plugins.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

import pluggy
from pydantic import ValidationError

from ipt.registry import hookspecs
from ipt.registry.layouts import DatasetLayout
from ipt.registry.metrics import MetricSpec
from ipt.registry.spec import TaskFamily, TaskSpec

DISABLE_ENV = "IPT_DISABLE_PLUGINS"
BUILTIN_DISTRIBUTION = "ipt-framework"


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
        self.layouts: dict[str, DatasetLayout] = {}
        self.metrics: dict[str, MetricSpec] = {}
        self._resolved: dict[str, TaskSpec] = {}
        self._lock = threading.Lock()
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
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is the plugin's, not ours
                info.errors.append(f"import of {ep.value!r} failed: {type(exc).__name__}: {_first_line(exc)}")
                continue
            self._register(info, obj)

    def _register(self, info: PluginInfo, obj: Any) -> None:
        try:
            self.pm.register(obj, name=info.name)
        except Exception as exc:  # noqa: BLE001 - e.g. a hookimpl with a wrong signature
            info.errors.append(f"registration failed: {type(exc).__name__}: {exc}")
            return
        for impl in self.pm.hook.ipt_register_tasks.get_hookimpls():
            if impl.plugin is obj:
                for spec in self._call(info, impl.function, TaskSpec, "ipt_register_tasks"):
                    self._add_task(info, spec)
        for impl in self.pm.hook.ipt_register_task_families.get_hookimpls():
            if impl.plugin is obj:
                for fam in self._call(info, impl.function, TaskFamily, "ipt_register_task_families"):
                    self._add_family(info, fam)
        self._register_data_hooks(info, obj)

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
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001
            info.errors.append(f"{hook}() raised {type(exc).__name__}: {_first_line(exc)}")
            return []
        if result is None:
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
        self.tasks[spec.name] = spec.with_origin(info.name, info.distribution, info.version)
        info.tasks.append(spec.name)

    def _add_family(self, info: PluginInfo, fam: TaskFamily) -> None:
        self.families.append(fam.with_origin(info.name, info.distribution, info.version))
        info.families.append(fam.name)

    # -- lookup --------------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return list(self.tasks)

    def get(self, name: str) -> TaskSpec:
        """The task ``name``: a registered task, or one built on demand by a family (``denoise70``)."""
        if name in self.tasks:
            return self.tasks[name]
        with self._lock:
            if name in self._resolved:
                return self._resolved[name]
            for fam in self.families:
                groups = fam.match(name)
                if groups is None:
                    continue
                try:
                    spec = fam.build(name, **groups)
                    if not isinstance(spec, TaskSpec):
                        spec = TaskSpec.model_validate(spec)
                except Exception as exc:  # noqa: BLE001
                    raise PluginError(
                        f"task {name!r}: family {fam.name!r} of plugin {fam.plugin!r} "
                        f"({fam.distribution} {fam.version}) failed: {type(exc).__name__}: {exc}"
                    ) from exc
                if spec.name != name:
                    raise PluginError(f"family {fam.name!r} built task {spec.name!r} when asked for {name!r}")
                spec = spec.with_origin(fam.plugin or "?", fam.distribution, fam.version)
                self._resolved[name] = spec
                return spec
        raise UnknownTaskError(self.unknown_message(name))

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

    def plugin_for_task(self, name: str) -> PluginInfo | None:
        spec = self.tasks.get(name) or self._resolved.get(name)
        return self.plugins.get(spec.plugin) if spec and spec.plugin else None


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
