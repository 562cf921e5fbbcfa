"""The plugin author guide ``docs/plugins.md`` documents every hook, and its examples and flags are real."""

from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

import ipt.registry.hookspecs as hookspecs
from ipt import testing as kit
from ipt.cli import COMMANDS
from ipt.registry.manager import TaskRegistry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
TEXT = GUIDE.read_text(encoding="utf-8")


def _hookspec_names() -> list[str]:
    """Functions of ``ipt.registry.hookspecs`` marked by its ``hookspec`` marker."""
    marker = f"{hookspecs.PROJECT}_spec"
    return sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(f, marker))


def _documented(name: str, text: str = TEXT) -> bool:
    """``name`` is the subject of a heading or of a bullet point."""
    pattern = rf"^(#+ .*|\s*[-*] .*)\b{re.escape(name)}\b"
    return re.search(pattern, text, flags=re.MULTILINE) is not None


def _section(title: str) -> str:
    """The text of the ``## title`` section, up to the next level-2 heading."""
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", TEXT, flags=re.MULTILINE | re.DOTALL)
    assert m, f"docs/plugins.md has no section '## {title}'"
    return m.group(1)


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


# -- hooks -------------------------------------------------------------------------------------------------------
def test_hookspecs_are_found() -> None:
    assert {"ipt_register_tasks", "ipt_register_task_families", "ipt_register_dataset_layouts",
            "ipt_register_metrics"} <= set(_hookspecs_names_checked())


def _hookspecs_names_checked() -> list[str]:
    names = _hookspec_names()
    assert names == sorted(set(names))
    return names


def _hook_example(hook: str) -> ModuleType:
    """The python block of a hook's section in the guide, run as a module."""
    own = _section("Hooks").split(f"### `{hook}`", 1)[1].split("\n### ", 1)[0]
    (code,) = _blocks(own, "python")
    module = ModuleType(f"guide_{hook}")
    exec(compile(code, f"docs/plugins.md ({hook})", "exec"), module.__dict__)  # noqa: S102 - our own guide
    return module


def test_layout_example_of_the_guide_pairs_reside_folders(tmp_path: Path) -> None:
    import torch

    from ipt.core.images.io import write_image

    module = _hook_example("ipt_register_dataset_layouts")
    registry = TaskRegistry(plugins=[("guide", module, "guide-dist", "1.0")])
    assert registry.errors() == {} and registry.layouts["reside"].plugin == "guide"
    for name in ("clear/0001", "clear/0002", "hazy/0001_0.8_0.2", "hazy/0001_0.9_0.1", "hazy/0002_1_0.1"):
        write_image(tmp_path / f"{name}.png", torch.full((3, 8, 8), 90.0 + len(name)))
    match = registry.layouts["reside"].find(tmp_path, None)
    assert [(p.degraded.stem, p.clean.stem) for p in match.pairs] == [
        ("0001_0.8_0.2", "0001"), ("0001_0.9_0.1", "0001"), ("0002_1_0.1", "0002")]
    assert registry.layouts["reside"].find(tmp_path / "clear", None) is None


def test_metric_example_of_the_guide_registers_and_computes() -> None:
    import torch

    module = _hook_example("ipt_register_metrics")
    registry = TaskRegistry(plugins=[("guide", module, "guide-dist", "1.0")])
    assert registry.errors() == {}
    metric = registry.metric("mae")
    assert metric.higher_is_better is False and metric.color_space == "rgb"
    assert metric.compute(torch.full((3, 4, 4), 10.0), torch.full((3, 4, 4), 13.0)) == 3.0


@pytest.mark.parametrize("hook", _hookspec_names())
def test_every_hookspec_is_documented(hook: str) -> None:
    assert _documented(hook), f"hook {hook!r} (registry/hookspecs.py) is not documented in docs/plugins.md"
    hooks = _section("Hooks")
    assert re.search(rf"^### `{hook}`", hooks, flags=re.MULTILINE), f"no '### `{hook}`' heading under '## Hooks'"
    own = hooks.split(f"### `{hook}`", 1)[1].split("\n### ", 1)[0]
    assert "Called" in own, f"the section of {hook!r} does not say when it is called"


def test_documented_detects_missing_names() -> None:
    assert not _documented("ipt_register_nothing")
    assert not _documented("ipt_register_tasks", "Some text mentioning ipt_register_tasks in passing.\n")
    assert _documented("ipt_register_tasks", "- `ipt_register_tasks`: returns specs\n")


# -- the minimal plugin ------------------------------------------------------------------------------------------
def _minimal_plugin() -> tuple[str, str]:
    section = _section("A minimal plugin")
    (toml,), (python,) = _blocks(section, "toml"), _blocks(section, "python")
    return toml, python


def test_minimal_plugin_is_under_40_lines() -> None:
    toml, python = _minimal_plugin()
    assert len(toml.splitlines()) + len(python.splitlines()) < 40


