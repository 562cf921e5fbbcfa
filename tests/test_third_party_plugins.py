"""Third-party plugins installed as a user installs them (``pip install examples/ipt-plugin-dehaze``).

Plugins go into throw-away virtual environments layered over the test environment (see ``plugin_helpers``),
and the tools run there as subprocesses; the test environment itself never has a plugin installed.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from plugin_helpers import DEHAZE_SRC, REPO, PluginEnv, find_model_dir, write_plugin_project

DIST, VERSION = "ipt-plugin-dehaze", "0.1.0"


@pytest.fixture(scope="module")
def dehaze_env(tmp_path_factory: pytest.TempPathFactory) -> PluginEnv:
    """A virtual environment with ipt-plugin-dehaze installed (shared by this module's tests)."""
    root = tmp_path_factory.mktemp("dehaze-env")
    env = PluginEnv.create(root / "venv")
    env.pip_install(DEHAZE_SRC, workdir=root)
    return env


@pytest.fixture(scope="module")
def dehaze_model(dehaze_env: PluginEnv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model directory with the task ``dehaze``, saved where the plugin is installed."""
    out = tmp_path_factory.mktemp("dehaze-model") / "model"
    code = f"from ipt.core.model import build_model; build_model('tiny', ['dehaze']).save_pretrained({str(out)!r})"
    proc = dehaze_env.run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    return out


def _photos(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """Crops of scikit-image's astronaut photo, (height, width) each, as PNG files."""
    from skimage import data

    img = data.astronaut()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (h, w) in enumerate(sizes):
        path = folder / f"photo{i}.png"
        Image.fromarray(np.ascontiguousarray(img[40 * i : 40 * i + h, 100 : 100 + w])).save(path)
        paths.append(path)
    return paths


# -- discovery -------------------------------------------------------------------------------------------------
def test_plugins_lists_dehaze_with_its_distribution_and_version(dehaze_env: PluginEnv) -> None:
    plugins = {p["name"]: p for p in dehaze_env.ipt_json("plugins")}
    assert plugins["dehaze"]["distribution"] == DIST
    assert plugins["dehaze"]["version"] == VERSION
    assert plugins["dehaze"]["tasks"] == ["dehaze"]
    assert plugins["dehaze"]["error"] is None and plugins["dehaze"]["disabled"] is False
    assert plugins["sr"]["distribution"] == "ipt-framework"  # the built-ins are still there

    table = dehaze_env.ipt("plugins")
    assert table.returncode == 0, table.stdout + table.stderr
    row = next(line for line in table.stdout.splitlines() if line.startswith("dehaze "))
    assert row.split()[:4] == ["dehaze", DIST, VERSION, "dehaze"]


def test_tasks_describes_dehaze(dehaze_env: PluginEnv) -> None:
    tasks = {t["name"]: t for t in dehaze_env.ipt_json("tasks")}
    d = tasks["dehaze"]
    assert (d["scale"], d["color_space"], d["crop_border"]) == (1, "rgb", 0)
    assert (d["plugin"], d["distribution"], d["version"]) == ("dehaze", DIST, VERSION)
    assert d["params"]["beta"] == [0.6, 1.8]
    assert {"sr2", "denoise30"} <= set(tasks)


def test_kit_passes_on_the_installed_example(dehaze_env: PluginEnv, tmp_path: Path) -> None:
    # The example's own test suite, run against the installed distribution as its author would run it.
    proc = dehaze_env.run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(DEHAZE_SRC / "tests")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout and "failed" not in proc.stdout and "skipped" not in proc.stdout


def test_disable_plugins_hides_dehaze(dehaze_env: PluginEnv) -> None:
    plugins = {p["name"]: p for p in dehaze_env.ipt_json("plugins", env={"IPT_DISABLE_PLUGINS": "dehaze"})}
    assert plugins["dehaze"]["disabled"] is True and plugins["dehaze"]["tasks"] == []
    assert "sr2" in plugins["sr"]["tasks"]
    # By distribution name too; asking for the task then says why it is missing.
    code = (
        "import json\nfrom ipt.registry import get_registry, get_task\n"
        "from ipt.registry.manager import UnknownTaskError\n"
        "try:\n    get_task('dehaze')\nexcept UnknownTaskError as e:\n    err = str(e)\nelse:\n    err = None\n"
        "print(json.dumps({'tasks': get_registry().names(), 'error': err}))\n"
    )
    proc = dehaze_env.run(["-c", code], env={"IPT_DISABLE_PLUGINS": DIST})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "dehaze" not in out["tasks"] and "sr2" in out["tasks"]
    assert "unknown task 'dehaze'" in out["error"] and "disabled by IPT_DISABLE_PLUGINS" in out["error"]


# -- broken third-party plugins --------------------------------------------------------------------------------
BROKEN_IMPORT = """\
    raise ImportError("this plugin needs 'hazelib', which is not installed")
"""
INVALID_SPEC = """\
    from ipt.registry import hookimpl

    def _degrade(clean, generator):
        return clean

    @hookimpl
    def ipt_register_tasks():
        return [{"name": "badspec", "description": "scale zero", "scale": 0, "degrade": _degrade}]
"""
DUPLICATE_SR2 = """\
    from ipt.registry import TaskSpec, hookimpl

    @hookimpl
    def ipt_register_tasks():
        return [TaskSpec(name="sr2", description="a second sr2", scale=2, degrade=lambda x, g: x[..., ::2, ::2])]
"""


def test_broken_plugins_are_reported_and_others_keep_working(tmp_path: Path) -> None:
    projects = [
        write_plugin_project(tmp_path / "src", "ipt-plugin-brokenimport", "0.2.0", "brokenimport", BROKEN_IMPORT),
        write_plugin_project(tmp_path / "src", "ipt-plugin-badspec", "0.3.0", "badspec", INVALID_SPEC),
        write_plugin_project(tmp_path / "src", "ipt-plugin-dupsr", "1.0.0", "dupsr", DUPLICATE_SR2),
    ]
    env = PluginEnv.create(tmp_path / "venv")
    env.pip_install(DEHAZE_SRC, *projects, workdir=tmp_path / "build")

    plugins = {p["name"]: p for p in env.ipt_json("plugins")}
    expected = {
        "brokenimport": ("ipt-plugin-brokenimport", "0.2.0", ["ImportError", "hazelib"]),
        "badspec": ("ipt-plugin-badspec", "0.3.0", ["not a valid TaskSpec", "scale"]),
        "dupsr": ("ipt-plugin-dupsr", "1.0.0", ["'sr2'", "clashes", "ipt-framework"]),
    }
    for name, (dist, version, words) in expected.items():
        info = plugins[name]
        assert (info["distribution"], info["version"]) == (dist, version)
        assert info["tasks"] == [] and info["error"], info
        for word in words:
            assert word in info["error"], (name, info["error"])
    assert plugins["dehaze"]["error"] is None and plugins["sr"]["error"] is None

    table = env.ipt("plugins")
    assert table.returncode == 1  # errors are signalled by the exit code of the table
    for name, (dist, version, _) in expected.items():
        assert any(line.split()[:3] == [name, dist, version] for line in table.stdout.splitlines()), table.stdout

    # sr2 is still the built-in one, and both sr2 and dehaze degrade images.
    code = (
        "import json, torch\nfrom ipt.registry import get_task\nx = torch.rand(1, 3, 48, 48) * 255\n"
        "out = {n: [get_task(n).distribution, list(get_task(n).degrade(x).shape)] for n in ('sr2', 'dehaze')}\n"
        "print(json.dumps(out))"
    )
    proc = env.run(["-c", code])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sr2": ["ipt-framework", [1, 3, 24, 24]], "dehaze": [DIST, [1, 3, 48, 48]]}


# -- a saved model whose plugin is gone ------------------------------------------------------------------------
def test_uninstalling_the_plugin_names_it_when_loading(tmp_path: Path) -> None:
    from ipt.core.model import IPT
    from ipt.core.checkpoints.pretrained import MissingPluginError

    env = PluginEnv.create(tmp_path / "venv")
    env.pip_install(DEHAZE_SRC, workdir=tmp_path)
    model_dir = tmp_path / "dehaze-model"
    load = f"from ipt.core.model import IPT; print(IPT.from_pretrained({str(model_dir)!r}).task_names)"
    save = (
        f"from ipt.core.model import build_model\nbuild_model('tiny', ['dehaze']).save_pretrained({str(model_dir)!r})"
    )
    saved = env.run(["-c", f"{save}\n{load}"])  # saves, and loads back while the plugin is installed
    assert saved.returncode == 0 and "['dehaze']" in saved.stdout, saved.stderr
    entry = json.loads((model_dir / "config.json").read_text())["tasks"][0]
    assert (entry["name"], entry["distribution"], entry["version"]) == ("dehaze", DIST, VERSION)

    env.pip_uninstall(DIST)
    try:
        metadata.distribution(DIST)  # also installed in the test environment, which the layer sees: still there
    except metadata.PackageNotFoundError:
        proc = env.run(["-c", load])
        assert proc.returncode != 0
        assert "MissingPluginError" in proc.stderr and f"pip install {DIST}" in proc.stderr, proc.stderr[-2000:]
    # The same in this process, with a registry of the built-in plugins only (the plugin may be installed here).
    from plugin_helpers import builtin_registry

    from ipt.registry import manager

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(manager, "_REGISTRY", builtin_registry())
        with pytest.raises(MissingPluginError, match=f"'dehaze' needs the plugin distribution '{DIST}'"):
            IPT.from_pretrained(model_dir)


def test_plugin_environments_do_not_leak_into_the_test_environment(
    dehaze_env: PluginEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What a PluginEnv installs stays there; the test environment may have its own copy (pip install -e of the
    example beside ours, as plugin authors do), which must then come from outside the throw-away environments."""
    from ipt.registry.manager import TaskRegistry

    base = tmp_path_factory.getbasetemp().resolve()
    assert (dehaze_env.site_packages.resolve()).is_relative_to(base)
    try:
        here = metadata.distribution(DIST)
    except metadata.PackageNotFoundError:
        assert "dehaze" not in TaskRegistry().names()
        return
    assert not Path(str(here.locate_file(""))).resolve().is_relative_to(base), "a PluginEnv install leaked here"
    assert TaskRegistry().get("dehaze").distribution == DIST


# -- training, fine-tuning, evaluation, restoration (tools of other issues) ------------------------------------
def _launch_train(env: PluginEnv, *args: str, tmp_path: Path) -> None:
    cmd = ["-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(REPO / "core" / "train.py"), *args]
    hf = {"HF_DATASETS_CACHE": str(tmp_path / "hf-cache"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = env.run(cmd, env=hf, timeout=600)
    assert proc.returncode == 0, f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _task_entries(model_dir: Path) -> list[tuple[str, str | None, str | None]]:
    tasks = json.loads((model_dir / "config.json").read_text())["tasks"]
    return [(t["name"], t["distribution"], t["version"]) for t in tasks]


@pytest.mark.slow  # the fine-tuning test below covers a plugin task in training in the default suite
def test_train_sr2_and_dehaze_together(dehaze_env: PluginEnv, tmp_path: Path) -> None:
    pytest.importorskip("accelerate")
    run = tmp_path / "run"
    _launch_train(dehaze_env, "--tasks", "sr2,dehaze", "--preset", "tiny", "--max-steps", "2", "--batch-size", "2",
                  "--output-dir", str(run), tmp_path=tmp_path)
    model = find_model_dir(run)
    assert set(_task_entries(model)) == {("sr2", "ipt-framework", _framework_version()), ("dehaze", DIST, VERSION)}


def _framework_version() -> str:
    return metadata.version("ipt-framework")


@pytest.mark.parametrize("freeze", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["full", "freeze-body"])
def test_finetune_a_saved_sr2_model_to_dehaze(dehaze_env: PluginEnv, tmp_path: Path, freeze: bool) -> None:
    pytest.importorskip("accelerate")
    from ipt.core.model import build_model

    init = tmp_path / "sr2-model"
    torch.manual_seed(0)
    build_model("tiny", ["sr2"]).save_pretrained(init)
    run = tmp_path / "run"
    extra = ["--freeze", "body"] if freeze else []
    _launch_train(dehaze_env, "--init-from", str(init), "--tasks", "dehaze", "--max-steps", "2", "--batch-size", "2",
                  "--output-dir", str(run), *extra, tmp_path=tmp_path)
    model = find_model_dir(run)
    assert _task_entries(model) == [("dehaze", DIST, VERSION)]
    before, after = load_file(str(init / "model.safetensors")), load_file(str(model / "model.safetensors"))
    body = sorted(k for k in before if k.startswith("body."))
    assert body and set(body) == {k for k in after if k.startswith("body.")}  # the body is the pre-trained one
    assert not any(k.startswith(("heads.sr2", "tails.sr2", "task_embed.sr2")) for k in after)
    assert {"task_embed.dehaze"} <= set(after) and any(k.startswith("heads.dehaze.") for k in after)
    changed = [k for k in body if not torch.equal(before[k], after[k])]
    assert (changed == []) if freeze else changed, changed


def test_eval_dehaze(dehaze_env: PluginEnv, dehaze_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("ipt.core.evaluation.evaluate")
    data = tmp_path / "clean"
    _photos(data, [(64, 64), (56, 72)])
    proc = dehaze_env.ipt("eval", "--task", "dehaze", "--model", str(dehaze_model), "--data", str(data), "--json",
                          "--baseline")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["task"] == "dehaze" and out["n"] == 2 and len(out["per_image"]) == 2
    for key in ("psnr_y", "ssim_y", "psnr_rgb"):
        assert math.isfinite(out[key]), (key, out[key])
    # The baseline scores the hazy input itself: haze of this strength costs far more than 30 dB.
    assert 5.0 < out["baseline"]["psnr_rgb"] < 30.0, out["baseline"]


def test_restore_dehaze(dehaze_env: PluginEnv, dehaze_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("ipt.core.commands.restore")
    (src,) = _photos(tmp_path / "in", [(50, 70)])
    out_dir = tmp_path / "out"
    proc = dehaze_env.ipt("restore", "--task", "dehaze", "--model", str(dehaze_model), str(src), "-o", str(out_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with Image.open(out_dir / "photo0.png") as restored:
        assert restored.size == (70, 50) and restored.mode == "RGB"


def _reside(root: Path) -> Path:
    """A RESIDE-style folder: clear/0001.png, clear/0002.png and three hazy renderings (two of 0001)."""
    clear = _photos(root / "clear", [(64, 64), (64, 64)])
    for i, path in enumerate(clear):
        path.rename(root / "clear" / f"000{i + 1}.png")
    (root / "hazy").mkdir()
    for name, clear_id, fog in (("0001_0.8_0.2", 1, 60), ("0001_0.9_0.1", 1, 90), ("0002_0.8_0.2", 2, 70)):
        img = np.asarray(Image.open(root / "clear" / f"000{clear_id}.png"), dtype=np.float64)
        Image.fromarray(((img * (255 - fog) + 230 * fog) / 255).round().astype(np.uint8)).save(root / "hazy" / f"{name}.png")
    return root


def test_reside_layout_and_ciede2000_in_eval(dehaze_env: PluginEnv, dehaze_model: Path, tmp_path: Path) -> None:
    data = _reside(tmp_path / "reside")
    proc = dehaze_env.ipt("eval", "--task", "dehaze", "--model", str(dehaze_model), "--data", str(data), "--json",
                          "--baseline", "--metrics", "psnr,ciede2000,psnr_b")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert "RESIDE" in out["layout"] and out["n"] == 3
    assert sorted(out["per_image"]) == ["0001_0.8_0.2", "0001_0.9_0.1", "0002_0.8_0.2"]
    assert set(out["metrics"]) == {"psnr", "ciede2000", "psnr_b"}
    assert out["metric_info"]["ciede2000"]["higher_is_better"] is False
    assert out["metric_info"]["ciede2000"]["plugin"] == "dehaze"
    base = out["baseline"]["per_image"]
    # More fog, larger colour difference and lower PSNR of the hazy input itself.
    assert base["0001_0.9_0.1"]["metrics"]["ciede2000"] > base["0001_0.8_0.2"]["metrics"]["ciede2000"] > 0
    assert base["0001_0.9_0.1"]["psnr_rgb"] < base["0001_0.8_0.2"]["psnr_rgb"]


def test_reside_layout_in_training(dehaze_env: PluginEnv, tmp_path: Path) -> None:
    data = _reside(tmp_path / "reside")
    run = tmp_path / "run"
    proc = dehaze_env.ipt("train", "--tasks", "dehaze", "--data", str(data), "--preset", "tiny", "--max-steps", "1",
                          "--batch-size", "2", "--val-every", "0", "--no-progress", "--output-dir", str(run))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "dehaze: 3 pairs (reside" in proc.stderr
    training = json.loads((run / "model" / "config.json").read_text())["training"]
    assert training["data"]["tasks"]["dehaze"]["layout"] == "reside"
    assert training["data"]["tasks"]["dehaze"]["pairs"] == 3
    assert training["data"]["tasks"]["dehaze"]["clean_images"] == 2
