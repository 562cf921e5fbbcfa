"""Install plugin distributions the way a user does, without touching the test environment.

Each :class:`PluginEnv` is a fresh virtual environment layered over the test environment (a ``.pth`` file adds
the test environment's site-packages, so torch and the editable ``ipt-framework`` are shared); ``pip install``
and ``pip uninstall`` act on the layer only. The test environment never sees the plugins, so other tests (and
other pytest-xdist workers) keep the built-in task list, and nothing is left installed if a test fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sysconfig
import textwrap
import venv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
DEHAZE_SRC = REPO / "examples" / "ipt-plugin-dehaze"


@dataclass
class PluginEnv:
    """A virtual environment over the test environment, where plugins get installed."""

    root: Path

    @classmethod
    def create(cls, root: Path) -> "PluginEnv":
        venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(root)
        env = cls(root)
        parent = sysconfig.get_paths()["purelib"]
        # addsitedir (not a bare path line) also runs the parent's .pth files: the editable ipt-framework finder.
        (env.site_packages / "_ipt_test_parent_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
        return env

    @property
    def python(self) -> Path:
        return self.root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    @property
    def site_packages(self) -> Path:
        out = subprocess.run(
            [str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        )
        path = Path(out.stdout.strip())
        # Never write outside the throw-away environment (e.g. into the base interpreter's site-packages).
        assert path.resolve().is_relative_to(self.root.resolve()), f"{path} is not inside {self.root}"
        return path

    def run(
        self, args: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python ARGS`` in this environment (cwd outside the repository: only installed code is seen)."""
        full_env = {k: v for k, v in os.environ.items() if k not in ("IPT_DISABLE_PLUGINS", "PYTHONPATH")}
        full_env.update(env or {})
        return subprocess.run(
            [str(self.python), *args], capture_output=True, text=True, env=full_env,
            cwd=str(cwd or self.root), timeout=timeout,
        )

    def ipt(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """The ``ipt`` command of this environment."""
        return self.run(["-m", "ipt.cli", *args], env=env, timeout=timeout)

    def ipt_json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        proc = self.ipt(*args, "--json", env=env)
        assert proc.returncode == 0, f"ipt {' '.join(args)} --json failed ({proc.returncode}):\n{proc.stderr}"
        return json.loads(proc.stdout)

    def pip_install(self, *sources: Path, workdir: Path) -> None:
        """``pip install`` local projects, offline; each is copied first so its build files stay out of the repo."""
        copies = []
        for src in sources:
            dst = workdir / src.name
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
            copies.append(str(dst))
        proc = self.run(
            ["-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--disable-pip-version-check",
             "-q", *copies],
            timeout=600,
        )
        assert proc.returncode == 0, f"pip install {' '.join(copies)} failed:\n{proc.stdout}\n{proc.stderr}"

    def pip_uninstall(self, name: str) -> None:
        proc = self.run(["-m", "pip", "uninstall", "-y", "--disable-pip-version-check", name])
        assert proc.returncode == 0, f"pip uninstall {name} failed:\n{proc.stdout}\n{proc.stderr}"


def write_plugin_project(root: Path, dist: str, version: str, entry: str, module_source: str) -> Path:
    """A minimal third-party plugin project: pyproject (entry point ``entry`` in the group ``ipt``) + one module."""
    module = dist.replace("-", "_")
    project = root / dist
    (project / module).mkdir(parents=True)
    (project / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=69"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "{dist}"
        version = "{version}"
        dependencies = ["ipt-framework"]

        [project.entry-points.ipt]
        {entry} = "{module}"

        [tool.setuptools]
        packages = ["{module}"]
        """))
    (project / module / "__init__.py").write_text(textwrap.dedent(module_source))
    return project


def find_model_dir(run_dir: Path) -> Path:
    """The final model directory of a training run: ``RUN/model``, else the newest folder holding a model."""
    if (run_dir / "model" / "config.json").is_file():
        return run_dir / "model"
    found = [p.parent for p in run_dir.rglob("config.json") if (p.parent / "model.safetensors").is_file()]
    assert found, f"no model directory (config.json + model.safetensors) under {run_dir}: {sorted(run_dir.rglob('*'))}"
    return max(found, key=lambda p: p.stat().st_mtime)


def builtin_registry() -> Any:
    """A :class:`~ipt.registry.manager.TaskRegistry` of IPT's own plugins only, whatever else is installed.

    Our suite must pass with third-party plugins installed beside ours (plugin authors ``pip install -e`` theirs
    into the same environment): a test that needs the built-in task list, or a task name that no plugin provides,
    uses this instead of the process-wide registry (``monkeypatch.setattr(manager, "_REGISTRY", builtin_registry())``).
    """
    from importlib.metadata import entry_points

    from ipt.registry.manager import BUILTIN_DISTRIBUTION, TaskRegistry

    ours = [ep for ep in entry_points(group="ipt") if ep.dist is not None and ep.dist.name == BUILTIN_DISTRIBUTION]
    return TaskRegistry(plugins=[(ep.name, ep.load(), ep.dist.name, ep.dist.version) for ep in ours])
