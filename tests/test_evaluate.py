"""``ipt eval``: layouts, pairing errors, seeded degradations, baselines, metrics conventions, protocols."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from ipt.cli import main
from ipt.core.evaluation.evaluate import evaluate_pairs
from ipt.core.evaluation.metrics import psnr
from ipt.core.images.io import read_image, write_image
from ipt.core.evaluation.pairing import PairingError, detect_layout
from ipt.core.images.resize import bicubic_degrade, imresize
from ipt.core.inference.tiling import count_tiles, official_tile_count

KEYS = {"task", "n", "psnr_y", "ssim_y", "psnr_rgb", "per_image", "protocol", "tiles", "seconds"}


def _photo(h: int, w: int, seed: int) -> torch.Tensor:
    """A smooth-ish random image (8-bit values), so that PSNRs are in a realistic range."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g) * 255
    img = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[0]
    return img.round().clamp(0, 255)


def _hand_psnr_y(a: torch.Tensor, b: torch.Tensor, border: int) -> float:
    """BT.601 Y PSNR written out: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255."""
    def y(x: torch.Tensor) -> torch.Tensor:
        x = x.double()
        return 16 + (65.481 * x[0] + 128.553 * x[1] + 24.966 * x[2]) / 255

    d = y(a) - y(b)
    if border:
        d = d[border:-border, border:-border]
    return 10 * math.log10(255**2 / float((d**2).mean()))


