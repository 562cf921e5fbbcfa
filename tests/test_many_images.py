"""Many images at once: tile batches filled across images, bounded read-ahead, outputs equal to one-by-one."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.cli import main
from ipt.core.inference.folder import prefetch, restore_all
from ipt.core.images.io import read_image, write_image
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer, load_task_model
from ipt.core.inference.tiling import TiledRestorer, count_tiles


def _fn(calls: list[int]):
    def fn(tiles: torch.Tensor) -> torch.Tensor:  # a per-tile function that is not the identity
        calls.append(tiles.shape[0])
        return torch.nn.functional.interpolate(tiles * 0.5 + tiles.mean(dim=(1, 2, 3), keepdim=True) * 0.25,
                                               scale_factor=2, mode="nearest")
    return fn


@pytest.mark.parametrize("blend", ["smooth", "average"])
def test_stream_equals_one_by_one_and_fills_batches(blend: str) -> None:
    g = torch.Generator().manual_seed(0)
    sizes = [(60, 70), (30, 20), (128, 128), (49, 97), (48, 48)]
    images = [torch.rand(3, h, w, generator=g) * 255 for h, w in sizes]
    one_calls: list[int] = []
    alone = [TiledRestorer(_fn(one_calls), 2, blend=blend, tile_batch=8)(x) for x in images]
    calls: list[int] = []
    out = list(TiledRestorer(_fn(calls), 2, blend=blend, tile_batch=8).stream(enumerate(images)))
    assert [k for k, _ in out] == list(range(len(images)))
    assert all(torch.equal(a, b) for a, (_, b) in zip(alone, out))
    total = sum(count_tiles(h, w) for h, w in sizes)
    assert sum(calls) == total and calls[:-1] == [8] * (len(calls) - 1)  # every call full but the last
    assert len(calls) == -(-total // 8) < len(one_calls)


def test_stream_reads_images_only_as_tiles_are_needed() -> None:
    pulled: list[int] = []

    def images():
        for i in range(10):
            pulled.append(i)
            yield i, torch.rand(3, 128, 128) * 255  # 16 tiles each

    stream = TiledRestorer(_fn([]), 2, tile_batch=16).stream(images())
    next(stream)
    assert len(pulled) == 1  # one image fills a batch: nothing more was decoded
    list(stream)
    assert len(pulled) == 10


def test_prefetch_is_bounded_and_passes_errors() -> None:
    made: list[int] = []

    def items():
        for i in range(50):
            made.append(i)
            yield i
        raise OSError("disk gone")

    it = prefetch(items(), size=3)
    assert next(it) == 0
    time.sleep(0.3)
    assert len(made) <= 1 + 3 + 1  # the consumed one, the queue, one waiting to be put
    with pytest.raises(OSError, match="disk gone"):
        list(it)


def test_restore_all_reports_each_failure_and_goes_on() -> None:
    restorer = TaskRestorer(_fn([]), "x", InferenceOptions(device="cpu", tile_batch=5), scale=2)
    written: dict[str, torch.Tensor] = {}
    done: dict[str, str | None] = {}

    def load(name: str):
        if name == "bad-read":
            raise OSError("cannot read")
        return name, torch.full((3, 50, 60), float(len(name)))

    def finish(name: str, payload: str, restored: torch.Tensor) -> None:
        if name == "bad-write":
            raise ValueError("cannot write")
        written[name] = restored

    names = ["a", "bad-read", "bbb", "bad-write", "cc"]
    restore_all(restorer, names, load, finish, lambda n, e: done.__setitem__(n, None if e is None else str(e)),
                prefetch_images=2)
    assert done == {"a": None, "bad-read": "cannot read", "bbb": None, "bad-write": "cannot write", "cc": None}
    for name in ("a", "bbb", "cc"):
        assert torch.equal(written[name], restorer(torch.full((3, 50, 60), float(len(name)))))


def _pixels(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.mark.slow  # 7 restores of the tiny model: ~10 s on a quiet 2-core machine, a minute when it is loaded
def test_folder_restore_is_bit_identical_to_one_by_one(model_dir: Path, tmp_path: Path) -> None:
    """``ipt restore`` on a folder (batches across images, threads) writes the same PNGs as image by image."""
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(128, 128), (128, 128), (100, 80), (64, 120)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    args = ["--task", "denoise30", "--model", str(model_dir), "--quiet", "--device", "cpu"]
    assert main(["restore", str(folder), "-o", str(tmp_path / "many"), *args]) == 0
    restorer = TaskRestorer(load_task_model(model_dir, "denoise30"), "denoise30", InferenceOptions(device="cpu"))
    for path in sorted(folder.glob("*.png")):  # today's way: each image alone, its own batches
        one = write_image(tmp_path / "one" / path.name, restorer(read_image(path).rgb))
        many, alone = _pixels(tmp_path / "many" / path.name).astype(int), _pixels(one).astype(int)
        # Bit for bit, except where a tile ran in a batch of a different size: oneDNN picks other kernels for a
        # batch of one, and a float's last bit can flip an 8-bit rounding (seen: im3, 64x120, after the 8 px
        # reflection border changed its tile count). Never more than one level, on a tiny share of the values.
        assert np.abs(many - alone).max() <= 1, path.name
        assert (many != alone).mean() < 1e-3, path.name


def test_restore_all_retries_a_failed_batch_image_by_image() -> None:
    """A batch mixing two images fails (say, out of memory): both are retried alone; only the one that fails alone
    is reported."""
    calls: list[int] = []
    base = _fn(calls)

    def fn(tiles: torch.Tensor) -> torch.Tensor:
        if tiles.shape[0] > 4 or bool((tiles == 7.0).all()):  # mixed batches, and image "b" on its own
            raise MemoryError("simulated")
        return base(tiles)

    restorer = TaskRestorer(fn, "x", InferenceOptions(device="cpu", tile_batch=8), scale=2)
    values = {"a": 3.0, "b": 7.0, "c": 5.0}
    done: dict[str, str | None] = {}
    written: dict[str, torch.Tensor] = {}
    restore_all(restorer, list(values), lambda n: (n, torch.full((3, 50, 60), values[n])),
                lambda n, p, r: written.__setitem__(n, r), lambda n, e: done.__setitem__(n, e and str(e)))
    assert done == {"a": None, "b": "simulated", "c": None}
    assert torch.equal(written["a"], restorer(torch.full((3, 50, 60), 3.0)))
