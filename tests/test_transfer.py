"""`ipt transfer` (paper §4.4, Table 4): table, files, input PSNR, zero-shot weights, fine-tuning, errors."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.cli import main
from ipt.core.model import IPT, build_model

EVAL_SIZE = 96
REPO = Path(__file__).resolve().parents[1]


def _ipt(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def denoise_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny"
    build_model("tiny", ["denoise30", "denoise50"]).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def experiment(denoise_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run at sigma 10 and 70 with 2 fine-tuning steps (a high lr so that 2 steps visibly change the model)."""
    out = tmp_path_factory.mktemp("transfer")
    code, stdout, stderr = _ipt(
        "transfer", "--model", str(denoise_model), "--sigmas", "70,10", "--steps", "2", "--batch-size", "2",
        "--lr", "1e-3", "--eval-size", str(EVAL_SIZE), "--out", str(out), "--save-images", "--no-progress",
        "--device", "cpu",
    )
    return {"code": code, "stdout": stdout, "stderr": stderr, "out": out}


def _table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _heldout_crops() -> dict[str, torch.Tensor]:
    """The held-out photos centre-cropped to EVAL_SIZE, read and cropped here independently of the code under test."""
    from ipt.core.images.photos import HELD_OUT, photo

    crops = {}
    for name in HELD_OUT:
        arr = np.asarray(Image.open(photo(name)).convert("RGB"))
        h, w = arr.shape[:2]
        top, left = (h - EVAL_SIZE) // 2, (w - EVAL_SIZE) // 2
        crop = arr[top : top + EVAL_SIZE, left : left + EVAL_SIZE]
        crops[name] = torch.from_numpy(crop.copy()).permute(2, 0, 1).float()
    return crops


def _noisy(clean: torch.Tensor, name: str, sigma: int, seed: int = 0) -> torch.Tensor:
    from ipt.core.evaluation.evaluate import pair_seed
    from ipt.registry import get_task

    g = torch.Generator().manual_seed(pair_seed(seed, name))
    return get_task(f"denoise{sigma}").degrade(clean, g).float()


