"""Plugins cannot take the tool down or over (issue 13 item 4): every kind of plugin fault is recorded against
the plugin, named with its distribution, and the rest of the tool keeps working."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ipt.core.checkpoints.pretrained import PluginMismatchError, PluginMismatchWarning, load_pretrained
from ipt.core.model import IPT, build_model
from ipt.core.model.config import preset
from ipt.registry import DegradeError, TaskFamily, TaskSpec, hookimpl
from ipt.registry.manager import PluginError, TaskRegistry


def _noise(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return (clean + 5 * torch.randn(clean.shape, generator=g)).clamp(0, 255)


def _spec(name: str, **kw: object) -> TaskSpec:
    return TaskSpec(name=name, description=f"test task {name}", degrade=kw.pop("degrade", _noise), **kw)


def _plugin(**hooks: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(**{k: hookimpl(v) for k, v in hooks.items()})


def _raiser(exc: BaseException):  # noqa: ANN202
    def hook() -> list[TaskSpec]:
        raise exc

    return hook


# -- exceptions at import and in hooks -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (SystemExit("needs the 'fancyhaze' package"), "SystemExit: needs the 'fancyhaze' package"),
        (SystemExit(0), "SystemExit: 0"),
        (SystemExit(), "SystemExit (the plugin called sys.exit())"),
        (MemoryError(), "MemoryError"),
        (type("PluginBaseError", (BaseException,), {})("odd base"), "PluginBaseError: odd base"),
    ],
    ids=["exit-message", "exit-0", "exit-none", "memory", "base-exception"],
)
def test_any_exception_in_a_hook_is_recorded_on_the_plugin(exc: BaseException, shown: str) -> None:
    good = _plugin(ipt_register_tasks=lambda: [_spec("good")])
    reg = TaskRegistry([("bad", _plugin(ipt_register_tasks=_raiser(exc)), "dist-bad", "0.1"),
                        ("good", good, "dist-good", "1.0")])
    assert reg.plugins["bad"].error == f"ipt_register_tasks() failed: {shown}"
    assert reg.get("good").distribution == "dist-good" and reg.plugins["good"].error is None


def test_keyboard_interrupt_is_not_swallowed() -> None:
    with pytest.raises(KeyboardInterrupt):
        TaskRegistry([("ctrlc", _plugin(ipt_register_tasks=_raiser(KeyboardInterrupt())), "d", "1")])


def test_sys_exit_in_a_family_build_names_the_plugin() -> None:
    def build(name: str, n: str) -> TaskSpec:
        sys.exit("no such level")

    fam = TaskFamily(name="lvl<n>", description="d", pattern=r"lvl(?P<n>\d+)", build=build)
    reg = TaskRegistry([("lvl", _plugin(ipt_register_task_families=lambda: [fam]), "ipt-plugin-lvl", "0.3")])
    with pytest.raises(PluginError, match=r"'lvl7'.*plugin 'lvl' \(ipt-plugin-lvl 0.3\).*SystemExit: no such level"):
        reg.get("lvl7")


def test_prints_of_plugins_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    def chatty() -> list[TaskSpec]:
        print("hello from the hook")
        return [_spec("chat", degrade=_printing_degrade)]

    reg = TaskRegistry([("chat", _plugin(ipt_register_tasks=chatty), "ipt-plugin-chat", "1")])
    reg.get("chat").degrade(torch.zeros(1, 3, 8, 8))
    out, err = capsys.readouterr()
    assert out == "" and "hello from the hook" in err and "degrading" in err


def _printing_degrade(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    print("degrading")
    return clean


# -- misspelled hooks ----------------------------------------------------------------------------------------------
def test_misspelled_hooks_are_reported_with_the_closest_name() -> None:
    typo = _plugin(ipt_register_task=lambda: [_spec("lost")])
    both = _plugin(ipt_register_tasks=lambda: [_spec("kept")], ipt_register_familes=lambda: [])
    reg = TaskRegistry([("typo", typo, "ipt-plugin-typo", "0.1"), ("both", both, "ipt-plugin-both", "0.2")])
    assert "unknown hook 'ipt_register_task'" in reg.plugins["typo"].error
    assert "did you mean 'ipt_register_tasks'" in reg.plugins["typo"].error
    assert "did you mean 'ipt_register_task_families'" in reg.plugins["both"].error
    assert reg.get("kept").plugin == "both"  # the correctly named hook still works


# -- task names of another distribution ----------------------------------------------------------------------------
def _denoise_family(dist_tasks: list[TaskSpec] | None = None) -> types.SimpleNamespace:
    fam = TaskFamily(name="noise<s>", description="d", pattern=r"noise(?P<s>\d+)", build=lambda name, s: _spec(name))
    return _plugin(ipt_register_task_families=lambda: [fam], ipt_register_tasks=lambda: dist_tasks or [])


@pytest.mark.parametrize("name", ["noise25", "noise7"])
def test_a_task_of_another_distributions_family_is_refused(name: str) -> None:
    reg = TaskRegistry([("noise", _denoise_family([_spec("noise30")]), "ipt-a", "1.0"),
                        ("intruder", _plugin(ipt_register_tasks=lambda: [_spec(name)]), "ipt-b", "2.0")])
    err = reg.plugins["intruder"].error
    assert f"task {name!r} belongs to the family 'noise<s>' of plugin 'noise' (ipt-a 1.0)" in err and "ipt-b 2.0" in err
    assert reg.get(name).distribution == "ipt-a"  # the family still provides it
    assert reg.plugins["noise"].error is None  # its own fixed task noise30 is fine


def test_a_family_taking_another_distributions_task_names_is_refused() -> None:
    fam = TaskFamily(name="sr<k>", description="d", pattern=r"sr(?P<k>\d)", build=lambda name, k: _spec(name),
                     examples=["sr2", "sr9"])
    reg = TaskRegistry([("sr", _plugin(ipt_register_tasks=lambda: [_spec("sr2")]), "ipt-framework", "0.1"),
                        ("srfam", _plugin(ipt_register_task_families=lambda: [fam]), "ipt-plugin-srfam", "1")])
    assert "'sr2' (task of plugin 'sr', ipt-framework)" in reg.plugins["srfam"].error
    assert reg.families == []


def test_builtin_family_protects_builtin_names_from_third_parties() -> None:
    from ipt.registry.manager import get_registry

    builtin = get_registry()
    fam = next(f for f in builtin.families if f.name == "denoise<sigma>")
    reg = TaskRegistry([("denoise", _plugin(ipt_register_task_families=lambda: [fam]), "ipt-framework", "0.1.0"),
                        ("d25", _plugin(ipt_register_tasks=lambda: [_spec("denoise25")]), "ipt-plugin-d25", "1")])
    assert "denoise25" not in reg.names() and "belongs to the family 'denoise<sigma>'" in reg.plugins["d25"].error


# -- degrade: a copy in, the output checked and named --------------------------------------------------------------
@pytest.mark.parametrize("write", [lambda x: x.zero_(), lambda x: x.mul_(0.5), lambda x: x[:, 0].fill_(255)])
def test_degrade_gets_a_copy_of_the_clean_batch(write) -> None:  # noqa: ANN001
    def rude(clean: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        write(clean)
        return clean

    spec = _spec("rude", degrade=rude)
    clean = torch.rand(2, 3, 16, 16) * 255
    before = clean.clone()
    spec.degrade(clean, torch.Generator().manual_seed(0))
    spec.degrade(clean[0], torch.Generator().manual_seed(0))
    assert torch.equal(clean, before)


@pytest.mark.parametrize(
    ("degrade", "scale", "shape"),
    [
        (lambda x, g: x[:, :, ::3, ::3], 1, r"\(2, 3, 16, 16\) for a \(2, 3, 48, 48\) batch"),  # the review's badshape
        (lambda x, g: x, 2, r"\(2, 3, 96, 96\) for a \(2, 3, 96, 96\) batch, expected \(2, 3, 48, 48\)"),
        (lambda x, g: x[:, :1], 1, r"\(2, 1, 48, 48\)"),  # grey output
        (lambda x, g: x[:1], 1, r"\(1, 3, 48, 48\)"),  # dropped the batch
    ],
    ids=["strided", "no-downscale", "grey", "batch"],
)
def test_a_wrong_degrade_shape_is_caught_at_lookup_naming_the_plugin(degrade, scale: int, shape: str) -> None:  # noqa: ANN001
    reg = TaskRegistry([("bad", _plugin(ipt_register_tasks=lambda: [_spec("bad", degrade=degrade, scale=scale)]),
                         "ipt-plugin-bad", "0.4")])
    with pytest.raises(PluginError, match=rf"task 'bad' of plugin 'bad' \(ipt-plugin-bad 0.4\): degrade returned shape {shape}"):
        reg.get("bad")
    assert "degrade returned shape" in reg.plugins["bad"].error  # what `ipt plugins` shows
    with pytest.raises(DegradeError, match=r"task 'bad' of plugin 'bad' \(ipt-plugin-bad 0.4\)"):
        reg.tasks["bad"].degrade(torch.zeros(2, 3, 96, 96))


def test_a_degrade_returning_numpy_is_named() -> None:
    spec = _spec("np", degrade=lambda x, g: x.numpy()).with_origin("np", "ipt-plugin-np", "1.2")
    with pytest.raises(DegradeError, match=r"'np' of plugin 'np' \(ipt-plugin-np 1.2\).*ndarray"):
        spec.degrade(torch.zeros(1, 3, 8, 8))


def test_non_finite_degrade_output_warns_once_with_the_plugin() -> None:
    spec = _spec("nanny", degrade=lambda x, g: x * float("nan")).with_origin("nanny", "ipt-plugin-nanny", "0.9")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = spec.degrade(torch.ones(1, 3, 8, 8))
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "plugin 'nanny' (ipt-plugin-nanny 0.9)" in msgs[0] and "192 NaN/inf" in msgs[0]
    assert torch.isnan(out).all()  # passed on: training skips and counts such steps


# -- custom heads and tails: a dry run when the model adds the task ------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"scale": 2, "build_tail": lambda cfg: nn.Conv2d(cfg.n_feats, 3, 3, padding=1)},
         r"the tail maps \(1,16,48,48\) to \(1, 3, 48, 48\), expected \(1,3,96,96\).*scale 2"),
        ({"scale": 1, "build_tail": lambda cfg: nn.Sequential(nn.Conv2d(cfg.n_feats, 12, 3, padding=1),
                                                              nn.PixelShuffle(2))},
         r"the tail maps \(1,16,48,48\) to \(1, 3, 96, 96\), expected \(1,3,48,48\).*scale 1"),
        ({"build_head": lambda cfg: nn.Conv2d(3, cfg.n_feats // 2, 3, padding=1)},
         r"the head maps \(1,3,48,48\) to \(1, 8, 48, 48\); the body needs \(1,16,48,48\)"),
        ({"build_head": lambda cfg: nn.Conv2d(4, cfg.n_feats, 3, padding=1)}, r"the head fails on a \(1,3,48,48\)"),
    ],
    ids=["tail-no-upsampler", "tail-upsamples-scale-1", "head-width", "head-channels"],
)
def test_custom_parts_that_do_not_fit_fail_when_the_model_adds_the_task(kw: dict, message: str) -> None:
    spec = _spec("odd", degrade=lambda x, g: x[..., :: kw.get("scale", 1), :: kw.get("scale", 1)], **kw)
    spec = spec.with_origin("odd", "ipt-plugin-odd", "3.1")
    with pytest.raises(PluginError, match=r"task 'odd' of plugin 'odd' \(ipt-plugin-odd 3.1\): " + message):
        IPT(preset("tiny"), [spec])


def test_the_default_parts_are_built_by_the_model() -> None:
    spec = _spec("plain")
    assert spec.build_head is None and spec.head(preset("tiny")) is None and spec.tail(preset("tiny")) is None
    model = IPT(preset("tiny"), [spec])
    assert model.heads["plain"][0].in_channels == 3 and model(torch.zeros(1, 3, 48, 48), "plain").shape == (1, 3, 48, 48)


# -- saved model vs installed plugin -------------------------------------------------------------------------------
@pytest.fixture
def toy_registry(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    from ipt.registry import manager

    def install(dist: str, version: str) -> None:
        plugin = _plugin(ipt_register_tasks=lambda: [_spec("toy")])
        monkeypatch.setattr(manager, "_REGISTRY", TaskRegistry([("toy", plugin, dist, version)]))

    return install


def _saved_toy(tmp_path: Path, dist: str, version: str) -> Path:
    model = build_model("tiny", [_spec("toy").with_origin("toy", dist, version)])
    return model.save_pretrained(tmp_path / "toy")


@pytest.mark.parametrize(
    ("installed", "expected"),
    [
        (("ipt-plugin-toy", "0.2.0"), r"saved with ipt-plugin-toy 0.1.0; version 0.2.0 is installed"),
        (("ipt-plugin-toyfork", "0.1.0"), r"saved with ipt-plugin-toy 0.1.0, but ipt-plugin-toyfork 0.1.0 "
                                          r"\(plugin 'toy'\) provides it now"),
    ],
    ids=["other-version", "other-distribution"],
)
def test_a_saved_model_with_another_plugin_version_or_provider_warns_or_fails_strictly(
    tmp_path: Path, toy_registry, monkeypatch: pytest.MonkeyPatch, installed: tuple[str, str], expected: str,  # noqa: ANN001
) -> None:
    directory = _saved_toy(tmp_path, "ipt-plugin-toy", "0.1.0")
    toy_registry(*installed)
    with pytest.warns(PluginMismatchWarning, match=expected):
        load_pretrained(directory)
    monkeypatch.setenv("IPT_STRICT_PLUGINS", "1")
    with pytest.raises(PluginMismatchError, match=expected + ".*IPT_STRICT_PLUGINS"):
        load_pretrained(directory)


def test_same_plugin_version_and_builtin_versions_load_silently(tmp_path: Path, toy_registry, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("IPT_STRICT_PLUGINS", "1")
    directory = _saved_toy(tmp_path, "IPT_Plugin.Toy", "0.1.0")  # the same distribution, spelled otherwise
    toy_registry("ipt-plugin-toy", "0.1.0")
    load_pretrained(directory)
    builtin = _saved_toy(tmp_path / "b", "ipt-framework", "0.0.1")  # built-ins: their version is IPT's own
    toy_registry("ipt-framework", "9.9.9")
    load_pretrained(builtin)


# -- through the real entry points and the command line ------------------------------------------------------------
def _fake_dist(site: Path, dist: str, module: str, source: str, entry: str) -> None:
    """A distribution's files as pip leaves them (module + dist-info with an entry point), without pip."""
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ipt]\n{entry} = {module}\n")


