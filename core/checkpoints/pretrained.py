"""Model directories: ``config.json`` (pydantic) + ``model.safetensors``; strict loading, atomic writes."""

from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ipt.core.files import atomic_write_dir
from ipt.core.model.config import ModelConfig
from ipt.registry.manager import BUILTIN_DISTRIBUTION, UnknownTaskError, get_registry
from ipt.registry.spec import TASK_NAME_RE
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "ipt-model"
FORMAT_VERSION = 1
MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few kB; anything near a megabyte is not one


class TaskEntry(BaseModel):
    """One task of a saved model, with the plugin that provides it."""

    model_config = ConfigDict(extra="forbid")

    name: str
    scale: int = Field(..., ge=1, le=16)
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    @field_validator("name")
    @classmethod
    def _task_name(cls, v: str) -> str:
        if not TASK_NAME_RE.match(v):
            raise ValueError(f"task name {v!r} is not a task name (it must match {TASK_NAME_RE.pattern})")
        return v


class SavedModelConfig(BaseModel):
    """The content of a model directory's ``config.json``."""

    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    format_version: int = Field(FORMAT_VERSION, ge=1)
    ipt_version: str | None = None
    architecture: ModelConfig
    tasks: list[TaskEntry] = Field(default_factory=list)


class CheckpointError(RuntimeError):
    """A model directory or weights file that cannot be loaded as asked."""


class MissingPluginError(CheckpointError):
    """A saved model needs a task whose plugin is not installed."""


class PluginMismatchError(CheckpointError):
    """A saved task is provided by another distribution, or another version, than the one it was saved with
    (raised instead of :class:`PluginMismatchWarning` when ``IPT_STRICT_PLUGINS=1``)."""


class PluginMismatchWarning(UserWarning):
    """A saved task is provided by another distribution, or another version, than the one it was saved with."""


STRICT_PLUGINS_ENV = "IPT_STRICT_PLUGINS"


def _canonical(dist: str | None) -> str:
    return re.sub(r"[-_.]+", "-", dist or "").lower()


def check_provenance(cfg: SavedModelConfig, specs: Sequence[Any], source: str, strict: bool | None = None) -> None:
    """Compare each task's saved plugin distribution and version with the installed provider's.

    Another distribution, or another version of the same one, warns (:class:`PluginMismatchWarning`, naming both)
    or, with ``strict`` (default: the environment variable ``IPT_STRICT_PLUGINS=1``), raises
    :class:`PluginMismatchError`. Entries saved without a distribution (older files) are not compared, nor the
    versions of the built-in tasks (``ipt-framework``: they change with every release of IPT itself).
    """
    if strict is None:
        strict = os.environ.get(STRICT_PLUGINS_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    entries = {t.name: t for t in cfg.tasks}
    for spec in specs:
        entry = entries.get(spec.name)
        if entry is None or not entry.distribution:
            continue
        saved = f"{entry.distribution} {entry.version or '?'}"
        builtin = _canonical(spec.distribution) == _canonical(BUILTIN_DISTRIBUTION)  # versioned with ipt itself
        installed = f"{spec.distribution or '?'} {spec.version or '?'}"
        if _canonical(entry.distribution) != _canonical(spec.distribution):
            msg = (f"{source}: task {spec.name!r} was saved with {saved}, but {installed} (plugin {spec.plugin!r}) "
                   f"provides it now: its degradation, head or tail may differ")
        elif entry.version and spec.version and entry.version != spec.version and not builtin:
            msg = (f"{source}: task {spec.name!r} was saved with {saved}; version {spec.version} is installed "
                   f"(pip install '{entry.distribution}=={entry.version}' to match)")
        else:
            continue
        if strict:
            raise PluginMismatchError(f"{msg} ({STRICT_PLUGINS_ENV} is set)")
        warnings.warn(msg, PluginMismatchWarning, stacklevel=3)


def _ipt_version() -> str | None:
    try:
        from ipt import __version__

        return __version__
    except Exception:  # noqa: BLE001
        return None


def saved_config(model: torch.nn.Module, **extra: Any) -> SavedModelConfig:
    tasks = [
        TaskEntry(name=s.name, scale=s.scale, plugin=s.plugin, distribution=s.distribution, version=s.version)
        for s in (model.task_specs[n] for n in model.task_names)
    ]
    return SavedModelConfig(ipt_version=_ipt_version(), architecture=model.config, tasks=tasks, **extra)


def save_pretrained(model: torch.nn.Module, directory: str | Path, **extra: Any) -> Path:
    """Write ``model`` as a model directory. ``extra`` keys are stored in ``config.json`` (e.g. ``training``).

    The directory is replaced as a whole, so a folder that holds anything else is refused rather than emptied.
    """
    directory = Path(directory).resolve()
    if directory.is_dir():
        foreign = sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))
        if foreign:
            shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise CheckpointError(
                f"{directory}: refusing to replace a folder that holds other files ({shown}); "
                "save the model into a new or empty folder"
            )
    elif directory.exists():
        raise CheckpointError(f"{directory}: exists and is not a folder")
    cfg = saved_config(model, **extra)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "tasks": ",".join(model.task_names)})
        (tmp / CONFIG_NAME).write_text(cfg.model_dump_json(indent=2) + "\n")

    return atomic_write_dir(Path(directory), write)


