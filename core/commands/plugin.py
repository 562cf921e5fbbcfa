"""``ipt plugin new NAME``: write a task plugin package (``ipt-plugin-NAME``) that installs and passes its tests.

The files are :func:`ipt.registry.scaffold.plugin_files`; the package is written atomically (a folder that
already exists is never touched).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ipt import __version__
from ipt.core.files import atomic_write_dir
from ipt.registry.scaffold import SUPPORTED_SCALES, names, plugin_files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = sub.add_parser("new", help="write a new task plugin package ipt-plugin-NAME")
    new.add_argument("name", metavar="NAME", help="task name, e.g. jpeg or lowlight (lower case, digits, '_')")
    new.add_argument("--scale", type=int, default=1, choices=SUPPORTED_SCALES, help="output size / input size")
    new.add_argument("--dir", default=".", metavar="PARENT", help="folder to create ipt-plugin-NAME in")


def run(args: argparse.Namespace) -> int:
    dist, module = names(args.name)
    target = Path(args.dir) / dist
    if target.exists():
        raise FileExistsError(f"{target}: already exists; choose another NAME or --dir (nothing was written)")
    files = plugin_files(args.name, args.scale, ipt_version=".".join(__version__.split(".")[:2]))

    def write(tmp: Path) -> None:
        for rel, text in files.items():
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")

    atomic_write_dir(target, write)
    print(f"wrote {target}/ ({', '.join(sorted(files))})")
    print(f"next: pip install -e {target} && ipt plugins && (cd {target} && pytest)")
    return 0
