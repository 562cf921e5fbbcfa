"""Training on stored pairs: aligned crops, the same symmetry on input and target, mixing with on-the-fly
degradation, per-task data, crops per image, colour augmentation, and the refusals of bad folders."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ipt.cli import main
from ipt.core.data import TaskData, TrainBatches
from ipt.core.data.crops import COLOR_AUGMENT, color_augment, dihedral
from ipt.core.data.pairing import PairingError, detect_layout
from ipt.core.data.schedule import TaskSchedule
from ipt.core.data.training_data import TrainingData
from ipt.core.images.io import write_image
from ipt.core.images.resize import bicubic_degrade


def _noise(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()


def _sr_pairs(root: Path, n: int = 2, scale: int = 2, h: int = 30, w: int = 40) -> Path:
    """HR/ + LR_bicubic/X{s}/ whose HR is the LR upsampled by pixel repetition: HR[::s, ::s] == LR exactly."""
    for i in range(n):
        lr = _noise(h, w, i)
        write_image(root / "LR_bicubic" / f"X{scale}" / f"im{i}x{scale}.png", lr)
        write_image(root / "HR" / f"im{i}.png", lr.repeat_interleave(scale, 1).repeat_interleave(scale, 2))
    return root


def _rain_pairs(root: Path, names: list[str], size: tuple[int, int] = (24, 28)) -> Path:
    for i, name in enumerate(names):
        clean = _noise(*size, 10 + i)
        write_image(root / "norain" / f"{name}.png", clean)
        write_image(root / "rain" / f"{name}.png", (clean + 40).clamp(0, 255))
    return root


def _opts(**kw: object) -> SimpleNamespace:
    base = dict(tasks=["derain"], data=None, task_data={}, synthetic_ratio=0.0, data_split="train", image_column=None,
                streaming=False, crops_per_image=1, color_augment=False, val_patches=2)
    base.update(kw)
    return SimpleNamespace(**base)


def _batches(td: TaskData, task: str, patch: int = 8, batch: int = 6, **kw: object) -> TrainBatches:
    return TrainBatches(None, [task], TaskSchedule([task], seed=0), batch_size=batch, patch_size=patch,
                        task_data={task: td}, **kw)


# -- aligned crops ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("color", [False, True], ids=["plain", "color-augment"])
def test_sr_pairs_are_aligned_and_share_the_symmetry(tmp_path: Path, color: bool) -> None:
    layout = detect_layout(_sr_pairs(tmp_path / "set"), "sr2")
    assert layout.kind == "sr_benchmark" and len(layout.pairs) == 2
    batches = _batches(TaskData(pairs=layout.pairs), "sr2", color_augment=color)
    key = (lambda t: t.sort(dim=0).values) if color else (lambda t: t)  # colour: channels in any order
    windows = {key(w).numpy().tobytes() for i in range(2) for k in range(8)
               for w in dihedral(_noise(30, 40, i), k).unfold(1, 8, 1).unfold(2, 8, 1).permute(1, 2, 0, 3, 4)
               .reshape(-1, 3, 8, 8).contiguous()}
    for step in range(4):
        item = batches[step]
        lr, hr = item["lr"], item["hr"]
        assert lr.shape == (6, 3, 8, 8) and hr.shape == (6, 3, 16, 16)
        # Target crop at (2y, 2x) of the same image under the same symmetry: subsampling it gives the input.
        assert torch.equal(hr[:, :, ::2, ::2], lr)
        # ... and the input is a window of a stored input under one of the 8 symmetries.
        assert all(key(patch).contiguous().numpy().tobytes() in windows for patch in lr)


def test_pair_batches_are_reproducible_and_seeded_per_step(tmp_path: Path) -> None:
    layout = detect_layout(_rain_pairs(tmp_path / "r", ["a", "b", "c"]), "derain")
    a = _batches(TaskData(pairs=layout.pairs), "derain")
    b = _batches(TaskData(pairs=layout.pairs), "derain")
    assert torch.equal(a[3]["lr"], b[3]["lr"]) and torch.equal(a[3]["hr"], b[3]["hr"])  # resume at step 3 is exact
    assert not torch.equal(a[3]["hr"], a[4]["hr"])
    assert torch.equal(a[5]["lr"] - a[5]["hr"], (a[5]["hr"] + 40).clamp(0, 255) - a[5]["hr"])  # a stored pair


def test_synthetic_ratio_mixes_stored_and_on_the_fly_inputs(tmp_path: Path) -> None:
    layout = detect_layout(_sr_pairs(tmp_path / "set", n=1, h=20, w=20), "sr2")
    every = _batches(TaskData(pairs=layout.pairs, synthetic_ratio=1.0), "sr2", batch=4)[0]
    assert torch.allclose(every["lr"], bicubic_degrade(every["hr"], 2))  # all made by the task's degrade
    assert not torch.equal(every["hr"][:, :, ::2, ::2], every["lr"])
    half = _batches(TaskData(pairs=layout.pairs, synthetic_ratio=0.5), "sr2", batch=64)
    stored = [int((torch.eq(b["hr"][:, :, ::2, ::2], b["lr"])).flatten(1).all(1).sum()) for b in (half[0], half[1])]
    assert all(10 < s < 54 for s in stored), stored  # about half of 64 each step
    with pytest.raises(ValueError, match="synthetic ratio"):
        TaskData(pairs=layout.pairs, synthetic_ratio=1.5)


def test_crops_per_image_cuts_several_patches_from_one_decode(tmp_path: Path) -> None:
    for i, value in enumerate((30.0, 220.0)):  # two flat images of different brightness
        write_image(tmp_path / "flat" / f"{i}.png", torch.full((3, 40, 40), value))
    from ipt.core.data.sources import ImageSource

    source = ImageSource.from_paths(sorted((tmp_path / "flat").glob("*.png")))
    one = TrainBatches(source, ["denoise30"], TaskSchedule(["denoise30"], 0), batch_size=8, patch_size=8,
                       crops_per_image=8)
    for step in range(4):  # all 8 patches of a step come from one image
        assert len(set(one[step]["hr"].mean(dim=(1, 2, 3)).tolist())) == 1
    two = TrainBatches(source, ["denoise30"], TaskSchedule(["denoise30"], 0), batch_size=8, patch_size=8,
                       crops_per_image=4)
    means = [two[s]["hr"].mean(dim=(1, 2, 3)) for s in range(6)]
    assert all(len(set(m[:4].tolist())) == 1 and len(set(m[4:].tolist())) == 1 for m in means)


def test_color_augment_permutes_and_scales_saturation() -> None:
    g = torch.Generator().manual_seed(0)
    colour = torch.tensor([200.0, 100.0, 50.0]).view(1, 3, 1, 1).expand(400, 3, 4, 4).contiguous()
    out, _ = color_augment(colour, g)
    grey = torch.full((50, 3, 4, 4), 77.0)
    assert torch.allclose(color_augment(grey, g)[0], grey)  # grey stays grey: no colour cast is invented
    perm_only, _ = color_augment(colour, torch.Generator().manual_seed(1), saturation=False)
    px = perm_only[:, :, 0, 0]
    assert all(sorted(p.tolist()) == [50.0, 100.0, 200.0] for p in px)  # values kept, order changed
    changed = (px != torch.tensor([200.0, 100.0, 50.0])).any(1).float().mean()
    assert abs(float(changed) - COLOR_AUGMENT["permute_p"]) < 0.1
    spread = out[:, :, 0, 0].max(1).values - out[:, :, 0, 0].min(1).values
    assert float(spread.min()) < 150 * 0.8 and float(spread.max()) > 150 * 1.2  # saturation both ways
    assert out.min() >= 0 and out.max() <= 255


# -- TrainingData: layouts, per-task data, refusals ------------------------------------------------------------
def test_training_data_uses_the_eval_detection_and_mixes_tasks(tmp_path: Path) -> None:
    rain = _rain_pairs(tmp_path / "rain100", ["1", "2", "3"])
    photos = tmp_path / "photos"
    for i in range(2):
        write_image(photos / f"p{i}.png", _noise(40, 40, 50 + i))
    data = TrainingData.open(_opts(tasks=["derain", "sr2"], data=str(rain), task_data={"sr2": str(photos)}))
    assert data.origin["derain"]["layout"] == "paired_folders" and data.origin["derain"]["pairs"] == 3
    assert data.origin["sr2"]["images"] == 2 and data.num_images == 5
    assert "derain: 3 pairs (paired_folders" in data.summary() and "sr2: 2 images" in data.summary()
    from ipt.registry import get_task

    specs = [get_task("derain"), get_task("sr2")]
    batches = data.batches(specs, TaskSchedule(["derain", "sr2"], 0), batch_size=2, patch_size=8, seed=0, rank=0,
                           world_size=1, augment=True, steps=20)
    tasks = {batches[s]["task"]: batches[s] for s in range(20)}
    assert tasks["sr2"]["hr"].shape == (2, 3, 16, 16) and tasks["derain"]["lr"].shape == (2, 3, 8, 8)
    _, notes = data.validation(specs, 8)
    assert any("validation of derain disabled" in n for n in notes)


def test_pairs_whose_sizes_disagree_with_the_scale_are_refused(tmp_path: Path) -> None:
    rain = _rain_pairs(tmp_path / "rain100", ["1", "2"])
    with pytest.raises(PairingError, match=r"sr2: .*2 of 2 pairs have sizes that do not match x2: rain/1.png 24x28 vs "
                                           r"norain/1.png 24x28.*--task-data sr2=DIR"):
        TrainingData.open(_opts(tasks=["sr2"], data=str(rain)))


def test_bad_paired_folders_are_one_line_errors_of_ipt_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    unmatched = _rain_pairs(tmp_path / "unmatched", ["1", "2"])
    write_image(unmatched / "rain" / "3.png", _noise(24, 28, 3))
    same = tmp_path / "same"
    _rain_pairs(same, ["1"])
    (same / "rain" / "1.png").write_bytes((same / "norain" / "1.png").read_bytes())
    cases = {unmatched: "inputs without a target: 3.png", same: "input identical to its target"}
    for folder, message in cases.items():
        rc = main(["train", "--tasks", "derain", "--data", str(folder), "--max-steps", "1", "--output-dir",
                   str(tmp_path / "run"), "--no-progress"])
        err = capsys.readouterr().err
        assert rc == 2 and message in err and err.count("\n") == 1, err
        assert not (tmp_path / "run").exists()  # refused before anything is written
    rc = main(["train", "--tasks", "derain", "--task-data", "sr2=x", "--max-steps", "1"])
    assert rc == 2 and "--task-data names tasks that are not trained: sr2" in capsys.readouterr().err


def test_streaming_stored_pairs_is_refused(tmp_path: Path) -> None:
    rain = _rain_pairs(tmp_path / "rain100", ["1"])
    with pytest.raises(ValueError, match="stored pairs are read from the folder, not streamed"):
        TrainingData.open(_opts(data=str(rain), streaming=True))


@pytest.mark.slow
def test_finetune_derain_from_pairs_end_to_end(tmp_path: Path) -> None:
    import json

    rain = _rain_pairs(tmp_path / "rain100", [str(i) for i in range(4)], size=(60, 60))
    run = tmp_path / "run"
    rc = main(["train", "--tasks", "derain", "--data", str(rain), "--max-steps", "2", "--batch-size", "2",
               "--output-dir", str(run), "--no-progress", "--val-every", "0", "--crops-per-image", "2"])
    assert rc == 0
    training = json.loads((run / "model" / "config.json").read_text())["training"]
    assert training["data"]["tasks"]["derain"]["pairs"] == 4
