"""The ``ipt`` command line. Each subcommand lives in its own module, imported only when it runs.

A subcommand module provides ``add_arguments(parser)`` and ``run(args) -> int``.
Set ``IPT_DEBUG=1`` to see full tracebacks instead of one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

# name -> (module, one-line help); a module that hosts several commands names its functions "module:suffix",
# e.g. "ipt.registry.cli:plugins" -> add_plugins_arguments / run_plugins.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("ipt.core.commands.demo", "degrade and restore a bundled photo with every task of the bundled model"),
    "plugins": ("ipt.registry.cli:plugins", "list the installed task plugins and their errors"),
    "tasks": ("ipt.registry.cli:tasks", "list the available tasks with scale and degradation parameters"),
    "train": ("ipt.core.commands.train", "pre-train or fine-tune IPT (same flags as core/train.py)"),
    "restore": ("ipt.core.commands.restore", "restore images of any size with a trained model"),
    "eval": ("ipt.core.commands.eval", "score a model on a folder or benchmark (PSNR/SSIM, paper conventions)"),
    "transfer": ("ipt.core.commands.transfer", "transfer experiment to unseen noise levels (paper Table 4)"),
    "convert": ("ipt.core.commands.convert", "convert an official Pretrained-IPT .pt checkpoint to a model directory"),
    "bench": ("ipt.core.commands.bench", "measure throughput and memory against the official reference"),
    "export": ("ipt.core.commands.export", "export one task for spandrel/chaiNNer/ComfyUI (official layout) or ONNX"),
    "push": ("ipt.core.commands.push", "upload a model directory to the Hugging Face Hub with a model card"),
    "plot": ("ipt.core.commands.plot", "plot loss and validation PSNR per task of a training run (PNG)"),
}


def _top_parser() -> argparse.ArgumentParser:
    from ipt import __version__

    p = argparse.ArgumentParser(
        prog="ipt",
        description="Image Processing Transformer: multi-task restoration with task plugins.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {n:<10} {h}" for n, (_, h) in COMMANDS.items())
        + "\n\nRun 'ipt COMMAND --help' for the options of a command.",
    )
    p.add_argument("--version", action="version", version=f"ipt {__version__}")
    p.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    return p


def _known_errors() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from ipt.core.model import UnknownModelTaskError
    from ipt.core.checkpoints.pretrained import CheckpointError
    from ipt.registry.manager import PluginError, UnknownTaskError

    return (CheckpointError, UnknownTaskError, UnknownModelTaskError, PluginError, ValidationError,
            FileNotFoundError, NotADirectoryError, ValueError, ImportError)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv or argv[0] not in COMMANDS:
        top.parse_args(argv)  # handles --help/--version/unknown command
        top.print_help()
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = COMMANDS[name]
    module_name, _, suffix = module_name.partition(":")
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"ipt {name}", description=help_text)
    add = getattr(module, f"add_{suffix}_arguments" if suffix else "add_arguments")
    run = getattr(module, f"run_{suffix}" if suffix else "run")
    add(parser)
    args = parser.parse_args(rest)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
