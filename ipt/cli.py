"""The ``ipt`` command line. Each subcommand lives in its own module, imported only when it runs.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``. Plugins add commands through the
hook ``ipt_register_commands`` (:class:`ipt.registry.commands.Command`); built-in names always win.
Set ``IPT_DEBUG=1`` to see full tracebacks instead of one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Any, Callable, Sequence

# name -> (module, one-line help); a module that hosts several commands names its functions "module:suffix",
# e.g. "ipt.registry.cli:plugins" -> add_plugins_arguments / run_plugins.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ipt.core.commands.demo", "degrade and restore a bundled photo with every task of the bundled model"),
    "plugins": ("ipt.registry.cli:plugins", "list the installed task plugins and their errors"),
    "tasks": ("ipt.registry.cli:tasks", "list the available tasks with scale and degradation parameters"),
    "plugin": ("ipt.core.commands.plugin", "start a task plugin package: ipt plugin new NAME"),
    "train": ("ipt.core.commands.train", "pre-train or fine-tune IPT (same flags as core/train.py)"),
    "restore": ("ipt.core.commands.restore", "restore images of any size with a trained model"),
    "eval": ("ipt.core.commands.eval", "score a model on a folder or benchmark (PSNR/SSIM, paper conventions)"),
    "transfer": ("ipt.core.commands.transfer", "transfer experiment to unseen noise levels (paper Table 4)"),
    "convert": ("ipt.core.commands.convert", "convert an official Pretrained-IPT .pt checkpoint to a model directory"),
    "bench": ("ipt.core.commands.bench", "measure throughput and memory against the official reference"),
    "export": ("ipt.core.commands.export", "export one task for spandrel/chaiNNer/ComfyUI (official layout) or ONNX"),
    "push": ("ipt.core.commands.push", "upload a model directory to the Hugging Face Hub with a model card"),
    "plot": ("ipt.core.commands.plot", "plot loss and validation PSNR per task of a training run (PNG)"),
    "merge": ("ipt.core.commands.merge", "put tasks fine-tuned on a frozen body back into a multi-task model"),
}


def _top_parser(extra: dict[str, str] | None = None) -> argparse.ArgumentParser:
    from ipt import __version__

    helps = {n: h for n, (_, h) in COMMANDS.items()} | dict(extra or {})
    p = argparse.ArgumentParser(
        prog="ipt",
        description="Image Processing Transformer: multi-task restoration with task plugins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<10} {h}" for n, h in helps.items())
        + "\n\nRun 'ipt COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"ipt {__version__}")
    p.add_argument("command", nargs="?", choices=list(helps), metavar="COMMAND")
    return p


def _known_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from ipt.core.model import UnknownModelTaskError
    from ipt.core.checkpoints.pretrained import CheckpointError
    from ipt.registry.manager import PluginError, UnknownTaskError

    return (CheckpointError, UnknownTaskError, UnknownModelTaskError, PluginError, ValidationError,
            FileNotFoundError, FileExistsError, NotADirectoryError, ValueError, ImportError)


def _builtin(name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    module_name, _, suffix = COMMANDS[name][0].partition(":")
    module = importlib.import_module(module_name)
    add = getattr(module, f"add_{suffix}_arguments" if suffix else "add_arguments")
    return add, getattr(module, f"run_{suffix}" if suffix else "run")


def _plugin_commands() -> dict[str, Any]:
    """Commands added by plugins (hook ``ipt_register_commands``), minus those whose name is a built-in's."""
    from ipt.registry.manager import get_registry

    return get_registry().plugin_commands(COMMANDS)


def _one_line_warnings(name: str) -> Callable[..., None]:
    """Show IPT's own warnings (categories defined in ``ipt.*``) as one ``ipt NAME: warning: ...`` line."""
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        if category.__module__.startswith("ipt."):
            print(f"ipt {name}: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    # Plugins are loaded for their commands only where one may be asked for or listed (not for `ipt train`).
    load_plugins = name == "plugins" or (name not in COMMANDS and name != "--version")
    plugin_cmds = _plugin_commands() if load_plugins else {}
    if name in COMMANDS:
        add, run = _builtin(name)
        help_text, origin = COMMANDS[name][1], None
    elif name in plugin_cmds:
        cmd = plugin_cmds[name]
        add, run, help_text, origin = cmd.add_arguments or (lambda parser: None), cmd.run, cmd.help, cmd.origin
    else:
        top = _top_parser({n: f"{c.help} [{c.origin}]" for n, c in plugin_cmds.items()})
        top.parse_args(argv)  # handles --help/--version/unknown command
        top.print_help()
        return 2
    parser = argparse.ArgumentParser(prog=f"ipt {name}", description=help_text)
    add(parser)
    args = parser.parse_args(rest)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(name)
        return _run(name, run, args, origin)


def _run(name: str, run: Callable[[argparse.Namespace], Any], args: argparse.Namespace, origin: str | None) -> int:
    if os.environ.get("IPT_DEBUG"):
        return int(run(args) or 0)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"ipt {name}: interrupted", file=sys.stderr)
        return 130
    except _known_errors() as exc:
        msg = str(exc).strip().splitlines()
        print(f"ipt {name}: error: {' '.join(m.strip() for m in msg) if len(msg) < 6 else str(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - a plugin command's own failure, named with its plugin
        if origin is None:
            raise
        print(f"ipt {name}: error: {origin} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