def _eval_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    capsys.readouterr()
    rc = main(["eval", *argv, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture
def clean_dir(tmp_path: Path) -> Path:
    d = tmp_path / "clean"
    write_image(d / "a.png", _photo(50, 70, 0))
    write_image(d / "b.png", _photo(51, 61, 1))  # odd size: modcrop for SR
    return d


def test_clean_folder_seeded_and_json(model_dir: Path, clean_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--task", "denoise30", "--model", str(model_dir), "--data", str(clean_dir))
    first = _eval_json(capsys, *args)
    assert KEYS <= first.keys() and first["task"] == "denoise30" and first["n"] == 2
    assert set(first["per_image"]) == {"a", "b"} and first["protocol"] == "paper"
    assert all(math.isfinite(first[k]) for k in ("psnr_y", "ssim_y", "psnr_rgb"))
    assert first["psnr_y"] == pytest.approx(sum(v["psnr_y"] for v in first["per_image"].values()) / 2)
    second = _eval_json(capsys, *args)
    assert second["per_image"] == first["per_image"]  # same seed, same noise, same numbers
    other = _eval_json(capsys, *args, "--seed", "1")
    assert other["per_image"]["a"]["psnr_y"] != first["per_image"]["a"]["psnr_y"]
    limited = _eval_json(capsys, *args, "--limit", "1")
    assert limited["n"] == 1 and limited["per_image"]["a"] == first["per_image"]["a"]  # seed per name, not order


def test_table_output(model_dir: Path, clean_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "--task", "sr2", "--model", str(model_dir), "--data", str(clean_dir), "--baseline", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert any(l.startswith("a ") for l in lines) and any(l.startswith("mean") for l in lines) and "bic" in out


def test_set5_layout_baseline_is_bicubic(model_dir: Path, clean_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "Set5"
    expected = {}
    for name in ("a", "b"):
        hr = read_image(clean_dir / f"{name}.png").rgb
        write_image(root / "HR" / f"{name}.png", hr)
        crop = hr[:, : hr.shape[1] // 2 * 2, : hr.shape[2] // 2 * 2]
        lr = bicubic_degrade(crop, 2)
        write_image(root / "LR_bicubic" / "X2" / f"{name}x2.png", lr)
        expected[name] = _hand_psnr_y(imresize(lr, scale=2).clamp(0, 255).round(), crop, 2)
    res = _eval_json(capsys, "--task", "sr2", "--model", str(model_dir), "--data", str(root), "--baseline",
                     "--save-dir", str(tmp_path / "saved"))
    assert res["n"] == 2 and "LR_bicubic" in res["layout"]
    for name in expected:
        assert res["baseline"]["per_image"][name]["psnr_y"] == pytest.approx(expected[name], abs=1e-9)
    assert res["baseline"]["psnr_y"] > 20  # bicubic of a smooth image is good
    assert read_image(tmp_path / "saved" / "b.png").size == (50, 60)  # modcropped 51x61
    # The stored LR images are exactly what the sr2 plugin makes on the fly: identical scores.
    synth = _eval_json(capsys, "--task", "sr2", "--model", str(model_dir), "--data", str(clean_dir), "--baseline")
    assert synth["per_image"] == res["per_image"] and synth["baseline"]["per_image"] == res["baseline"]["per_image"]


def test_denoise_stored_noisy_baseline(model_dir: Path, clean_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "CBSD68"
    expected = {}
    for i, name in enumerate(("a", "b")):
        clean = read_image(clean_dir / f"{name}.png").rgb
        noisy = (clean + 30 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(i))).clamp(0, 255)
        write_image(root / "original_png" / f"{name}.png", clean)
        write_image(root / "noisy30" / f"{name}.png", noisy)
        expected[name] = _hand_psnr_y(noisy.round(), clean, 0)
    write_image(root / "noisy50" / "a.png", clean)  # another sigma's folder is ignored
    res = _eval_json(capsys, "--task", "denoise30", "--model", str(model_dir), "--data", str(root), "--baseline")
    assert "noisy30" in res["layout"]
    for name, value in expected.items():
        assert res["baseline"]["per_image"][name]["psnr_y"] == pytest.approx(value, abs=1e-9)


def test_perfect_restoration_scores_infinite() -> None:
    clean = _photo(40, 44, 5)
    res = evaluate_pairs(lambda d: 255 - d, "denoise30", [("x", 255 - clean, clean)], baseline=True)
    assert math.isinf(res.psnr_y) and math.isinf(res.psnr_rgb) and res.ssim_y == pytest.approx(1.0)
    assert res.baseline is not None
    assert res.baseline.psnr_y == pytest.approx(_hand_psnr_y(255 - clean, clean, 0), abs=1e-9)
    assert "Infinity" in res.model_dump_json()
    up = clean.repeat_interleave(2, -1).repeat_interleave(2, -2)
    nearest = lambda d: d.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    res = evaluate_pairs(nearest, "sr2", [("y", clean, up)])
    assert math.isinf(res.psnr_y) and res.tiles == 0


def _write_rain_pairs(d: Path, names: list[str], rain_prefix: str = "rain-", clean_prefix: str = "norain-",
                      rain_dir: str = "", clean_dir: str = "") -> None:
    for i, n in enumerate(names):
        write_image(d / clean_dir / f"{clean_prefix}{n}.png", _photo(48, 52, 10 + i))
        write_image(d / rain_dir / f"{rain_prefix}{n}.png", _photo(48, 52, 20 + i))


def test_rain100l_flat_and_subfolders(model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat"
    _write_rain_pairs(flat, ["001", "002", "010"])
    layout = detect_layout(flat, "derain")
    assert layout.kind == "flat_prefix"
    assert [(p.name, p.degraded.name, p.clean.name) for p in layout.pairs] == [
        (n, f"rain-{n}.png", f"norain-{n}.png") for n in ("001", "002", "010")]
    sub = tmp_path / "sub"
    _write_rain_pairs(sub, ["1", "2"], rain_dir="rainy", clean_dir="norain")
    layout = detect_layout(sub, "derain")
    assert layout.kind == "paired_folders"
    assert [(p.degraded.parent.name, p.clean.parent.name) for p in layout.pairs] == [("rainy", "norain")] * 2
    io = tmp_path / "io"
    _write_rain_pairs(io, ["p", "q"], rain_prefix="", clean_prefix="", rain_dir="input", clean_dir="target")
    assert [p.name for p in detect_layout(io, "derain").pairs] == ["p", "q"]
    # Scored end to end with a model task of scale 1 (the stored pairs, no on-the-fly degradation).
    res = _eval_json(capsys, "--task", "denoise30", "--model", str(model_dir), "--data", str(flat), "--baseline")
    assert res["n"] == 3 and res["seed"] is None
    hand = _hand_psnr_y(read_image(flat / "rain-002.png").rgb, read_image(flat / "norain-002.png").rgb, 0)
    assert res["baseline"]["per_image"]["002"]["psnr_y"] == pytest.approx(hand, abs=1e-9)


def test_self_pairing_refused(tmp_path: Path, model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flat = tmp_path / "flat"
    _write_rain_pairs(flat, ["001", "002"])
    shutil.copy(flat / "norain-002.png", flat / "rain-002.png")
    with pytest.raises(PairingError, match="against itself") as err:
        detect_layout(flat, "derain")
    assert "rain-002.png" in str(err.value) and "rain-001.png" not in str(err.value)
    linked = tmp_path / "linked"
    _write_rain_pairs(linked, ["1"], rain_prefix="", clean_prefix="", clean_dir="norain")
    (linked / "rainy").symlink_to(linked / "norain")
    rc = main(["eval", "--task", "denoise30", "--model", str(model_dir), "--data", str(linked), "--quiet"])
    assert rc == 2 and "against themselves" in capsys.readouterr().err


def test_unmatched_and_mismatched_listed(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    _write_rain_pairs(flat, ["001", "002"])
    write_image(flat / "rain-003.png", _photo(48, 52, 3))
    write_image(flat / "norain-004.png", _photo(48, 52, 4))
    with pytest.raises(PairingError) as err:
        detect_layout(flat, "derain")
    msg = str(err.value)
    assert "inputs without a target: rain-003.png" in msg and "targets without an input: norain-004.png" in msg

    from ipt.core.evaluation.pairing import check_sizes

    root = tmp_path / "Set5"
    write_image(root / "HR" / "a.png", _photo(50, 70, 0))
    write_image(root / "HR" / "b.png", _photo(50, 70, 1))
    write_image(root / "LR_bicubic" / "X2" / "ax2.png", _photo(25, 35, 0))
    write_image(root / "LR_bicubic" / "X2" / "bx2.png", _photo(24, 35, 1))
    layout = detect_layout(root, "sr2")
    with pytest.raises(PairingError, match=r"X2/bx2.png 24x35 vs HR/b.png 50x70 \(expected input 25x35\)") as err:
        check_sizes(layout.pairs, 2)
    assert "ax2.png" not in str(err.value)


def test_model_without_task_and_bad_data(model_dir: Path, clean_dir: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["eval", "--task", "sr4", "--model", str(model_dir), "--data", str(clean_dir), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "sr4" in err and "sr2, denoise30" in err
    (tmp_path / "empty").mkdir()
    rc = main(["eval", "--task", "sr2", "--model", str(model_dir), "--data", str(tmp_path / "empty"), "--quiet"])
    assert rc == 2 and "no images" in capsys.readouterr().err


def test_official_protocol_runs_more_tiles(model_dir: Path, clean_dir: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--task", "denoise30", "--model", str(model_dir), "--data", str(clean_dir))
    paper = _eval_json(capsys, *args)
    official = _eval_json(capsys, *args, "--protocol", "official")
    sizes = [(50, 70), (51, 61)]
    assert paper["tiles"] == sum(count_tiles(h, w) for h, w in sizes)
    assert official["tiles"] == sum(official_tile_count(h, w) for h, w in sizes) > paper["tiles"]
    assert official["protocol"] == "official"
    assert all(math.isfinite(official["per_image"][n]["psnr_y"]) for n in ("a", "b"))


# -- conventions (issue 20) ----------------------------------------------------------------------------------------
def test_convention_in_table_and_json(model_dir: Path, clean_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--task", "sr2", "--model", str(model_dir), "--data", str(clean_dir), "--baseline")
    default = _eval_json(capsys, *args)
    matlab = _eval_json(capsys, *args, "--convention", "matlab")
    assert default["convention"] == "official-python" and matlab["convention"] == "matlab"
    # Y rounded to 8 bit and per-pass-rounded LR images: every score moves, RGB PSNR only through the LR images
    assert matlab["per_image"]["a"]["psnr_y"] != default["per_image"]["a"]["psnr_y"]
    capsys.readouterr()
    assert main(["eval", *args, "--quiet", "--convention", "matlab"]) == 0
    assert "convention matlab" in capsys.readouterr().out.splitlines()[1]
    with pytest.raises(SystemExit):
        main(["eval", *args, "--convention", "octave"])
    assert "invalid choice: 'octave'" in capsys.readouterr().err


def test_matlab_convention_makes_lr_with_per_pass_rounding(clean_dir: Path) -> None:
    from ipt.core.evaluation.evaluate import load_pairs
    from ipt.registry import get_task

    spec = get_task("sr2")
    pairs = detect_layout(clean_dir, spec).pairs
    matlab = {s.name: s for s in load_pairs(pairs, spec, convention="matlab")}
    official = {s.name: s for s in load_pairs(pairs, spec)}
    for name, s in matlab.items():
        assert s.clean.shape[-2:] == (50, 70) if name == "a" else (50, 60)  # modcropped
        assert torch.equal(s.degraded, bicubic_degrade(s.clean, 2, round_each_pass=True).float())
        assert torch.equal(official[name].degraded, bicubic_degrade(s.clean, 2))
        assert not s.grey


def test_grey_file_scored_on_grey_values(tmp_path: Path) -> None:
    from ipt.core.evaluation.evaluate import load_pairs, table_bicubic_y
    from ipt.registry import get_task

    from PIL import Image

    grey = _photo(40, 44, 7)[:1]  # (1, H, W), saved as an 8-bit grey ("L") PNG
    Image.fromarray(grey[0].numpy().astype("uint8"), mode="L").save(tmp_path / "g.png")
    spec = get_task("sr2")
    (sample,) = load_pairs(detect_layout(tmp_path, spec).pairs, spec, convention="matlab")
    assert sample.grey and torch.equal(sample.clean, grey.expand(3, -1, -1))
    upscale = lambda d: imresize(d, scale=2)
    res = {c: evaluate_pairs(upscale, spec, [sample], baseline=True, convention=c)
           for c in ("matlab", "official-python")}
    out = imresize(sample.degraded, scale=2).clamp(0, 255).round()[:1].double()
    d = (out - grey)[:, 2:-2, 2:-2]
    assert res["matlab"].psnr_y == pytest.approx(10 * math.log10(255**2 / float((d**2).mean())), abs=1e-9)
    assert res["official-python"].psnr_y - res["matlab"].psnr_y == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    # the baseline's Y follows the tables' recipe on the grey values themselves
    up, ref = table_bicubic_y(sample.clean, 2, grey=True)
    assert torch.equal(ref, grey.double())
    assert res["matlab"].baseline.psnr_y == pytest.approx(psnr(up, ref, crop_border=2), abs=1e-12)
    # the same grey stored as RGB is grey for restoring, but MATLAB's rgb2ycbcr sees three channels: rounded Y
    Image.fromarray(grey[0].numpy().astype("uint8"), mode="L").convert("RGB").save(tmp_path / "g.png")
    (rgb_file,) = load_pairs(detect_layout(tmp_path, spec).pairs, spec, convention="matlab")
    assert rgb_file.grey and rgb_file.channels == 3 and not rgb_file.one_channel
    as_rgb = evaluate_pairs(upscale, spec, [rgb_file], convention="matlab")
    y = lambda t: (16 + t.double() * 219 / 255).add(0.5).floor()[:, 2:-2, 2:-2]
    mse = float(((y(out) - y(grey)) ** 2).mean())
    assert as_rgb.psnr_y == pytest.approx(10 * math.log10(255**2 / mse), abs=1e-9)


def test_table_bicubic_recipe_hand_checked() -> None:
    from ipt.core.evaluation.evaluate import table_bicubic_y
    from ipt.core.images.resize import matlab_uint8

    clean = _photo(24, 30, 3)
    up, ref = table_bicubic_y(clean, 3)
    y = 16 + (65.481 * clean[0] + 128.553 * clean[1] + 24.966 * clean[2]).double() / 255
    assert torch.equal(ref[0], matlab_uint8(y))  # rgb2ycbcr on uint8
    # float down and up (no rounding in between), one uint8 conversion at the end
    expected = matlab_uint8(imresize(imresize(ref / 255, scale=1 / 3), scale=3) * 255)
    assert up.shape == ref.shape == (1, 24, 30)
    assert (up - expected).abs().max() <= 1  # float32 (MATLAB single) vs float64: at most a tie apart
    assert torch.equal(up, up.round())
    flat = torch.full((3, 24, 30), 77.0)
    up, ref = table_bicubic_y(flat, 2)
    assert torch.equal(up, ref)  # a constant image survives bicubic down/up exactly