def _read_png(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float()


@functools.lru_cache(maxsize=None)
def _restorer(model_dir: Path, task: str) -> Any:
    from ipt.core.inference.restorer import InferenceOptions, TaskRestorer

    return TaskRestorer(IPT.from_pretrained(model_dir, tasks=[task]), task, InferenceOptions(device="cpu"))


def _restore(model_dir: Path, task: str, image: torch.Tensor) -> torch.Tensor:
    from ipt.core.evaluation.metrics import quantize

    return quantize(_restorer(model_dir, task)(image))


# -- the full run ---------------------------------------------------------------------------------------------------
def test_prints_table_and_writes_files(experiment: dict) -> None:
    assert experiment["code"] == 0, experiment["stderr"]
    out: Path = experiment["out"]
    rows = _table_rows(experiment["stdout"])
    assert rows["Method"] == ["σ=10", "σ=70"]  # sorted, whatever the order given
    for label in ("Input (noisy)", "IPT zero-shot", "IPT fine-tuned (2 steps)"):
        assert len(rows[label]) == 2 and all(re.fullmatch(r"-?\d+\.\d\d", c) for c in rows[label]), rows[label]
    assert "σ=10 ← denoise30" in experiment["stdout"] and "σ=70 ← denoise50" in experiment["stdout"]
    assert _table_rows((out / "transfer.md").read_text()) == rows

    png = out / "transfer.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.width > 300 and im.height > 200

    data = json.loads((out / "transfer.json").read_text())
    assert data["eval_images"] == ["coffee", "flower"] and data["eval_size"] == EVAL_SIZE
    assert data["settings"]["steps"] == 2 and data["settings"]["seed"] == 0 and data["seconds"] > 0
    assert data["model_tasks"] == ["denoise30", "denoise50"]
    by_sigma = {r["sigma"]: r for r in data["results"]}
    assert sorted(by_sigma) == [10, 70]
    assert by_sigma[10]["source_task"] == "denoise30" and by_sigma[70]["source_task"] == "denoise50"
    for i, sigma in enumerate((10, 70)):  # the printed cells are the JSON means
        r = by_sigma[sigma]
        assert not r["trained"]
        assert rows["Input (noisy)"][i] == f"{r['input']['psnr_y']:.2f}"
        assert rows["IPT zero-shot"][i] == f"{r['zero_shot']['psnr_y']:.2f}"
        assert rows["IPT fine-tuned (2 steps)"][i] == f"{r['fine_tuned']['psnr_y']:.2f}"
        per = r["input"]["per_image"]
        assert set(per) == {"coffee", "flower"}
        assert r["input"]["psnr_y"] == pytest.approx(np.mean([per[n]["psnr_y"] for n in per]))


def test_input_psnr_matches_independent_computation(experiment: dict) -> None:
    data = json.loads((experiment["out"] / "transfer.json").read_text())
    by_sigma = {r["sigma"]: r for r in data["results"]}
    for sigma in (10, 70):
        values = []
        for name, clean in _heldout_crops().items():
            noisy = _noisy(clean, name, sigma).clamp(0, 255).round().double().numpy()
            ref = clean.double().numpy()
            weights = np.array([65.481, 128.553, 24.966])[:, None, None] / 255.0  # BT.601 luma (offset cancels)
            mse = np.mean(((noisy - ref) * weights).sum(axis=0) ** 2)
            value = 10 * np.log10(255.0**2 / mse)
            assert by_sigma[sigma]["input"]["per_image"][name]["psnr_y"] == pytest.approx(value, abs=1e-9)
            values.append(value)
        assert by_sigma[sigma]["input"]["psnr_y"] == pytest.approx(np.mean(values), abs=1e-9)
    assert by_sigma[10]["input"]["psnr_y"] > by_sigma[70]["input"]["psnr_y"] + 10


def test_zero_shot_uses_the_nearest_trained_task(experiment: dict, denoise_model: Path) -> None:
    out: Path = experiment["out"]
    for sigma, nearest, other in ((10, "denoise30", "denoise50"), (70, "denoise50", "denoise30")):
        for name, clean in _heldout_crops().items():
            noisy = _noisy(clean, name, sigma)
            saved = _read_png(out / "images" / "zero_shot" / f"denoise{sigma}" / f"{name}.png")
            assert torch.equal(saved, _restore(denoise_model, nearest, noisy))
            assert not torch.equal(saved, _restore(denoise_model, other, noisy))  # the check can tell them apart
            assert torch.equal(_read_png(out / "images" / "input" / f"denoise{sigma}" / f"{name}.png"),
                               noisy.clamp(0, 255).round())


def test_fine_tuned_row_comes_from_a_changed_model(experiment: dict) -> None:
    out: Path = experiment["out"]
    for sigma in (10, 70):
        for name in ("coffee", "flower"):
            zs = _read_png(out / "images" / "zero_shot" / f"denoise{sigma}" / f"{name}.png")
            ft = _read_png(out / "images" / "fine_tuned" / f"denoise{sigma}" / f"{name}.png")
            assert zs.shape == ft.shape == (3, EVAL_SIZE, EVAL_SIZE)
            assert not torch.equal(zs, ft)
    assert "fine-tuning from" in experiment["stderr"]


# -- pieces and other modes -------------------------------------------------------------------------------------------
def test_nearest_level_and_task_copy() -> None:
    from ipt.core.training.transfer import add_transfer_task, denoise_levels, nearest_level

    assert denoise_levels(["sr2", "denoise30", "denoise50", "derain"]) == {30: "denoise30", 50: "denoise50"}
    assert [nearest_level(s, [30, 50]) for s in (10, 30, 39, 40, 41, 70)] == [30, 30, 30, 30, 50, 50]
    torch.manual_seed(1)
    model = build_model("tiny", ["denoise30", "denoise50"])
    assert add_transfer_task(model, 70, "denoise50") == "denoise70"
    assert torch.equal(model.task_embed["denoise70"], model.task_embed["denoise50"])
    for part in (model.heads, model.tails):
        src, new = part["denoise50"].state_dict(), part["denoise70"].state_dict()
        assert src.keys() == new.keys() and all(torch.equal(src[k], new[k]) for k in src)
    with torch.no_grad():  # a copy, not shared storage: fine-tuning the new task leaves the source alone
        next(model.heads["denoise70"].parameters()).add_(1.0)
    assert not torch.equal(next(model.heads["denoise70"].parameters()), next(model.heads["denoise50"].parameters()))


def test_trained_level_without_finetuning(denoise_model: Path, tmp_path: Path) -> None:
    code, stdout, stderr = _ipt(
        "transfer", "--model", str(denoise_model), "--sigmas", "30", "--no-finetune", "--eval-size", "48",
        "--out", str(tmp_path), "--no-progress", "--show-ssim", "--device", "cpu",
    )
    assert code == 0, stderr
    rows = _table_rows(stdout)
    assert rows["IPT fine-tuned (200 steps)"] == ["—"]
    assert re.fullmatch(r"-?\d+\.\d\d / -?\d\.\d{4}", rows["IPT zero-shot"][0])
    result = json.loads((tmp_path / "transfer.json").read_text())["results"][0]
    assert result["trained"] and result["source_task"] == "denoise30" and result["fine_tuned"] is None
    assert "σ=30 trained" in stdout


def test_model_without_denoise_task_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    build_model("tiny", ["sr2", "derain"]).save_pretrained(tmp_path / "m")
    code = main(["transfer", "--model", str(tmp_path / "m"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "no denoise<sigma> task" in err and "sr2, derain" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_bad_options(denoise_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["transfer", "--model", str(denoise_model), "--sigmas", "10,300"]) == 2
    assert "--sigmas" in capsys.readouterr().err
    assert main(["transfer", "--model", str(denoise_model), "--eval-data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_example_script_help() -> None:
    res = subprocess.run([sys.executable, "examples/transfer_noise_levels.py", "--help"], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "--sigmas" in res.stdout and "--steps" in res.stdout and "--eval-data" in res.stdout
