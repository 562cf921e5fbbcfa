"""Training data pipeline: built-in photos, image conversion, seeded batches, skips and clear errors."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.core.images import photos
from ipt.core.data.batches import (
    ImageSource,
    StreamingTrainBatches,
    TrainBatches,
    UnreadableImage,
    decode_record,
    load_images,
    to_rgb_tensor,
    validation_pairs,
)
from ipt.core.data.schedule import TaskSchedule
from ipt.registry import get_task

ALL_TASKS = ["sr2", "sr3", "sr4", "denoise30"]


def _batches(source, tasks=ALL_TASKS, seed=0, **kw) -> TrainBatches:
    specs = [get_task(t) for t in tasks]
    kw.setdefault("batch_size", 2)
    kw.setdefault("steps", 50)
    return TrainBatches(source, specs, TaskSchedule(tasks, seed=seed), seed=seed, **kw)


@pytest.fixture(scope="module")
def builtin_batches() -> TrainBatches:
    return _batches(load_images(None))


# ------------------------------------------------------------------------------------------------ built-in data


def test_builtin_photos_exist_are_colour_and_large() -> None:
    paths = photos.builtin_photos()
    assert len(paths) == len(photos.PHOTOS) == 10
    assert [p.stem for p in paths] == sorted(p.stem for p in paths)  # stable, sorted order
    for path in paths:
        assert path.is_file()
        with Image.open(path) as im:
            assert im.mode == "RGB" and min(im.size) >= 300, (path, im.mode, im.size)
    assert {p.stem for p in photos.heldout_photos()} == set(photos.HELD_OUT) == {"coffee", "flower"}
    assert not {p.stem for p in photos.train_photos()} & set(photos.HELD_OUT)
    assert len(photos.train_photos()) == 8
    assert photos.photo("china").name == "china.jpg"


def test_unknown_photo_and_missing_package_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="unknown built-in photo 'nope'"):
        photos.photo("nope")
    monkeypatch.setattr(photos.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install scikit-image"):
        photos.photo("astronaut")


def test_load_images_builtin_splits() -> None:
    train, held = load_images(None), load_images(None, holdout=True)
    assert len(train) == 8 and len(held) == 2
    assert [Path(train.record(i)["path"]).stem for i in range(8)] == [p.stem for p in photos.train_photos()]
    pixels, reason = decode_record(held.record(0))
    assert reason is None and pixels.shape == (3, 400, 600) and pixels.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------- batches


def test_batch_shapes_for_sr_and_denoise(builtin_batches: TrainBatches) -> None:
    seen = set()
    for step in range(24):
        item = builtin_batches[step]
        spec = get_task(item["task"])
        assert item["step"] == step
        assert item["lr"].shape == (2, 3, 48, 48)
        assert item["hr"].shape == (2, 3, 48 * spec.scale, 48 * spec.scale)
        assert item["lr"].dtype == item["hr"].dtype == torch.float32
        assert 0 <= float(item["hr"].min()) and float(item["hr"].max()) <= 255
        if spec.scale > 1:  # SR input is exactly the task's degradation of the target
            assert torch.equal(item["lr"], spec.degrade(item["hr"]))
        else:  # sigma=30 Gaussian noise (a bit less after clipping to 0..255)
            assert 20 < float((item["lr"] - item["hr"]).std()) < 32
        seen.add(item["task"])
    assert seen == set(ALL_TASKS)
    assert builtin_batches.skipped == {}


def test_same_step_identical_different_steps_differ(builtin_batches: TrainBatches) -> None:
    again = _batches(load_images(None))
    for step in (0, 7, 31):
        a, b = builtin_batches[step], again[step]
        assert a["task"] == b["task"]
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])
    # Steps with the same task still differ in their crops.
    schedule = builtin_batches._maker.schedule
    first, second = [s for s in range(40) if schedule.task_at(s) == "denoise30"][:2]
    assert not torch.equal(builtin_batches[first]["hr"], builtin_batches[second]["hr"])


def test_ranks_share_task_but_not_images() -> None:
    r0 = _batches(load_images(None), tasks=["denoise30", "sr2"], rank=0, world_size=2)
    r1 = _batches(load_images(None), tasks=["denoise30", "sr2"], rank=1, world_size=2)
    for step in range(5):
        assert r0[step]["task"] == r1[step]["task"]
        assert not torch.equal(r0[step]["hr"], r1[step]["hr"])


def test_dataloader_workers_give_identical_batches(builtin_batches: TrainBatches) -> None:
    def collect(workers: int) -> list[dict]:
        loader = torch.utils.data.DataLoader(
            builtin_batches, batch_size=None, sampler=range(3, 9), num_workers=workers
        )
        return list(loader)

    serial, parallel = collect(0), collect(2)
    assert [b["step"] for b in serial] == [b["step"] for b in parallel] == list(range(3, 9))
    for a, b in zip(serial, parallel):
        assert a["task"] == b["task"]
        assert torch.equal(a["lr"], b["lr"]) and torch.equal(a["hr"], b["hr"])


def _windows(image: torch.Tensor, size: int, step: int = 1) -> list[torch.Tensor]:
    h, w = image.shape[-2:]
    corners = [(y, x) for y in range(0, h - size + 1, step) for x in range(0, w - size + 1, step)]
    return [image[:, y : y + size, x : x + size] for y, x in corners]


def test_crops_are_aligned_windows_and_augmentation_is_dihedral(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (38, 41, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "noise.png")
    image = torch.from_numpy(pixels).permute(2, 0, 1).float()

    plain = _batches([tmp_path / "noise.png"], tasks=["sr2"], batch_size=4, patch_size=16, augment=False)
    aligned = _windows(image, 32, step=2)
    for step in range(3):
        for crop in plain[step]["hr"]:
            assert any(torch.equal(crop, w) for w in aligned)  # on the even grid of the x2 task

    flipped = _batches([tmp_path / "noise.png"], tasks=["sr2"], batch_size=8, patch_size=16, augment=True)
    symmetries = [
        torch.rot90(w.flip(-1) if f else w, k, dims=(-2, -1)) for w in aligned for f in (0, 1) for k in range(4)
    ]
    plain_count = 0
    for step in range(3):
        for crop in flipped[step]["hr"]:
            assert any(torch.equal(crop, s) for s in symmetries)
            plain_count += any(torch.equal(crop, w) for w in aligned)
    assert plain_count < 24  # some of the 24 crops were flipped or rotated


# ------------------------------------------------------------------------------------------------- conversion


def test_to_rgb_tensor_modes() -> None:
    grey = Image.fromarray(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    out = to_rgb_tensor(grey)
    assert out.shape == (3, 3, 4) and out.dtype == torch.float32
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2]) and float(out[0, 2, 3]) == 220

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    assert to_rgb_tensor(Image.fromarray(rgba, "RGBA"))[:, 0, 0].tolist() == [10, 20, 30]  # alpha dropped

    sixteen = Image.fromarray(np.array([[0, 65535], [32768, 257]], np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert torch.allclose(to_rgb_tensor(sixteen)[0], torch.tensor([[0.0, 255.0], [32768 * 255 / 65535, 1.0]]))

    cmyk = Image.new("CMYK", (3, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert to_rgb_tensor(cmyk)[:, 0, 0].tolist() == [255, 0, 0]

    palette = Image.fromarray(np.full((2, 2, 3), (5, 200, 60), np.uint8)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert to_rgb_tensor(palette)[:, 1, 1].tolist() == [5, 200, 60]

    la = Image.fromarray(np.full((2, 2, 2), (77, 0), np.uint8), "LA")
    assert to_rgb_tensor(la)[:, 0, 0].tolist() == [77, 77, 77]


def test_corrupt_record_returns_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    assert decode_record(str(bad)) == (None, "corrupt")
    assert decode_record({"path": None, "bytes": b"garbage"}) == (None, "corrupt")
    good = tmp_path / "ok.png"
    Image.new("RGB", (9, 7), (1, 2, 3)).save(good)
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "f.jpg")
    full = (tmp_path / "f.jpg").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])  # header intact: opens, fails on decoding
    assert decode_record(str(truncated)) == (None, "corrupt")
    pixels, reason = decode_record({"path": None, "bytes": good.read_bytes()})
    assert reason is None and pixels[:, 3, 4].tolist() == [1, 2, 3]
    with pytest.raises(UnreadableImage):
        to_rgb_tensor(Image.open(truncated))


@pytest.fixture()
def messy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "messy"
    folder.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (64, 70), dtype=np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (60, 64, 4), dtype=np.uint8), "RGBA").save(folder / "rgba.png")
    Image.fromarray(rng.integers(0, 65536, (64, 64), dtype=np.uint16)).save(folder / "deep16.png")
    Image.new("CMYK", (80, 64), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(folder / "tiny.png")
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    return folder


def test_imagefolder_converts_and_skips_with_counts(
    messy_folder: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = load_images(str(messy_folder), cache_dir=str(tmp_path / "hf"))
    assert len(source) == 6
    with caplog.at_level(logging.WARNING, logger="ipt.data"):
        batches = _batches(source, tasks=["denoise30"], batch_size=6, patch_size=48)
    assert batches.skipped == {"corrupt": 1, "too_small": 1}
    bad = dict(batches.bad)
    assert set(bad) == {str(messy_folder / "corrupt.jpg"), str(messy_folder / "tiny.png")}
    assert "corrupt.jpg" in caplog.text and "tiny.png" in caplog.text
    assert "skipped 2 of 6 images" in caplog.text
    colours = set()
    for step in range(6):
        item = batches[step]
        assert item["hr"].shape == (6, 3, 48, 48) and item["lr"].shape == (6, 3, 48, 48)
        for crop in item["hr"]:
            colours.add(tuple(crop[:, 0, 0].tolist()))
    assert (255.0, 0.0, 0.0) in colours  # the CMYK red image was converted and drawn


def test_imagefolder_lazy_checking_resamples_bad_images(messy_folder: Path, tmp_path: Path) -> None:
    source = load_images(str(messy_folder), cache_dir=str(tmp_path / "hf"))
    batches = _batches(source, tasks=["denoise30"], batch_size=8, patch_size=48, scan_limit=0)
    assert batches.skipped == {}  # nothing looked at yet
    for step in range(4):
        assert batches[step]["hr"].shape == (8, 3, 48, 48)
    assert set(batches.skipped) <= {"corrupt", "too_small"} and sum(batches.skipped.values()) >= 1


def test_sr_skips_images_smaller_than_the_largest_crop(messy_folder: Path, tmp_path: Path) -> None:
    source = load_images(str(messy_folder), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="none of its 6 images is usable.*192x192"):
        _batches(source, tasks=["sr4", "denoise30"], patch_size=48)


# -------------------------------------------------------------------------------------------------- errors


def test_dataset_without_image_column_is_a_clear_error(tmp_path: Path) -> None:
    table = tmp_path / "table.csv"
    table.write_text("caption,score\nhello,1\nworld,2\n")
    with pytest.raises(ValueError, match=r"has no image column; columns: caption, score; pass --image-column"):
        load_images(str(table), cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="no column 'pic'"):
        load_images(str(table), image_column="pic", cache_dir=str(tmp_path / "hf"))


def test_image_column_of_paths_can_be_named(tmp_path: Path) -> None:
    Image.new("RGB", (50, 50), (9, 8, 7)).save(tmp_path / "a.png")
    table = tmp_path / "files.csv"
    table.write_text(f"file,label\n{tmp_path / 'a.png'},1\n")
    source = load_images(str(table), image_column="file", cache_dir=str(tmp_path / "hf"))
    pixels, _ = decode_record(source.record(0))
    assert pixels[:, 10, 10].tolist() == [9, 8, 7]


def test_empty_and_missing_data_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="dataset .*empty is empty"):
        load_images(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_images(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="is empty"):
        ImageSource.from_paths([])


def test_holdout_split_of_a_folder(tmp_path: Path) -> None:
    for split, colour in (("train", (1, 1, 1)), ("validation", (200, 0, 0))):
        (tmp_path / "data" / split).mkdir(parents=True)
        Image.new("RGB", (64, 64), colour).save(tmp_path / "data" / split / "img.png")
    held = load_images(str(tmp_path / "data"), holdout=True, cache_dir=str(tmp_path / "hf"))
    assert decode_record(held.record(0))[0][:, 0, 0].tolist() == [200, 0, 0]
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (64, 64)).save(flat / "x.png")
    with pytest.raises(ValueError, match="no held-out split"):
        load_images(str(flat), holdout=True, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ValueError, match="could not load dataset .*flat.*validation"):
        load_images(str(flat), split="validation", cache_dir=str(tmp_path / "hf"))


def test_schedule_task_without_spec_is_an_error() -> None:
    with pytest.raises(ValueError, match="without a TaskSpec"):
        TrainBatches(None, [get_task("sr2")], TaskSchedule(["sr2", "denoise30"], seed=0), batch_size=1)


# ------------------------------------------------------------------------------------------------ validation


def test_validation_pairs_fixed_and_centred() -> None:
    tasks = ["sr2", "denoise30"]
    a = validation_pairs(None, tasks, patch_size=32, n_per_task=3)
    b = validation_pairs(photos.heldout_photos(), [get_task(t) for t in tasks], patch_size=32, n_per_task=3)
    assert set(a) == set(tasks)
    for task in tasks:
        scale = get_task(task).scale
        assert a[task][0].shape == (3, 3, 32, 32) and a[task][1].shape == (3, 3, 32 * scale, 32 * scale)
        assert torch.equal(a[task][0], b[task][0]) and torch.equal(a[task][1], b[task][1])
    # Crop 0 comes from the first held-out photo (coffee, 600x400), from its middle half.
    coffee = decode_record(str(photos.photo("coffee")))[0].numpy()
    hr0 = a["denoise30"][1][0].numpy()
    candidates = np.argwhere((coffee[:, :-31, :-31] == hr0[:, :1, :1]).all(axis=0))
    matches = [(y, x) for y, x in candidates if (coffee[:, y : y + 32, x : x + 32] == hr0).all()]
    assert matches
    y, x = matches[0]
    assert 0.25 * (400 - 32) - 1 <= y <= 0.75 * (400 - 32) and 0.25 * (600 - 32) - 1 <= x <= 0.75 * (600 - 32)
    other_seed = validation_pairs(None, tasks, patch_size=32, n_per_task=3, seed=99)
    assert not torch.equal(other_seed["denoise30"][1], a["denoise30"][1])


# ------------------------------------------------------------------------------------------------- streaming


def test_streaming_batches_in_step_order_and_reproducible() -> None:
    tasks = ["sr2", "denoise30"]
    specs = [get_task(t) for t in tasks]
    schedule = TaskSchedule(tasks, seed=4)

    def run(workers: int, start: int = 0) -> list[dict]:
        stream = StreamingTrainBatches(
            load_images(None, streaming=True), specs, schedule, batch_size=2, patch_size=32, seed=4,
            steps=start + 6, buffer_size=3, start_step=start,
        )
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
        return list(loader)

    first, second = run(0), run(0)
    assert [b["step"] for b in first] == list(range(6))
    assert [b["task"] for b in first] == [schedule.task_at(s) for s in range(6)]
    for a, b in zip(first, second):
        assert torch.equal(a["hr"], b["hr"]) and torch.equal(a["lr"], b["lr"])
        assert a["lr"].shape == (2, 3, 32, 32) and a["hr"].shape[-1] == 32 * get_task(a["task"]).scale
    two_workers = run(2)
    assert [b["step"] for b in two_workers] == list(range(6))
    assert [b["step"] for b in run(0, start=10)] == list(range(10, 16))


def test_streaming_rejects_more_workers_than_shards(tmp_path: Path) -> None:
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    source = load_images(str(tmp_path), streaming=True)
    stream = StreamingTrainBatches(
        source, [get_task("denoise30")], TaskSchedule(["denoise30"], seed=0), batch_size=1, steps=2, buffer_size=1
    )
    assert stream.max_workers == 1
    assert [b["step"] for b in stream] == [0, 1]
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    with pytest.raises(ValueError, match="2 DataLoader workers but only 1 stream shard"):
        list(loader)


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no retries against an unreachable Hub
    with pytest.raises(ValueError, match=r"could not load dataset someuser/no-such-data \(not a local folder"):
        load_images("someuser/no-such-data")


def test_webdataset_shards_stream_split_by_rank(tmp_path: Path) -> None:
    import tarfile

    from ipt.core.images.io import write_image

    photos = tmp_path / "photos"
    for i in range(4):
        write_image(photos / f"s{i}.png", torch.full((3, 64, 64), 40.0 * (i + 1)))
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(2):
        with tarfile.open(shards / f"shard-{k}.tar", "w") as tar:
            for i in (2 * k, 2 * k + 1):
                tar.add(photos / f"s{i}.png", arcname=f"s{i}.png")
    assert len(load_images(str(shards / "shard-0.tar"), cache_dir=str(tmp_path / "hf"))) == 2  # one shard file
    source = load_images(str(shards), streaming=True)
    seen = []
    for rank in range(2):
        batches = StreamingTrainBatches(source, ["denoise30"], TaskSchedule(["denoise30"], 0), batch_size=2,
                                        patch_size=16, rank=rank, world_size=2, steps=3, buffer_size=2,
                                        crops_per_image=2)
        assert batches.max_workers == 1 and batches.refresh == 1  # 2 shards over 2 ranks; 1 decode per 2 patches
        seen.append({round(float(b["hr"].mean())) for b in batches})
    assert seen[0] == {40, 80} and seen[1] == {120, 160}  # each rank streams its own shard only