def _load_minimal_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, ModuleType]:
    toml, python = _minimal_plugin()
    project = tomllib.loads(toml)
    ((_entry, module_name),) = project["project"]["entry-points"]["ipt"].items()
    assert project["tool"]["setuptools"]["py-modules"] == [module_name]
    assert "ipt-framework" in project["project"]["dependencies"]
    (tmp_path / f"{module_name}.py").write_text(python)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    return project, importlib.import_module(module_name)


def test_minimal_plugin_registers_a_valid_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project, module = _load_minimal_plugin(tmp_path, monkeypatch)
    meta = project["project"]
    (entry,) = meta["entry-points"]["ipt"]
    registry = TaskRegistry(plugins=[(entry, module, meta["name"], meta["version"])])
    assert registry.errors() == {}
    (name,) = registry.names()
    spec = registry.get(name)
    assert (spec.distribution, spec.version) == (meta["name"], meta["version"])
    kit.assert_spec_valid(spec)
    kit.assert_degrade_range_and_shape(spec)
    kit.assert_degrade_seeded(spec)
    kit.assert_model_shapes(spec)
    kit.assert_gradients_reach(spec)


@pytest.mark.slow
def test_guide_plugins_install_and_pass_the_guides_kit_tests_as_written(tmp_path: Path) -> None:
    """Every plugin block of the guide installed as a distribution (the minimal one with its own pyproject), then
    every kit test block of the guide run by pytest in that environment, unchanged."""
    from plugin_helpers import PluginEnv

    toml, _ = _minimal_plugin()
    projects = []
    for module, dist, source in _plugin_blocks():
        project = tmp_path / "src" / dist
        project.mkdir(parents=True)
        entry = module.removeprefix("ipt_plugin_")
        (project / "pyproject.toml").write_text(toml if dist == tomllib.loads(toml)["project"]["name"] else (
            f'[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n'
            f'[project]\nname = "{dist}"\nversion = "0.1.0"\ndependencies = ["ipt-framework"]\n'
            f'[project.entry-points.ipt]\n{entry} = "{module}"\n[tool.setuptools]\npy-modules = ["{module}"]\n'))
        (project / f"{module}.py").write_text(source)
        projects.append(project)
    env = PluginEnv.create(tmp_path / "venv")
    env.pip_install(*projects, workdir=tmp_path / "build")
    tests = tmp_path / "guide_tests"
    tests.mkdir()
    kit_blocks = [b for b in _blocks(TEXT, "python") if KIT_CALL_RE.search(b)]
    for i, block in enumerate(kit_blocks):
        (tests / f"test_block{i}.py").write_text(block)
    (tests / "conftest.py").write_text('pytest_plugins = ["ipt.testing"]\n')
    proc = env.run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)], cwd=tests, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(kit_blocks)} passed" in proc.stdout, proc.stdout[-2000:]


# -- commands and flags in the guide exist -----------------------------------------------------------------------
def _parser(command: str) -> argparse.ArgumentParser:
    module = pytest.importorskip(COMMANDS[command][0])
    parser = argparse.ArgumentParser(prog=f"ipt {command}")
    add = getattr(module, f"add_{command}_arguments", None) or module.add_arguments
    add(parser)
    return parser


