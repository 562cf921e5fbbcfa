"""Tasks with extra input channels (issue 19 item 4), with the guide's inpainting plugin as written: training,
``ipt restore`` with a mask beside each image, ``ipt eval`` on clean photos and on paired input/target/mask data."""

from __future__ import annotations

import importlib
import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.cli import main
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.model import build_model
from ipt.registry.manager import TaskRegistry

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
FAST = ["--preset", "tiny", "--model", "num_enc_layers=1,num_dec_layers=1", "--batch-size", "2", "--no-progress"]


@pytest.fixture
def inpaint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The guide's ``ipt_plugin_inpaint.py`` block, registered as the process-wide registry's only plugin."""
    from ipt.registry import manager

    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), flags=re.M | re.S)
                if b.startswith("# ipt_plugin_inpaint.py")]
    (tmp_path / "ipt_plugin_inpaint.py").write_text(block)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ipt_plugin_inpaint", raising=False)
    module = importlib.import_module("ipt_plugin_inpaint")
    # the inpainting plugin beside the built-in layout and metric plugins (ipt eval/train need them)
    from ipt.plugins import layouts, metrics

    registry = TaskRegistry([("inpaint", module, "ipt-plugin-inpaint", "0.1.0"),
                             ("layouts", layouts, "ipt-framework", "0.1.0"), ("metrics", metrics, "ipt-framework", "0.1.0")])
    monkeypatch.setattr(manager, "_REGISTRY", registry)
    return module


@pytest.fixture
def model_dir(inpaint: types.ModuleType, tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return build_model("tiny", ["inpaint"]).save_pretrained(tmp_path / "model")


def _photo(path: Path, h: int, w: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype("uint8")).save(path)
    return path


def _mask(path: Path, h: int, w: int, box: tuple[int, int, int, int]) -> Path:
    m = np.zeros((h, w), np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m, mode="L").save(path)
    return path


def test_degrade_returns_image_then_mask(inpaint: types.ModuleType) -> None:
    from ipt.registry import get_task

    spec = get_task("inpaint")
    clean = torch.rand(3, 3, 64, 40) * 255
    out = spec.degrade(clean, torch.Generator().manual_seed(3))
    assert spec.in_channels == 4 and out.shape == (3, 4, 64, 40)
    hole = out[:, 3:] > 0
    assert set(out[:, 3].unique().tolist()) <= {0.0, 255.0} and hole.any()
    assert torch.equal(out[:, :3][hole.expand(-1, 3, -1, -1)], torch.full_like(out[:, :3], 128)[hole.expand(-1, 3, -1, -1)])
    assert torch.equal(out[:, :3][~hole.expand(-1, 3, -1, -1)], clean[~hole.expand(-1, 3, -1, -1)])


def test_restore_reads_the_mask_beside_each_image(model_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    photos = tmp_path / "photos"
    _photo(photos / "a.png", 70, 53)
    _mask(photos / "a_mask.png", 70, 53, (10, 30, 5, 25))
    _photo(photos / "b.png", 48, 48, seed=1)
    _mask(photos / "b_mask.png", 48, 48, (0, 48, 0, 10))
    rc = main(["restore", "--task", "inpaint", "--model", str(model_dir), "--quiet", str(photos), "-o", str(tmp_path / "o1")])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "o1").iterdir()) == ["a.png", "b.png"]  # masks are not restored
    assert Image.open(tmp_path / "o1" / "a.png").size == (53, 70)
    # another mask, another output: the mask reaches the network
    _mask(photos / "a_mask.png", 70, 53, (40, 60, 30, 50))
    assert main(["restore", "--task", "inpaint", "--model", str(model_dir), "--quiet", str(photos / "a.png"),
                 "-o", str(tmp_path / "o2")]) == 0
    assert not np.array_equal(np.array(Image.open(tmp_path / "o1" / "a.png")), np.array(Image.open(tmp_path / "o2" / "a.png")))


def test_missing_or_mis_sized_masks_fail_that_image_only(model_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    photos = tmp_path / "photos"
    _photo(photos / "good.png", 48, 48)
    _mask(photos / "good_mask.png", 48, 48, (0, 8, 0, 8))
    _photo(photos / "nomask.png", 48, 48)
    _photo(photos / "small.png", 48, 60)
    _mask(photos / "small_mask.png", 24, 30, (0, 8, 0, 8))
    capsys.readouterr()
    rc = main(["restore", "--task", "inpaint", "--model", str(model_dir), "--quiet", str(photos), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["good.png"]
    assert "nomask.png: the task needs its mask" in err and "nomask_mask.png" in err
    assert f"small.png: its mask {photos / 'small_mask.png'} is 30x24, the image is 60x48" in err


def test_eval_on_clean_photos_and_on_paired_masks(model_dir: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    clean = tmp_path / "clean"
    _photo(clean / "p.png", 56, 64)
    assert main(["eval", "--task", "inpaint", "--model", str(model_dir), "--data", str(clean), "--baseline", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 1 and np.isfinite(report["psnr_rgb"]) and list(report["baseline"]["per_image"]) == ["p"]
    pairs = tmp_path / "pairs"
    target = _photo(pairs / "target" / "q.png", 48, 52)
    holes = np.array(Image.open(target))
    holes[8:20, 8:30] = 128
    (pairs / "input").mkdir()
    Image.fromarray(holes).save(pairs / "input" / "q.png")
    _mask(pairs / "mask" / "q.png", 48, 52, (8, 20, 8, 30))
    assert main(["eval", "--task", "inpaint", "--model", str(model_dir), "--data", str(pairs), "--baseline", "--json"]) == 0
    paired = json.loads(capsys.readouterr().out)
    assert paired["n"] == 1 and paired["layout"].startswith("input/ + target/")
    # the baseline is the input's RGB: known pixels exact, the 12x22 hole at 128
    expected = np.mean((holes.astype(float) - np.array(Image.open(target)).astype(float)) ** 2)
    assert abs(paired["baseline"]["psnr_rgb"] - 10 * np.log10(255**2 / expected)) < 0.01


@pytest.mark.parametrize("self_ensemble", [False, True])
def test_tiled_restoration_keeps_extra_channels_out_of_the_output(inpaint: types.ModuleType, self_ensemble: bool) -> None:
    model = build_model("tiny", ["inpaint"]).eval()
    restorer = TaskRestorer(model, "inpaint", InferenceOptions(device="cpu", self_ensemble=self_ensemble))
    x = torch.cat([torch.rand(3, 61, 75) * 255, torch.zeros(1, 61, 75)])
    assert restorer(x).shape == (3, 61, 75)


def test_int8_calibrates_and_restores_a_task_with_extra_channels(inpaint: types.ModuleType) -> None:
    """--dtype int8 on a plugin task with a mask channel: calibration patches come from the task's own degradation
    (image + mask), and the result stays close to fp32."""
    torch.manual_seed(0)
    model = build_model("tiny", ["inpaint"]).eval()
    x = torch.cat([torch.rand(3, 61, 75) * 255, torch.zeros(1, 61, 75)])
    x[3, 20:30, 10:40] = 1
    int8 = TaskRestorer(model, "inpaint", InferenceOptions(device="cpu", dtype="int8"))
    assert "inpaint" in model.int8_ranges and len(model.int8_ranges["inpaint"]) > 0
    fp32 = TaskRestorer(model, "inpaint", InferenceOptions(device="cpu"))(x)
    out = int8(x)
    assert out.shape == (3, 61, 75) and not torch.equal(out, fp32)
    assert (out - fp32).abs().mean() < 1.0


def test_training_with_extra_channels(inpaint: types.ModuleType, tmp_path: Path) -> None:
    from ipt.core.checkpoints.pretrained import read_config

    run = tmp_path / "run"
    assert main(["train", "--tasks", "inpaint", "--max-steps", "2", "--output-dir", str(run), *FAST]) == 0
    saved = read_config(run / "model")
    assert [(t.name, t.distribution) for t in saved.tasks] == [("inpaint", "ipt-plugin-inpaint")]
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert any(np.isfinite(r.get("loss", np.nan)) for r in log)
