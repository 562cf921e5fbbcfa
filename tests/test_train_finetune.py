"""Fine-tuning a new task (fresh-part parameter group, --embed-from) and validation image grids."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ipt.core.data import batches as data_mod
from ipt.core.data.schedule import TaskSchedule
from ipt.core.model import build_model
from ipt.core.model.config import preset
from ipt.core.training.config import FRESH_LR_SCALE, TrainConfig
from ipt.core.training.reporting import GAP, validation_grid
from ipt.core.training.run import fresh_parameters, init_model, new_tasks, train
from ipt.core.training.trainer import Trainer

FAST: dict[str, Any] = {
    "batch_size": 2, "val_every": 0, "log_every": 1, "progress": False, "save_every_minutes": 0,
}


@pytest.fixture(scope="module")
def source_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("src") / "model"
    build_model(preset("tiny", num_enc_layers=1, num_dec_layers=1), ["sr2", "denoise30"]).save_pretrained(d)
    return d


def test_fresh_parts_get_their_own_group_lr_and_warmup(source_model: Path, tmp_path: Path) -> None:
    c = TrainConfig(tasks=["denoise30", "denoise70"], init_from=source_model, output_dir=tmp_path, lr=2e-5,
                    fresh_lr_scale=10, fresh_warmup_steps=4, **FAST)
    model, _ = init_model(c)
    assert new_tasks(c) == ["denoise70"]
    fresh = fresh_parameters(model, ["denoise70"], embed_copied=False)
    assert "task_embed.denoise70" in fresh and any(n.startswith("heads.denoise70.") for n in fresh)
    assert not any("denoise30" in n or n.startswith("body.") for n in fresh)
    trainer = Trainer(c, model, total_steps=10, decay_at=None, fresh=fresh)
    assert len(trainer.optimizer.param_groups) == 2
    assert {id(p) for p in trainer.optimizer.param_groups[1]["params"]} == {
        id(p) for n, p in trainer.unwrapped.named_parameters() if n in fresh}
    assert trainer.lrs == pytest.approx([2e-5, 2e-5 * 10 * 1 / 4])  # fresh warm-up step 1 of 4
    batch = data_mod.TrainBatches(data_mod.load_images(None), ["denoise70"],
                                  TaskSchedule(["denoise70"], 0), 2, seed=0)[0]
    for _ in range(4):
        trainer.step([batch])
    assert trainer.lrs == pytest.approx([2e-5, 2e-4])  # warm-up over


def test_embed_from_copies_a_trained_embedding(source_model: Path, tmp_path: Path) -> None:
    final = train(TrainConfig(tasks=["denoise70"], init_from=source_model, embed_from="denoise30", output_dir=tmp_path,
                              max_steps=1, lr=1e-12, fresh_lr_scale=1, **FAST))
    src, out = load_file(str(source_model / "model.safetensors")), load_file(str(final / "model.safetensors"))
    torch.testing.assert_close(out["task_embed.denoise70"], src["task_embed.denoise30"], atol=1e-8, rtol=0)
    assert json.loads((final / "config.json").read_text())["training"]["fresh_tasks"] == ["denoise70"]
    with pytest.raises(ValueError, match="--embed-from sr4: .* has no such task"):
        train(TrainConfig(tasks=["denoise70"], init_from=source_model, embed_from="sr4", output_dir=tmp_path / "x",
                          max_steps=1, **FAST))


def test_fresh_group_survives_resume_exactly(source_model: Path, tmp_path: Path) -> None:
    common = dict(tasks=["sr2", "denoise70"], init_from=source_model, lr=1e-4, **FAST)
    straight = train(TrainConfig(output_dir=tmp_path / "a", max_steps=4, **common))
    train(TrainConfig(output_dir=tmp_path / "b", max_steps=2, **common))
    resumed = train(TrainConfig(output_dir=tmp_path / "b", max_steps=4, resume="latest", **common))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    logs = [json.loads(x) for x in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["lr_fresh"] for r in logs] == pytest.approx([1e-4 * FRESH_LR_SCALE * (s + 1) / 10 for s in range(4)])


# -- validation image grids (issue 16) --------------------------------------------------------------------------
def test_validation_grid_layout() -> None:
    lr = torch.zeros(2, 3, 4, 4)
    lr[:, :, :2, :2] = 200.0
    restored, target = torch.full((2, 3, 8, 8), 100.0), torch.full((2, 3, 8, 8), 50.0)
    g = validation_grid(lr, restored, target)
    assert g.shape == (3, 2 * 8 + 3 * GAP, 3 * 8 + 4 * GAP)
    top, left = GAP, GAP
    assert (g[:, top : top + 4, left : left + 4] == 200).all() and (g[:, top + 4 : top + 8, left : left + 8] == 0).all()
    assert (g[:, top : top + 8, GAP * 2 + 8 : GAP * 2 + 16] == 100).all()
    assert (g[:, top : top + 8, GAP * 3 + 16 : GAP * 3 + 24] == 50).all()
    assert (g[:, :GAP] == 255).all()


def test_validation_writes_a_grid_per_task(tmp_path: Path) -> None:
    train(TrainConfig(tasks=["sr2", "denoise30"], preset="tiny", model={"num_enc_layers": 1, "num_dec_layers": 1},
                      output_dir=tmp_path, max_steps=2, **{**FAST, "val_every": 2, "val_patches": 3}))
    pairs = data_mod.validation_pairs(None, ["sr2", "denoise30"], patch_size=48, n_per_task=3, seed=1234)
    for task in ("sr2", "denoise30"):
        png = np.asarray(Image.open(tmp_path / "validation" / f"step-2-{task}.png"))
        s = 2 if task == "sr2" else 1
        hr = 48 * s
        assert png.shape == (3 * hr + 4 * GAP, 3 * hr + 4 * GAP, 3)
        col = GAP * 3 + 2 * hr  # the target column holds the held-out HR patches
        target = pairs[task][1][1].permute(1, 2, 0).round().to(torch.uint8).numpy()
        assert np.array_equal(png[2 * GAP + hr : 2 * GAP + 2 * hr, col : col + hr], target)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="tensorboard not installed")
def test_validation_grids_go_to_tensorboard(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(TrainConfig(tasks=["denoise30"], preset="tiny", model={"num_enc_layers": 1, "num_dec_layers": 1},
                      output_dir=tmp_path, max_steps=1, report_to=["tensorboard"],
                      **{**FAST, "val_every": 1, "val_patches": 2}))
    acc = EventAccumulator(str(tmp_path / "ipt"), size_guidance={"images": 0})  # Accelerate's tracker folder
    acc.Reload()
    assert "validation/denoise30" in acc.Tags()["images"]
    (img,) = acc.Images("validation/denoise30")
    assert img.step == 1 and (img.width, img.height) == (3 * 48 + 4 * GAP, 2 * 48 + 3 * GAP)