FLAG_RE = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*|-o)(?=[\s`,;)\]]|$)")


@pytest.mark.parametrize(
    ("command", "section"),
    [("train", "Training and fine-tuning the pre-trained body"), ("eval", "Evaluating and restoring"),
     ("restore", "Evaluating and restoring")],
)
def test_documented_flags_exist(command: str, section: str) -> None:
    options = set(_parser(command)._option_string_actions)
    text = _section(section).replace("\\\n", " ")  # join shell continuation lines
    bullets = command == "train"  # the option bullets of the training section
    lines = [ln for ln in text.splitlines() if f"ipt {command} " in ln or (bullets and ln.startswith("- `--"))]
    if command == "train":  # the `accelerate launch core/train.py` lines take the same flags after the script
        lines += [ln.split("core/train.py", 1)[1] for ln in text.splitlines() if "core/train.py" in ln]
    flags = {f for ln in lines for f in FLAG_RE.findall(ln)}
    assert flags, f"no {command} flags found in '{section}'"
    assert flags <= options, f"documented but unknown to 'ipt {command}': {sorted(flags - options)}"


# -- every code block of the guide passes the kit ----------------------------------------------------------------
HEADER_RE = re.compile(r"^# (ipt_plugin_\w+)\.py\n")
KIT_CALL_RE = re.compile(r"(?:check_task_plugin|ipt_task_checker)\((.*)\)")


def _plugin_blocks() -> list[tuple[str, str, str]]:
    """``(module, distribution, source)`` of every Python block of the guide that holds hook implementations."""
    out = []
    for block in _blocks(TEXT, "python"):
        if "@hookimpl" not in block:
            continue
        m = HEADER_RE.match(block)
        if m is None:  # the minimal plugin: its module and distribution are in the toml block beside it
            toml, python = _minimal_plugin()
            assert block == python, "a plugin block of the guide must start with '# ipt_plugin_NAME.py'"
            meta = tomllib.loads(toml)["project"]
            ((_, module),) = meta["entry-points"]["ipt"].items()
            out.append((module, meta["name"], block))
        else:
            module = m.group(1)
            out.append((module, module.replace("_", "-"), block))
    return out


def _kit_calls() -> list[tuple[str, dict]]:
    """``(task, keyword arguments)`` of every kit call in the guide's Python blocks."""
    calls = []
    for block in _blocks(TEXT, "python"):
        for args in KIT_CALL_RE.findall(block):
            if args.startswith('"'):
                calls.append(eval(f"(lambda task, **kw: (task, kw))({args})"))  # noqa: S307 - the guide's own text
    return calls


def _load_block(module: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return importlib.import_module(module)


def test_guide_has_the_plugin_blocks_it_promises() -> None:
    modules = {m for m, _, _ in _plugin_blocks()}
    assert {"ipt_plugin_lowlight", "ipt_plugin_jpeg", "ipt_plugin_inpaint", "ipt_plugin_hazeprep"} <= modules
    tasks = {t for t, _ in _kit_calls()}
    assert {"lowlight", "jpeg10"} <= tasks


def test_every_kit_call_of_the_guide_names_a_plugin_of_the_guide() -> None:
    dists = {d for _, d, _ in _plugin_blocks()}
    for task, kw in _kit_calls():
        assert kw.get("distribution") in dists, f"the guide tests {task!r} from {kw.get('distribution')!r}: no such block"


@pytest.mark.parametrize("module", [m for m, _, _ in _plugin_blocks()])
def test_every_plugin_block_of_the_guide_passes_the_kit(
    module: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipt.registry import manager

    ((dist, source),) = [(d, s) for m, d, s in _plugin_blocks() if m == module]
    plugin = _load_block(module, source, tmp_path / "src", monkeypatch)
    registry = TaskRegistry(plugins=[(module.removeprefix("ipt_plugin_"), plugin, dist, "0.1.0")])
    assert registry.errors() == {}
    monkeypatch.setattr(manager, "_REGISTRY", registry)  # what IPT.from_pretrained resolves tasks with
    names = registry.names() + [e for f in registry.families for e in f.examples]
    if not names:
        assert registry.commands or registry.layouts or registry.metrics, \
            f"{module} registers no task, command, dataset layout or metric"
    declared = {task: kw for task, kw in _kit_calls()}
    for fam in registry.families:  # what the guide's kit call says of one task of a family holds for the family
        for task, kw in list(declared.items()):
            if fam.match(task) is not None:
                declared.update({e: kw for e in fam.examples})
    for name in names:
        spec = registry.get(name)
        assert (spec.distribution, spec.version) == (dist, "0.1.0")
        kit.assert_spec_valid(spec)
        kit.assert_degrade_range_and_shape(spec)
        kit.assert_degrade_seeded(spec, deterministic=declared.get(name, {}).get("deterministic"))
        kit.assert_model_shapes(spec)
        kit.assert_gradients_reach(spec)
        kit.assert_save_load_roundtrip(spec, tmp_path)


def test_the_guides_command_plugin_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # noqa: ANN001
    from ipt.cli import main
    from ipt.registry import manager

    ((module, dist, source),) = [b for b in _plugin_blocks() if b[0] == "ipt_plugin_hazeprep"]
    plugin = _load_block(module, source, tmp_path / "src", monkeypatch)
    monkeypatch.setattr(manager, "_REGISTRY", TaskRegistry(plugins=[("hazeprep", plugin, dist, "0.1.0")]))
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.jpg", "notes.txt"):
        (photos / name).write_bytes(b"")
    assert main(["hazeprep-check", str(photos)]) == 0
    assert capsys.readouterr().out.strip() == f"2 photos ready for --data {photos}"
    with pytest.raises(SystemExit):  # --help exits through argparse, listing the plugin's command
        main(["--help"])
    assert "hazeprep-check" in capsys.readouterr().out


def test_family_example_rejects_out_of_range_quality(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipt.registry.manager import PluginError

    ((module, dist, source),) = [b for b in _plugin_blocks() if b[0] == "ipt_plugin_jpeg"]
    plugin = _load_block(module, source, tmp_path, monkeypatch)
    registry = TaskRegistry(plugins=[("jpeg", plugin, dist, "0.1.0")])
    with pytest.raises(PluginError, match=r"jpeg99.*ipt-plugin-jpeg.*quality must be 1\.\.95, got 99"):
        registry.get("jpeg99")
    # a fixed quality has no randomness: without deterministic=True the kit says what to do
    with pytest.raises(AssertionError, match="pass deterministic=True"):
        kit.assert_degrade_seeded(registry.get("jpeg40"))
