"""``ipt restore`` on inputs that must not hurt (issue 13): outputs never replace inputs (case 15), grey stays grey
(case 16), hidden colour under alpha does not bleed (case 18), bombs and memory errors fail one image, a damaged
model never writes a black picture (reliability rows 20, 22)."""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from ipt.core.files import OverwriteError, check_not_inputs
from ipt.core.images.channels import fill_transparent, grey_plane
from ipt.core.images.io import ImageReadError, read_image
from PIL import Image

from ipt.cli import main


def _sha(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def _photo(h: int = 40, w: int = 52, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    rng = np.random.default_rng(seed)
    base = 128 + 60 * np.sin(xx / 5.0 + seed) * np.cos(yy / 7.0)
    return np.clip(base[..., None] + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _restore(model_dir: Path, *args: str, task: str = "sr2") -> int:
    return main(["restore", "--task", task, "--model", str(model_dir), "--quiet", "--device", "cpu", *args])


# -- case 15: never overwrite an input -----------------------------------------------------------------------
def test_output_folder_is_the_input_folder_is_refused(model_dir: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photo()).save(photos / "holiday.png")
    before = _sha(photos / "holiday.png")
    rc = _restore(model_dir, str(photos), "-o", str(photos))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holiday.png" in err[0] or str(photos) in err[0]
    assert "refusing to write over an input" in err[0] and "--suffix" in err[0]
    assert _sha(photos / "holiday.png") == before and sorted(os.listdir(photos)) == ["holiday.png"]


@pytest.mark.parametrize("how", ["file", "relative", "symlink", "hardlink", "jpg-in-folder"])
def test_other_ways_to_point_an_output_at_an_input(model_dir: Path, tmp_path: Path, how: str,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(_photo()).save(src / "a.png")
    monkeypatch.chdir(tmp_path)
    if how == "file":  # one file given, -o its folder: src/a.png would be replaced
        args = [str(src / "a.png"), "-o", str(src)]
    elif how == "relative":
        args = ["src/a.png", "-o", "src/../src/."]
    elif how == "symlink":  # -o is a link to the input folder
        (tmp_path / "link").symlink_to(src)
        args = [str(src / "a.png"), "-o", str(tmp_path / "link")]
    elif how == "hardlink":  # the output name is another name of the input file
        (tmp_path / "out").mkdir()
        os.link(src / "a.png", tmp_path / "out" / "a.png")
        args = [str(tmp_path / "out" / "a.png"), "-o", str(tmp_path / "out2")]
        (tmp_path / "out2").mkdir()
        os.link(src / "a.png", tmp_path / "out2" / "a.png")
    else:  # a .jpg input in a folder given as -o: the folder is an input folder
        Image.fromarray(_photo(seed=1)).save(src / "b.jpg")
        (src / "a.png").unlink()
        args = [str(src), "-o", str(src)]
    before = {p.name: _sha(p) for p in src.iterdir()}
    rc = _restore(model_dir, *args)
    err = capsys.readouterr().err
    assert rc == 2 and "refusing to write over an input" in err, err
    assert {p.name: _sha(p) for p in src.iterdir()} == before


def test_suffix_writes_beside_the_inputs(model_dir: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_photo()).save(photos / "holiday.png")
    Image.fromarray(_photo(seed=2)).save(photos / "beach.jpg")
    before = _sha(photos / "holiday.png")
    assert _restore(model_dir, str(photos), "-o", str(photos), "--suffix", "_sr2") == 0
    assert _sha(photos / "holiday.png") == before
    assert Image.open(photos / "holiday_sr2.png").size == (104, 80)
    assert Image.open(photos / "beach_sr2.png").size == (104, 80)
    # A suffix that still lands on an input is refused too: the folder now holds holiday.png and holiday_sr2.png.
    before = _sha(photos / "holiday_sr2.png")
    assert _restore(model_dir, str(photos), "-o", str(photos), "--suffix", "_sr2") == 2
    assert _sha(photos / "holiday_sr2.png") == before


def test_reference_is_an_input_too(model_dir: Path, tmp_path: Path) -> None:
    noisy, refs = tmp_path / "noisy", tmp_path / "refs"
    noisy.mkdir(), refs.mkdir()
    Image.fromarray(_photo()).save(noisy / "a.png")
    Image.fromarray(_photo(seed=5)).save(refs / "a.png")
    before = _sha(refs / "a.png")
    rc = _restore(model_dir, str(noisy), "-o", str(refs), "--compare", "--reference", str(refs), task="denoise30")
    assert rc == 2 and _sha(refs / "a.png") == before


def test_check_not_inputs_rules(tmp_path: Path) -> None:
    model = tmp_path / "run" / "model"
    model.mkdir(parents=True)
    # writing into a folder beside an input is fine; into the input folder or over the input is not
    check_not_inputs([model], "--x", writes=[tmp_path / "run" / "log.txt"])
    with pytest.raises(OverwriteError, match="is inside"):
        check_not_inputs([model], "--x", writes=[model / "config.json"])
    with pytest.raises(OverwriteError, match=r"--x .*model: refusing"):
        check_not_inputs([model], "--x", writes=[model])
    # replacing a folder that holds the input
    check_not_inputs([model], "--x", writes=[tmp_path / "run"])
    with pytest.raises(OverwriteError, match="would replace a folder holding the input"):
        check_not_inputs([model], "--x", replaces=[tmp_path / "run"])


# -- case 16: grey in, grey out ------------------------------------------------------------------------------
def _grey_inputs(d: Path) -> None:
    d.mkdir()
    g = _photo()[..., 0]
    Image.fromarray(g, "L").save(d / "grey.png")
    Image.fromarray(g.astype(np.uint16) * 257).save(d / "grey16.png")
    noisy = np.clip(g + np.random.default_rng(0).normal(0, 30, g.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy, "L").save(d / "grey_noisy.jpg")
    a = np.tile(np.linspace(0, 255, g.shape[1]).astype(np.uint8), (g.shape[0], 1))
    Image.fromarray(np.dstack([g, a]), "LA").save(d / "grey_alpha.png")
    Image.fromarray(np.dstack([g, g, g]), "RGB").save(d / "grey_as_rgb.png")  # R = G = B in an RGB file
    Image.fromarray(_photo(seed=9)).save(d / "colour.png")


@pytest.mark.parametrize("task", ["sr2", "denoise30"])
def test_grey_inputs_stay_grey_in_their_mode(model_dir: Path, tmp_path: Path, task: str) -> None:
    _grey_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert _restore(model_dir, str(tmp_path / "in"), "-o", str(out), "--keep-depth", task=task) == 0
    s = 2 if task == "sr2" else 1
    modes = {}
    for f in sorted(out.glob("*.png")):
        im = Image.open(f)
        modes[f.stem] = im.mode
        assert im.size == (52 * s, 40 * s)
        if im.mode == "RGB" and f.stem == "grey_as_rgb":
            a = np.asarray(im).astype(int)
            assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    assert modes["grey"] == "L" and modes["grey_noisy"] == "L" and modes["grey_alpha"] == "LA"
    assert modes["grey16"].startswith("I") and read_image(out / "grey16.png").bit_depth == 16
    assert modes["grey_as_rgb"] == "RGB" and modes["colour"] == "RGB"
    colour = np.asarray(Image.open(out / "colour.png")).astype(int)
    assert (colour[..., 0] != colour[..., 1]).any()  # colour images are left alone
    # LA keeps its alpha, resized with the image
    la = np.asarray(Image.open(out / "grey_alpha.png"))
    assert la.shape == (40 * s, 52 * s, 2) and la[0, 0, 1] <= 3 and la[0, -1, 1] >= 252


def test_grey_plane_is_the_channel_mean() -> None:
    x = torch.tensor([[[3.0]], [[6.0]], [[12.0]]])
    assert grey_plane(x).tolist() == [[[7.0]]]
    with pytest.raises(ValueError):
        grey_plane(torch.zeros(1, 2, 2))


# -- case 18: hidden colour under alpha ----------------------------------------------------------------------
def _stickers(d: Path, mode: str = "RGBA", size: int = 64) -> None:
    d.mkdir()
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (size * 5 // 16) ** 2
    a = np.where(disc, 255, 0).astype(np.uint8)
    if mode == "RGBA":
        rgb = np.zeros((size, size, 3), np.uint8)
        rgb[disc] = (255, 220, 40)
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(d / "black_under.png")
        rgb[~disc] = (255, 220, 40)
        Image.fromarray(np.dstack([rgb, a]), "RGBA").save(d / "colour_under.png")
    else:
        g = np.where(disc, 200, 0).astype(np.uint8)
        Image.fromarray(np.dstack([g, a]), "LA").save(d / "black_under.png")
        Image.fromarray(np.dstack([np.full_like(g, 200), a]), "LA").save(d / "colour_under.png")


@pytest.mark.parametrize("task,mode,size", [("sr2", "RGBA", 64), ("denoise30", "LA", 50)])
def test_hidden_colour_under_alpha_does_not_change_visible_pixels(model_dir: Path, tmp_path: Path, task: str,
                                                                  mode: str, size: int) -> None:
    _stickers(tmp_path / "in", mode, size)
    out = tmp_path / "out"
    assert _restore(model_dir, str(tmp_path / "in"), "-o", str(out), task=task) == 0
    black = np.asarray(Image.open(out / "black_under.png"))
    colour = np.asarray(Image.open(out / "colour_under.png"))
    assert np.array_equal(black, colour)  # the output cannot depend on what the user cannot see


def test_fill_transparent_extends_visible_colour() -> None:
    rgb = torch.zeros(3, 9, 11)
    rgb[:, :, :4] = torch.tensor([10.0, 20.0, 30.0])[:, None, None]
    alpha = torch.zeros(9, 11)
    alpha[:, :4] = 255
    alpha[0, 0] = 1  # barely visible: keeps its own colour
    rgb[:, 0, 0] = 99
    out = fill_transparent(rgb, alpha)
    # hidden pixels take the visible colour (the 1/255-opaque pixel weighs 1/255 of the others)
    assert (out[:, :, 4:] - torch.tensor([10.0, 20.0, 30.0])[:, None, None]).abs().max() < 0.5
    assert out[:, 0, 0].tolist() == [99, 99, 99] and torch.equal(out[:, 1:, :4], rgb[:, 1:, :4])
    assert fill_transparent(rgb, None) is rgb and fill_transparent(rgb, torch.zeros(9, 11)) is rgb


# -- bounded resources: bombs, memory, damaged models --------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int, bit_depth: int, colour_type: int) -> None:
    """A PNG whose IHDR claims ``width`` x ``height`` and whose data is a few bytes (a decompression bomb's
    header: the decoder must refuse it before allocating anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_16bit_png_bomb_fails_that_image_only(model_dir: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "in"
    d.mkdir()
    _png_header_only(d / "bomb16.png", 20000, 20000, 16, 2)
    _png_header_only(d / "bomb8.png", 30000, 30000, 8, 2)
    Image.fromarray(_photo()).save(d / "good.png")
    rc = _restore(model_dir, str(d), "-o", str(tmp_path / "out"), task="denoise30")
    err = capsys.readouterr().err
    assert rc == 1 and (tmp_path / "out" / "good.png").is_file()
    assert "bomb16.png" in err and "bomb8.png" in err and "2 of 3 images failed" in err
    for name in ("bomb16.png", "bomb8.png"):
        with pytest.raises(ImageReadError) as exc:
            read_image(d / name)
        assert exc.value.reason == "too_large"


def test_memory_error_fails_one_image(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from ipt.core.inference import restorer as restorer_module

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_photo(60, 60)).save(d / "big.png")
    Image.fromarray(_photo()).save(d / "small.png")
    real, real_fn = restorer_module.TaskRestorer.__call__, restorer_module.TaskRestorer._fn

    def call(self, image, progress=None):  # type: ignore[no-untyped-def]
        if image.shape[-1] == 60:
            raise MemoryError("simulated: cannot allocate")
        return real(self, image, progress=progress)

    def fn(self, tiles):  # type: ignore[no-untyped-def]
        if tiles.shape[0] > 4:  # a batch filled with both images' tiles (4 each) fails too
            raise MemoryError("simulated: cannot allocate")
        return real_fn(self, tiles)

    # Several images are restored as a stream; when a batch fails, its images are retried alone (__call__).
    monkeypatch.setattr(restorer_module.TaskRestorer, "__call__", call)
    monkeypatch.setattr(restorer_module.TaskRestorer, "_fn", fn)
    rc = _restore(model_dir, str(d), "-o", str(tmp_path / "out"), task="denoise30")
    err = capsys.readouterr().err
    assert rc == 1 and (tmp_path / "out" / "small.png").is_file() and not (tmp_path / "out" / "big.png").exists()
    assert "big.png" in err and "out of memory" in err


def test_non_finite_output_writes_nothing(model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from ipt.core.inference import restorer as restorer_module

    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_photo()).save(d / "a.png")
    monkeypatch.setattr(restorer_module.TaskRestorer, "__call__",
                        lambda self, image, progress=None: torch.full((3, 80, 104), float("nan")))
    rc = _restore(model_dir, str(d), "-o", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert rc == 1 and not (tmp_path / "out" / "a.png").exists() and "non-finite" in err
