"""`ipt plugins` and `ipt tasks` output, and the light `import ipt`."""

from __future__ import annotations

import json
import subprocess
import sys


def _ipt(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ipt.cli", *args], capture_output=True, text=True, env=env)


def test_plugins_json_lists_builtins() -> None:
    res = _ipt("plugins", "--json")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert plugins["sr"]["tasks"] == ["sr2", "sr3", "sr4"]
    assert plugins["denoise"]["tasks"] == ["denoise30", "denoise50"]
    ours = {n for n, p in plugins.items() if p["distribution"] == "ipt-framework"}
    # the built-in task, layout and metric plugins; third-party plugins may be installed beside them
    assert ours == {"sr", "denoise", "derain", "deblur", "layouts", "metrics"}
    assert {"psnr", "ssim", "psnr_b"} <= set(plugins["metrics"]["metrics"])
    assert plugins["layouts"]["tasks"] == [] and plugins["layouts"]["layouts"]
    for p in plugins.values():
        assert {"name", "distribution", "version", "tasks", "error", "commands"} <= set(p)
        assert p["error"] is None


def test_plugins_table_and_tasks() -> None:
    res = _ipt("plugins")
    assert res.returncode == 0 and "derain" in res.stdout and "ipt-framework" in res.stdout
    res = _ipt("tasks")
    assert res.returncode == 0
    assert "sr4" in res.stdout and "x4" in res.stdout and "denoise<sigma>" in res.stdout and "sigma=50" in res.stdout
    tasks = {t["name"]: t for t in json.loads(_ipt("tasks", "--json").stdout)}
    assert tasks["sr3"]["scale"] == 3 and tasks["sr3"]["crop_border"] == 3 and tasks["derain"]["scale"] == 1


def test_import_ipt_is_light() -> None:
    code = "import sys, ipt; print(sorted(m for m in ('torch','timm','accelerate','datasets') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "[]"


def test_no_generic_top_level_modules_installed() -> None:
    code = "import importlib.util as u; print([n for n in ('core','plugins','registry') if u.find_spec(n)])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.stdout.strip() == "[]"


def test_unknown_command_and_version() -> None:
    assert _ipt("frobnicate").returncode == 2
    res = _ipt("--version")
    assert res.returncode == 0 and res.stdout.startswith("ipt ")
