"""``ipt plugins`` and ``ipt tasks``: what is installed, what each plugin provides, and what is broken."""

from __future__ import annotations

import argparse
import json

from ipt.registry.manager import get_registry


def add_plugins_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per plugin")


def add_tasks_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list, one object per task")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def run_plugins(args: argparse.Namespace) -> int:
    reg = get_registry()
    reg.check_all()  # a dry run of every task's degrade: a wrong shape shows here, named with its plugin
    infos = list(reg.plugins.values())
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2))
        return 0
    rows = []
    for i in infos:
        tasks = ", ".join(i.tasks + i.families) or "-"
        data = ", ".join([f"layout {n}" for n in i.layouts] + [f"metric {n}" for n in i.metrics]) or "-"
        status = "disabled" if i.disabled else (i.error or "ok")
        rows.append([i.name, i.distribution or "?", i.version or "?", tasks, data, status])
    print(_table(rows, ["plugin", "distribution", "version", "tasks", "layouts, metrics", "errors"]))
    return 1 if any(i.errors for i in infos) else 0


def run_tasks(args: argparse.Namespace) -> int:
    reg = get_registry()
    specs = [reg.get(n) for n in reg.names()]
    if args.json:
        out = [s.describe() for s in specs]
        out += [{"name": f.name, "description": f.description, "family": True, "examples": f.examples,
                 "plugin": f.plugin, "distribution": f.distribution, "version": f.version} for f in reg.families]
        print(json.dumps(out, indent=2, default=str))
        return 0
    rows = []
    for s in specs:
        params = ", ".join(f"{k}={v}" for k, v in s.params.items())
        rows.append([s.name, f"x{s.scale}", s.metrics.color_space, str(s.crop_border), s.plugin or "?", s.description, params])
    for f in reg.families:
        rows.append([f.name, "-", "-", "-", f.plugin or "?", f.description, "e.g. " + ", ".join(f.examples)])
    print(_table(rows, ["task", "scale", "metric", "crop", "plugin", "description", "degradation"]))
    return 0
