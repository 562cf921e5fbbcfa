"""Image reading/writing: 8/16-bit PNG and TIFF, grey, alpha, WebP, JPEG, corrupt files, folder listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ipt.core.images.io import ImageReadError, iter_images, read_image, resize_alpha, write_image


def _rgb(h: int = 50, w: int = 70, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 255


def _smooth(h: int = 50, w: int = 70) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([xx / w * 255, yy / h * 255, (xx + yy) / (h + w) * 255])


def test_png_8bit_round_trip(tmp_path: Path) -> None:
    x = _rgb()
    write_image(tmp_path / "a.png", x)
    img = read_image(tmp_path / "a.png")
    assert img.bit_depth == 8 and img.alpha is None and img.rgb.dtype == torch.float32
    assert img.rgb.shape == (3, 50, 70)
    assert torch.equal(img.rgb, x.round())
    # Independently decoded by Pillow: the same 8-bit values.
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.png")), x.round().byte().permute(1, 2, 0).numpy())


def test_png_16bit_rgb_round_trip(tmp_path: Path) -> None:
    x = _rgb()
    write_image(tmp_path / "a16.png", x, bit_depth=16)
    expected16 = (x.double() * 65535 / 255).round().long()
    with Image.open(tmp_path / "a16.png") as im:  # Pillow keeps the high byte of 16-bit colour samples
        assert im.size == (70, 50)
        assert np.array_equal(np.asarray(im.convert("RGB")), (expected16 >> 8).permute(1, 2, 0).numpy().astype(np.uint8))
    assert (tmp_path / "a16.png").read_bytes()[24] == 16  # IHDR bit depth
    img = read_image(tmp_path / "a16.png")
    assert img.bit_depth == 16 and img.alpha is None
    assert (img.rgb - x).abs().max() <= 0.5 * 255 / 65535 + 1e-4  # finer than any 8-bit value


def test_png_16bit_grey_from_pillow(tmp_path: Path) -> None:
    g = np.random.default_rng(0).integers(0, 65536, size=(20, 30), dtype=np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.bit_depth == 16 and img.mode.startswith("I;16")
    expected = torch.from_numpy(g.astype(np.float64) * 255 / 65535).float()
    for c in range(3):
        assert torch.allclose(img.rgb[c], expected, atol=1e-3)


def test_grey_8bit_becomes_rgb(tmp_path: Path) -> None:
    g = np.random.default_rng(1).integers(0, 256, size=(10, 12), dtype=np.uint8)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.rgb.shape == (3, 10, 12) and img.alpha is None and img.bit_depth == 8
    assert all(torch.equal(img.rgb[c], torch.from_numpy(g).float()) for c in range(3))


def test_rgba_alpha_kept_aside_and_reattached(tmp_path: Path) -> None:
    rgba = np.random.default_rng(2).integers(0, 256, size=(16, 20, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert torch.equal(img.rgb, torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float())
    assert img.alpha is not None and torch.equal(img.alpha, torch.from_numpy(rgba[..., 3]).float())
    write_image(tmp_path / "b.png", img.rgb, img.alpha)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgba)


def test_alpha_resized_for_larger_output(tmp_path: Path) -> None:
    alpha = torch.zeros(10, 12)
    alpha[:, 6:] = 255
    write_image(tmp_path / "sr.png", _rgb(20, 24), alpha)
    out = np.asarray(Image.open(tmp_path / "sr.png"))
    assert out.shape == (20, 24, 4)
    assert (out[:, :10, 3] == 0).all() and (out[:, 14:, 3] == 255).all()  # the edge stays where it was
    assert resize_alpha(alpha, (10, 12)) is alpha


def test_la_and_palette_transparency(tmp_path: Path) -> None:
    la = np.random.default_rng(3).integers(0, 256, size=(8, 9, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    img = read_image(tmp_path / "la.png")
    assert torch.equal(img.rgb[1], torch.from_numpy(la[..., 0]).float())
    assert torch.equal(img.alpha, torch.from_numpy(la[..., 1]).float())

    p = Image.new("P", (6, 4))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    img = read_image(tmp_path / "p.png")
    assert img.alpha is not None and img.alpha[0, 0] == 255 and img.alpha[1, 1] == 0
    assert img.rgb[:, 0, 0].tolist() == [0, 255, 0]


def test_tiff_16bit_rgb(tmp_path: Path) -> None:
    import tifffile

    a = np.random.default_rng(4).integers(0, 65536, size=(12, 14, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb")
    img = read_image(tmp_path / "a.tif")
    assert img.bit_depth == 16
    assert torch.allclose(img.rgb, torch.from_numpy(a.astype(np.float64) * 255 / 65535).permute(2, 0, 1).float(), atol=1e-3)
    write_image(tmp_path / "b.tif", img.rgb, bit_depth=16)
    assert np.array_equal(tifffile.imread(tmp_path / "b.tif"), a)


def test_webp_lossless_and_jpeg(tmp_path: Path) -> None:
    x = _rgb(24, 30)
    write_image(tmp_path / "a.webp", x)
    assert torch.equal(read_image(tmp_path / "a.webp").rgb, x.round())
    s = _smooth()
    write_image(tmp_path / "a.jpg", s)
    img = read_image(tmp_path / "a.jpg")
    assert img.bit_depth == 8 and img.rgb.shape == (3, 50, 70)
    assert (img.rgb - s).abs().mean() < 3.0  # lossy, but close on a smooth image
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "b.jpg", s, bit_depth=16)


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_files_raise_named_error(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    with pytest.raises(ImageReadError) as err:
        read_image(bad)
    assert str(bad) in str(err.value) and err.value.path == bad


def test_truncated_and_missing(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", _rgb())
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="t.png"):
        read_image(tmp_path / "t.png")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_iter_images(tmp_path: Path) -> None:
    for name in ["b.png", "a.JPG", "c.tiff", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in iter_images([tmp_path])] == ["a.JPG", "b.png", "c.tiff"]
    assert [p.name for p in iter_images([tmp_path / "notes.txt", tmp_path / "sub"])] == ["notes.txt", "d.png"]
    with pytest.raises(FileNotFoundError, match="nope"):
        list(iter_images([tmp_path / "nope"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        list(iter_images([tmp_path / "empty"]))