def _ipt(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "IPT_DISABLE_PLUGINS"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "ipt.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_case_14_sys_exit_at_import_does_not_take_the_tool_down(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "ipt-plugin-exit", "ipt_plugin_exit",
               "import sys\nsys.exit(\"ipt-plugin-exit needs the 'fancyhaze' package: pip install fancyhaze\")\n",
               "exitplug")
    res = _ipt(site, "plugins")
    assert res.returncode == 1, res.stderr
    row = next(line for line in res.stdout.splitlines() if line.startswith("exitplug "))
    assert "ipt-plugin-exit" in row and "import of 'ipt_plugin_exit' failed: SystemExit: ipt-plugin-exit needs" in row
    assert "sr2, sr3, sr4" in res.stdout
    tasks = _ipt(site, "tasks")
    assert tasks.returncode == 0 and "denoise<sigma>" in tasks.stdout
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40, 3)) * 255).astype("uint8")).save(photo)
    res = _ipt(site, "restore", "--task", "sr2", "--quiet", str(photo), "-o", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert Image.open(tmp_path / "out" / "photo.png").size == (80, 80)


def test_exit_0_prints_and_typos_keep_json_valid_and_are_reported(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "ipt-plugin-exiter", "ipt_plugin_exiter", "import sys\nsys.exit(0)\n", "exiter")
    _fake_dist(site, "ipt-plugin-chatty", "ipt_plugin_chatty", """\
        import torch
        from ipt.registry import TaskSpec, hookimpl
        print("chatty: imported")

        def fog(clean, generator):
            return (clean * 0.5 + 100).clamp(0, 255)

        @hookimpl
        def ipt_register_tasks():
            print("chatty: registering")
            return [TaskSpec(name="fog", description="remove fog", degrade=fog)]
        """, "chatty")
    _fake_dist(site, "ipt-plugin-typo", "ipt_plugin_typo", """\
        from ipt.registry.hookspecs import hookimpl

        @hookimpl
        def ipt_register_task():
            return []
        """, "typoplug")
    res = _ipt(site, "plugins", "--json")
    plugins = {p["name"]: p for p in json.loads(res.stdout)}  # valid JSON: the prints went to stderr
    assert "chatty: imported" in res.stderr and "chatty: registering" in res.stderr
    assert plugins["exiter"]["error"] == "import of 'ipt_plugin_exiter' failed: SystemExit: 0"
    assert plugins["chatty"]["tasks"] == ["fog"] and plugins["chatty"]["error"] is None
    assert "unknown hook 'ipt_register_task'" in plugins["typoplug"]["error"]
    tasks = {t["name"] for t in json.loads(_ipt(site, "tasks", "--json").stdout)}
    assert {"fog", "sr2", "derain"} <= tasks


def test_plugin_commands_run_and_cannot_take_over_builtin_ones(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _fake_dist(site, "ipt-plugin-cmds", "ipt_plugin_cmds", """\
        from ipt.registry import hookimpl
        from ipt.registry.commands import Command

        def add(parser):
            parser.add_argument("--times", type=int, default=1)

        def hello(args):
            print("hello " * args.times)
            return 3

        def boom(args):
            raise RuntimeError("broken step")

        @hookimpl
        def ipt_register_commands():
            return [Command(name="say-hello", help="greet", add_arguments=add, run=hello),
                    Command(name="train", help="a takeover attempt", run=hello),
                    Command(name="go-boom", help="fails", run=boom)]
        """, "cmds")
    res = _ipt(site, "say-hello", "--times", "2")
    assert (res.returncode, res.stdout.strip()) == (3, "hello hello"), res.stderr
    res = _ipt(site, "go-boom")
    assert res.returncode == 1
    assert "ipt go-boom: error: plugin 'cmds' (ipt-plugin-cmds 0.1) failed: RuntimeError: broken step" in res.stderr
    listed = {p["name"]: p for p in json.loads(_ipt(site, "plugins", "--json").stdout)}["cmds"]
    assert listed["commands"] == ["say-hello", "go-boom"]
    assert "command 'train' is a built-in ipt command" in listed["error"]
    assert "say-hello" in _ipt(site, "--help").stdout
    assert "usage: ipt train" in _ipt(site, "train", "--help").stdout  # the built-in, not the plugin's


# -- ipt plugin new ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1, 3])
def test_plugin_new_writes_a_skeleton_that_passes_the_kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          scale: int) -> None:
    import importlib

    import ipt.testing as kit
    from ipt.cli import main
    from ipt.registry import manager

    assert main(["plugin", "new", "fog_removal", "--scale", str(scale), "--dir", str(tmp_path)]) == 0
    root = tmp_path / "ipt-plugin-fog-removal"
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "README.md", "ipt_plugin_fog_removal/__init__.py", "pyproject.toml", "tests/test_fog_removal.py"]
    import tomllib

    meta = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    assert meta["entry-points"]["ipt"] == {"fog_removal": "ipt_plugin_fog_removal"} and meta["name"] == root.name
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delitem(sys.modules, "ipt_plugin_fog_removal", raising=False)
    module = importlib.import_module("ipt_plugin_fog_removal")
    registry = TaskRegistry([("fog_removal", module, root.name, "0.1.0")])
    monkeypatch.setattr(manager, "_REGISTRY", registry)
    spec = registry.get("fog_removal")
    assert registry.errors() == {} and spec.scale == scale
    kit.assert_spec_valid(spec)
    kit.assert_degrade_range_and_shape(spec)
    kit.assert_degrade_seeded(spec, deterministic=False)
    kit.assert_model_shapes(spec)
    kit.assert_save_load_roundtrip(spec, tmp_path)


