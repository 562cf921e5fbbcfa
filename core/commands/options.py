"""Command-line flags and YAML files derived from one pydantic model (the single source of truth for options).

Each field ``foo_bar`` becomes ``--foo-bar``:

* ``int``/``float``/``str``/``Path`` -> a typed value; ``bool`` -> ``--foo/--no-foo``;
* ``Literal[...]`` -> ``choices``; ``list[str]`` -> a comma-separated value (``--tasks sr2,derain``);
* ``dict`` -> ``key=value,key=value`` (values parsed as YAML scalars);
* ``X | None`` -> the value of ``X``, or ``none`` for ``None``;
* ``Field(json_schema_extra={"cli_const": v})`` -> the flag may be given without a value, meaning ``v``
  (``--resume`` alone means ``--resume latest``).

Help texts come from ``Field(description=...)``; defaults are shown. ``--config FILE.yaml`` loads a YAML mapping of
the same fields; flags given on the command line override it (argparse ``SUPPRESS`` defaults tell which were given).
Every problem becomes one :class:`ConfigError` line that names the flag or the YAML key.
"""

from __future__ import annotations

import argparse
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)

CONFIG_DEST = "config"
NONE_WORDS = ("none", "null")


class ConfigError(ValueError):
    """A bad option value, YAML key or config file; ``str()`` is one user-facing line."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# -- annotation handling -------------------------------------------------------------------------------------
def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (annotation, False)."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 - rebuilt at run time
    return annotation, False


class _Choices(list):
    """argparse choices that also accept the ``None`` our converter makes of ``none``."""

    def __contains__(self, item: object) -> bool:
        return item is None or list.__contains__(self, item)


def _scalar_parser(tp: Any, optional: bool) -> tuple[Any, list[str] | None, str]:
    """(argparse type function, choices, metavar) for a non-bool annotation."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        values = [str(v) for v in typing.get_args(tp)]
        choices = _Choices(values + (list(NONE_WORDS[:1]) if optional else []))

        def literal(s: str) -> str | None:
            return None if optional and s.lower() in NONE_WORDS else s

        return literal, choices, "{" + ",".join(choices) + "}"
    if origin in (list, tuple, set) or tp in (list, tuple):

        def comma_list(s: str) -> list[str] | None:
            if optional and s.lower() in NONE_WORDS:
                return None
            return [item.strip() for item in s.split(",") if item.strip()]

        return comma_list, None, "A,B,..."
    if origin is dict or tp is dict:

        def mapping(s: str) -> dict[str, Any] | None:
            if optional and s.lower() in NONE_WORDS:
                return None
            out: dict[str, Any] = {}
            for item in filter(None, (i.strip() for i in s.split(","))):
                if "=" not in item:
                    raise argparse.ArgumentTypeError(f"expected key=value pairs separated by commas, got {item!r}")
                k, v = item.split("=", 1)
                out[k.strip()] = yaml.safe_load(v)
            return out

        return mapping, None, "K=V,..."
    base = tp if tp in (int, float, str, Path) else str  # unions of scalars are validated by pydantic

    def scalar(s: str) -> Any:
        if optional and s.lower() in NONE_WORDS:
            return None
        try:
            return base(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {base.__name__} value: {s!r}") from None

    scalar.__name__ = base.__name__
    metavar = {int: "N", float: "X", Path: "PATH"}.get(base, "STR")
    return scalar, None, metavar


def _default_text(info: Any) -> str:
    if info.is_required():
        return "required"
    default = info.get_default(call_default_factory=True)
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, (list, tuple)):
        return ",".join(map(str, default)) or "none"
    return "none" if default is None else str(default)


def add_model_arguments(
    parser: argparse.ArgumentParser, model: type[BaseModel], exclude: tuple[str, ...] = (), config_flag: bool = True
) -> None:
    """Add one flag per field of ``model`` (defaults suppressed so that only given flags reach the namespace)."""
    if config_flag:
        parser.add_argument(
            "--config", dest=CONFIG_DEST, metavar="FILE.yaml", default=argparse.SUPPRESS,
            help="YAML file with any of these options (keys as the flags, with underscores); flags override it",
        )
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        tp, optional = _split_optional(info.annotation)
        desc = (info.description or "").rstrip(".")
        help_text = f"{desc} (default: {_default_text(info)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if tp is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, **kwargs)
            continue
        conv, choices, metavar = _scalar_parser(tp, optional)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if "cli_const" in extra:
            kwargs.update(nargs="?", const=extra["cli_const"])
        parser.add_argument(flag_name(name), type=conv, choices=choices, metavar=metavar, **kwargs)


# -- YAML ----------------------------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file (one-line errors for a missing or malformed file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def dump_yaml(model: BaseModel) -> str:
    """``model`` as YAML (JSON-compatible values, field order kept) that :func:`parse_config` reads back."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False, default_flow_style=False)


# -- building the model ---------------------------------------------------------------------------------------
def _error_line(exc: ValidationError, cli_keys: set[str], yaml_path: str | None) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    key = loc[0] if loc else ""
    msg = err.get("msg", "invalid value")
    if err.get("type") == "extra_forbidden":
        where = f"{yaml_path}: " if yaml_path else ""
        return f"{where}unknown option {key!r}"
    if key in cli_keys:
        name = flag_name(key)
    elif key and yaml_path:
        name = f"{yaml_path}: {key}"
    elif key:
        name = key
    else:  # a whole-model check: its message names the options itself
        return msg.removeprefix("Value error, ")
    if len(loc) > 1:
        name += "." + ".".join(loc[1:])
    inp = err.get("input")
    shown = "" if isinstance(inp, dict) or err.get("type", "").startswith("value_error") else f" (got {inp!r})"
    msg = msg.removeprefix("Value error, ")
    more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
    return f"{name}: {msg}{shown}{more}"


def build_model(
    model: type[M], values: dict[str, Any], cli_keys: set[str] = frozenset(), source: str | None = None
) -> M:
    """Validate ``values`` as ``model``; errors become one :class:`ConfigError` line naming the flag/key."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_error_line(exc, set(cli_keys), source)) from None


def parse_config(model: type[M], args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> M:
    """The model from ``--config`` (if given) overridden by the flags actually given on the command line."""
    given = {k: v for k, v in vars(args).items() if k in model.model_fields and k not in exclude}
    path = getattr(args, CONFIG_DEST, None)
    values: dict[str, Any] = load_yaml(path) if path else {}
    values.update(given)
    return build_model(model, values, set(given), str(path) if path else None)
