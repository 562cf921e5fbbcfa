"""Pictures: ``ipt eval --save-dir`` worst/best comparison grid, ``ipt plot RUN_DIR`` (loss and validation PSNR)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.cli import main
from ipt.core.evaluation.evaluate import evaluate_pairs
from ipt.core.evaluation.worst_best import GRID_NAME, WorstBest
from ipt.core.images.grid import CELL, error_window
from ipt.core.images.io import write_image
from ipt.core.training.log_plot import read_log


def test_error_window_finds_the_damaged_square() -> None:
    target = torch.full((3, 100, 120), 128.0)
    restored = target.clone()
    restored[:, 60:80, 20:40] += 50  # a 20x20 damaged square
    top, left, side = error_window(restored, target, 20)
    assert side == 20 and abs(top - 60) <= 5 and abs(left - 20) <= 5  # grid step side // 4 = 5
    assert error_window(restored, target, 500)[2] == 100  # clipped to the image


def _noisy_samples(sigmas: dict[str, float]):  # noqa: ANN202
    for name, sigma in sigmas.items():
        g = torch.Generator().manual_seed(len(name))
        clean = torch.rand(3, 40, 50, generator=g) * 200 + 20
        yield name, (clean + torch.randn(clean.shape, generator=g) * sigma).clamp(0, 255), clean


def test_eval_save_dir_writes_the_worst_and_best_grid(tmp_path: Path) -> None:
    sigmas = {"a": 2.0, "b": 20.0, "c": 5.0, "d": 40.0, "e": 1.0, "f": 10.0, "g": 3.0, "h": 8.0}
    result = evaluate_pairs(lambda x: x, "denoise30", _noisy_samples(sigmas), save_dir=tmp_path)  # identity "model"
    order = sorted(result.per_image, key=lambda n: result.per_image[n].psnr_y)
    assert order[:3] == ["d", "b", "f"] and order[-3:] == ["g", "a", "e"]  # PSNR follows the noise level
    wb = WorstBest()
    for name, degraded, clean in _noisy_samples(sigmas):
        wb.add(name, result.per_image[name].psnr_y, degraded, degraded, clean)
    ranks = [(rank, name) for rank, name, _, _ in wb.entries()]
    assert ranks == [("worst 1", order[0]), ("worst 2", order[1]), ("worst 3", order[2]),
                     ("best 3", order[-3]), ("best 2", order[-2]), ("best 1", order[-1])]
    grid = np.asarray(Image.open(tmp_path / GRID_NAME).convert("RGB"))
    zoom = -(-CELL // 40)  # 40x40 crops (the images are 40 px high) enlarged to at least CELL px
    assert grid.shape[0] == 20 + 6 * (20 + 40 * zoom + 4) and grid.shape[1] == 3 * 40 * zoom + 2 * 4
    # the restored panel of row 1 is the worst image's output (here its input), cropped at its error window
    _, name, psnr, crops = wb.entries()[0]
    panel = grid[20 + 20 : 20 + 20 + 40 * zoom : zoom, 40 * zoom + 4 : 2 * 40 * zoom + 4 : zoom]
    expected = crops[1].round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert np.abs(panel.astype(int) - expected.astype(int)).max() <= 1
    assert name == "d" and psnr == pytest.approx(result.per_image["d"].psnr_y)


def test_eval_cli_grid_for_sr(model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for i in range(3):
        write_image(data / f"img{i}.png", torch.rand(3, 60, 52, generator=torch.Generator().manual_seed(i)) * 255)
    assert main(["eval", "--model", str(model_dir), "--task", "sr2", "--data", str(data),
                 "--save-dir", str(tmp_path / "out"), "--quiet"]) == 0
    grid = Image.open(tmp_path / "out" / GRID_NAME)
    assert grid.height == 20 + 3 * (20 + 52 * 4 + 4)  # three images, each in one row; 52 px crops shown x4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [GRID_NAME, "img0.png", "img1.png", "img2.png"]


def _write_log(path: Path) -> None:
    records = [{"step": s, "task": "sr2", "loss": 50 / s, "task_loss": {"sr2": 40 / s, "derain": 60 / s}}
               for s in (10, 20, 30, 40)]
    records.insert(2, {"step": 20, "validation": True, "psnr": {"sr2": 30.5, "derain": 28.0}})
    records.append({"step": 40, "validation": True, "psnr": {"sr2": 31.25, "derain": 29.0}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_log_is_read_into_series(tmp_path: Path) -> None:
    _write_log(tmp_path / "run" / "log.jsonl")
    s = read_log(tmp_path / "run")
    assert s.loss == [(10, 5.0), (20, 2.5), (30, 50 / 30), (40, 1.25)]
    assert s.task_loss["derain"][0] == (10, 6.0)
    assert s.psnr == {"sr2": [(20, 30.5), (40, 31.25)], "derain": [(20, 28.0), (40, 29.0)]}
    (tmp_path / "bad.jsonl").write_text('{"step": 1, "loss": 2}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not a JSON record"):
        read_log(tmp_path / "bad.jsonl")


def test_cli_plot_writes_a_png(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _write_log(tmp_path / "run" / "log.jsonl")
    assert main(["plot", str(tmp_path / "run")]) == 0
    assert "last validation PSNR: sr2 31.25 dB, derain 29.00 dB" in capsys.readouterr().out
    png = Image.open(tmp_path / "run" / "training.png")
    assert png.format == "PNG" and png.width > 600 and png.height > 400
    pixels = np.asarray(png.convert("RGB")).reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 50  # lines, text and legend were drawn, not an empty canvas
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "no training log" in capsys.readouterr().err