def test_plugin_new_refuses_bad_names_scales_and_existing_folders(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from ipt.cli import main

    assert main(["plugin", "new", "Fog", "--dir", str(tmp_path)]) == 2
    assert "'Fog' is not a task name" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: 5 is not a scale the default tail supports
        main(["plugin", "new", "fog", "--scale", "5", "--dir", str(tmp_path)])
    (tmp_path / "ipt-plugin-fog").mkdir()
    (tmp_path / "ipt-plugin-fog" / "mine.txt").write_text("keep")
    assert main(["plugin", "new", "fog", "--dir", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "ipt-plugin-fog").iterdir()] == ["mine.txt"]


@pytest.mark.slow
def test_plugin_new_installs_and_passes_its_own_tests_as_generated(tmp_path: Path) -> None:
    from plugin_helpers import PluginEnv

    from ipt.cli import main

    assert main(["plugin", "new", "sharpen", "--scale", "2", "--dir", str(tmp_path)]) == 0
    env = PluginEnv.create(tmp_path / "venv")
    env.pip_install(tmp_path / "ipt-plugin-sharpen", workdir=tmp_path / "build")
    listed = {p["name"]: p for p in env.ipt_json("plugins")}
    assert listed["sharpen"]["tasks"] == ["sharpen"] and listed["sharpen"]["distribution"] == "ipt-plugin-sharpen"
    proc = env.run(["-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path / "build" / "ipt-plugin-sharpen",
                   timeout=900)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
