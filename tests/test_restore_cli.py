"""``ipt restore`` end to end on small images with a tiny model saved to disk."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.cli import main
from ipt.core.images.channels import fill_transparent
from ipt.core.images.io import read_image, write_image
from ipt.core.model import IPT
from ipt.core.inference.tiling import TiledRestorer


def _rgb(h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand(3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    d = tmp_path / "in"
    write_image(d / "a.png", _rgb(50, 70, 0), alpha=torch.linspace(0, 255, 70).expand(50, 70))
    grey = (np.random.default_rng(1).random((30, 41)) * 255).astype(np.uint8)
    Image.fromarray(grey, mode="L").save(d / "b.jpg")
    return d


def test_sr2_outputs_scaled_with_alpha(model_dir: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = main(["restore", "--task", "sr2", "--model", str(model_dir), str(inputs), "-o", str(out), "--quiet",
               "--device", "cpu"])
    assert rc == 0
    a = np.asarray(Image.open(out / "a.png"))
    assert a.shape == (100, 140, 4)  # x2, alpha re-attached at the output size
    assert abs(int(a[50, 0, 3]) - 0) <= 2 and abs(int(a[50, -1, 3]) - 255) <= 2
    b = Image.open(out / "b.png")
    assert b.size == (82, 60) and b.mode == "L"  # grey in, grey out
    # The written image is the model's tiled output, quantised; column 0 is fully transparent (alpha ramp from 0),
    # so its hidden colour is first replaced by the visible colour next to it.
    model = IPT.from_pretrained(model_dir).eval()
    loaded = read_image(inputs / "a.png")
    x = fill_transparent(loaded.rgb, loaded.alpha)
    assert torch.equal(x[:, :, 1:], loaded.rgb[:, :, 1:]) and not torch.equal(x[:, :, 0], loaded.rgb[:, :, 0])
    with torch.inference_mode():
        y = TiledRestorer(lambda t: model(t, "sr2"), 2, overlap=10, blend="smooth")(x)
    assert np.array_equal(a[..., :3], y.clamp(0, 255).round().byte().permute(1, 2, 0).numpy())


def test_compare_with_reference_and_keep_depth(model_dir: Path, tmp_path: Path) -> None:
    src, ref, out = tmp_path / "in", tmp_path / "ref", tmp_path / "out"
    write_image(src / "c.png", _rgb(40, 52, 3), bit_depth=16)
    write_image(ref / "c.png", _rgb(40, 52, 4))
    rc = main(["restore", "--task", "denoise30", "--model", str(model_dir), str(src / "c.png"), "-o", str(out),
               "--compare", "--reference", str(ref), "--keep-depth", "--quiet", "--blend", "average"])
    assert rc == 0
    assert read_image(out / "c.png").bit_depth == 16
    with Image.open(out / "c_compare.png") as cmp:
        w, h = cmp.size
    assert h > 40 and w >= 3 * 52  # input | output | reference, with a label strip
    # Without a reference: two panels only.
    rc = main(["restore", "--task", "denoise30", "--model", str(model_dir), str(src / "c.png"), "-o",
               str(tmp_path / "out2"), "--compare", "--quiet"])
    assert rc == 0
    with Image.open(tmp_path / "out2" / "c_compare.png") as cmp2:
        assert 2 * 52 <= cmp2.size[0] < 3 * 52
    assert read_image(tmp_path / "out2" / "c.png").bit_depth == 8


def test_corrupt_file_named_others_written(model_dir: Path, inputs: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    rc = main(["restore", "--task", "denoise30", "--model", str(model_dir), str(inputs), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1
    assert (out / "a.png").is_file() and (out / "b.png").is_file() and not (out / "broken.png").exists()
    assert "broken.png" in err and "1 of 3 images failed" in err


def test_model_without_task_lists_its_tasks(model_dir: Path, inputs: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["restore", "--task", "derain", "--model", str(model_dir), str(inputs), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "derain" in err and "sr2" in err and "denoise30" in err


def test_missing_model_without_bundled(inputs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    import ipt.core.checkpoints.bundled as bundled

    monkeypatch.setattr(bundled, "BUNDLED_DIR", tmp_path / "no-weights")  # an installation without weights
    rc = main(["restore", "--task", "sr2", str(inputs), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no bundled model in" in err and "pass --model" in err


def test_bad_inputs_are_clear(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["restore", "--task", "sr2", "--model", str(model_dir), str(tmp_path / "nope.png"), "-o",
               str(tmp_path / "o")])
    assert rc == 2 and "nope.png" in capsys.readouterr().err
    d = tmp_path / "dup"
    write_image(d / "x" / "same.png", _rgb(10, 10, 0))
    write_image(d / "y" / "same.png", _rgb(10, 10, 1))
    rc = main(["restore", "--task", "sr2", "--model", str(model_dir), str(d / "x"), str(d / "y"), "-o",
               str(tmp_path / "o")])
    assert rc == 2 and "same output" in capsys.readouterr().err