def read_config(directory: str | Path) -> SavedModelConfig:
    """Read and validate ``config.json`` of a model directory.

    Raises :class:`CheckpointError` (one line naming the file) for a missing, oversized (> 1 MiB), too deeply
    nested or malformed file, an invalid architecture or task list, a ``format`` other than ``ipt-model`` and a
    ``format_version`` newer than this version of ipt reads.
    """
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise CheckpointError(f"{directory}: not a model directory (it does not exist or is not a folder)")
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes is too large for a model config (max 1 MiB)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise CheckpointError(f"{path}: invalid model config: nested too deeply") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: invalid model config: not JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: invalid model config: a JSON object is expected, found {type(raw).__name__}")
    _check_format(raw, path)
    try:
        return SavedModelConfig.model_validate(raw)
    except (ValidationError, RecursionError) as exc:
        raise CheckpointError(f"{path}: invalid model config: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _check_format(raw: dict[str, Any], path: Path) -> None:
    fmt, version = raw.get("format", FORMAT), raw.get("format_version", FORMAT_VERSION)
    if fmt != FORMAT:
        raise CheckpointError(f"{path}: format {fmt!r} is not an ipt model directory (expected {FORMAT!r})")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version} was written by a newer ipt (this one reads up to {FORMAT_VERSION}): "
            "upgrade ipt (pip install -U ipt-framework)"
        )


def resolve_tasks(cfg: SavedModelConfig, names: Sequence[str], source: str) -> list[Any]:
    """The TaskSpecs of a saved model's tasks; a missing plugin is named with its distribution."""
    registry = get_registry()
    entries = {t.name: t for t in cfg.tasks}
    specs = []
    for name in names:
        try:
            specs.append(registry.get(name))
        except UnknownTaskError as exc:
            entry = entries.get(name)
            dist = entry.distribution if entry and entry.distribution else None
            info = registry.plugins.get(entry.plugin) if entry and entry.plugin else None
            if info is not None and info.disabled:
                raise MissingPluginError(
                    f"{source}: task {name!r} needs plugin {info.name!r} ({info.distribution}), "
                    f"which is disabled by IPT_DISABLE_PLUGINS"
                ) from exc
            if dist:
                raise MissingPluginError(
                    f"{source}: task {name!r} needs the plugin distribution {dist!r} "
                    f"(saved with version {entry.version}), which is not installed or is disabled: "
                    f"pip install {dist}"
                ) from exc
            raise MissingPluginError(f"{source}: {exc}") from exc
    return specs


def check_state_dict(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped tensors."""
    check_shapes({k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in found.items()}, source)


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: str) -> None:
    """:func:`check_state_dict` on shapes alone (names -> shape tuples)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = sorted(
        f"{k}: expected {tuple(expected[k])}, found {tuple(found[k])}"
        for k in set(expected) & set(found)
        if tuple(expected[k]) != tuple(found[k])
    )
    if missing or unexpected or shapes:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
            if items:
                shown = ", ".join(items[:12]) + (f", ... ({len(items)} in all)" if len(items) > 12 else "")
                parts.append(f"{title}: {shown}")
        raise CheckpointError(f"{source}: weights do not match the model ({'; '.join(parts)})")


def header_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (no tensor data is read)."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:
        raise CheckpointError(f"{weights}: cannot read safetensors file: {exc}") from exc


def _own_keys(saved: Sequence[str], kept: Sequence[str]) -> Any:
    """A predicate: does a state-dict key belong to a kept task (or the shared body)?"""
    dropped = [t for t in saved if t not in kept]
    own = tuple(f"{part}.{t}." for t in dropped for part in ("heads", "tails"))
    embeds = {f"task_embed.{t}" for t in dropped}
    return lambda k: not (dropped and (k.startswith(own) or k in embeds))


def _expected_shapes(cfg: SavedModelConfig, specs: list[Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the config implies, from a model built on the meta device (no memory)."""
    from ipt.core.model.ipt import IPT

    with torch.device("meta"):
        meta = IPT(cfg.architecture, specs)
    return {k: tuple(v.shape) for k, v in meta.state_dict().items()}


def _check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise CheckpointError(f"{source}: the weights hold NaN or infinite values ({shown}); the file is damaged")


def load_pretrained(
    directory: str | Path, tasks: Sequence[str] | None = None, map_location: str | torch.device = "cpu"
) -> Any:
    """Load a model directory. ``tasks`` keeps only those tasks (each must be in the checkpoint).

    Everything is checked before memory is allocated for the model: the config (:func:`read_config`), the
    tasks' plugins, and every tensor shape in the safetensors header against the shapes the config implies
    (a config asking for a huge model fails here, not in the allocator). The weights must be finite. Raises
    :class:`CheckpointError` (or :class:`MissingPluginError`) with one line naming the file.
    """
    from ipt.core.model.ipt import IPT

    directory = Path(directory)
    cfg = read_config(directory)
    saved = [t.name for t in cfg.tasks]
    if tasks is not None:
        absent = [t for t in tasks if t not in saved]
        if absent:
            close = [m for t in absent for m in difflib.get_close_matches(t, saved, n=1, cutoff=0.6)]
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise CheckpointError(
                f"{directory}: the model has no task {', '.join(map(repr, absent))}{hint}; it has: {', '.join(saved)}"
            )
    # Only the kept tasks need their plugins: loading sr2 from a multi-task model works without the others.
    kept = list(tasks) if tasks is not None else saved
    specs = resolve_tasks(cfg, kept, str(directory))
    check_provenance(cfg, specs, str(directory))
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    keep = _own_keys(saved, kept)
    check_shapes(_expected_shapes(cfg, specs), {k: v for k, v in header_shapes(weights).items() if keep(k)}, str(weights))
    try:
        state = load_file(str(weights), device=str(map_location))
    except Exception as exc:
        raise CheckpointError(f"{weights}: cannot read safetensors file: {exc}") from exc
    state = {k: v for k, v in state.items() if keep(k)}
    _check_finite(state, str(weights))
    model = IPT(cfg.architecture, specs)
    check_state_dict(model.state_dict(), state, str(weights))
    model.load_state_dict(state, strict=True)
    return model
