"""Metrics follow the benchmark conventions and agree with scikit-image's reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ipt.core.evaluation.metrics import (
    psnr,
    psnr_batch,
    quantize,
    rgb_to_y,
    score,
    scored_channel,
    ssim,
    ssim_batch,
)


def _image(seed: int, h: int = 40, w: int = 52) -> torch.Tensor:
    """A smooth-ish random image on 0-255 (pure noise would make SSIM comparisons uninformative)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, h // 4 + 1, w // 4 + 1, generator=g, dtype=torch.float64) * 255
    up = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return (up + torch.randn(3, h, w, generator=g, dtype=torch.float64) * 4).clamp(0, 255).round()


def _noisy(img: torch.Tensor, seed: int, sigma: float = 10.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (img + torch.randn(img.shape, generator=g, dtype=img.dtype) * sigma).clamp(0, 255).round()


def _y_np(img: torch.Tensor) -> np.ndarray:
    """Reference luma straight from the BT.601 formula, in numpy."""
    r, g, b = img.numpy()
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


# --- luma -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((255, 255, 255), 235.0),
        ((0, 0, 0), 16.0),
        ((255, 0, 0), 16.0 + 65.481),
        ((0, 255, 0), 16.0 + 128.553),
        ((0, 0, 255), 16.0 + 24.966),
        ((128, 64, 32), 16.0 + (65.481 * 128 + 128.553 * 64 + 24.966 * 32) / 255.0),
    ],
)
def test_rgb_to_y_bt601(rgb: tuple[int, int, int], expected: float) -> None:
    img = torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1).expand(3, 2, 3)
    y = rgb_to_y(img)
    assert y.shape == (1, 2, 3)
    torch.testing.assert_close(y, torch.full((1, 2, 3), expected, dtype=torch.float64))


def test_rgb_to_y_batched_and_float32() -> None:
    img = _image(0).float()
    y = rgb_to_y(torch.stack([img, img]))
    assert y.shape == (2, 1, 40, 52) and y.dtype == torch.float32
    np.testing.assert_allclose(y[1, 0].numpy(), _y_np(img.double()), atol=1e-4)
    with pytest.raises(ValueError):
        rgb_to_y(torch.zeros(4, 5, 5))


def test_quantize() -> None:
    x = torch.tensor([-3.0, 0.4, 0.5, 1.5, 254.6, 300.0])
    assert quantize(x).tolist() == [0.0, 0.0, 0.0, 2.0, 255.0, 255.0]  # round half to even, like torch/numpy


# --- PSNR -------------------------------------------------------------------------------------------------------


def test_psnr_constant_offset_hand_computed() -> None:
    a = torch.full((3, 16, 16), 100.0)
    b = a + 1.0
    expected = 10 * math.log10(255.0**2)  # MSE 1 -> 48.1308 dB
    assert psnr(a, b, y_only=False) == pytest.approx(expected, abs=1e-10)
    assert psnr(a, b, y_only=False) == pytest.approx(48.1308, abs=1e-4)
    # +1 on every channel shifts Y by (65.481 + 128.553 + 24.966) / 255 = 219/255.
    dy = 219.0 / 255.0
    assert psnr(a, b, y_only=True) == pytest.approx(10 * math.log10(255.0**2 / dy**2), abs=1e-10)


def test_psnr_identical_is_inf() -> None:
    a = _image(1)
    assert psnr(a, a.clone()) == float("inf")
    batch = psnr_batch(torch.stack([a, a]), torch.stack([a, _noisy(a, 2)]))
    assert batch.dtype == torch.float64 and batch.shape == (2,)
    assert math.isinf(batch[0].item()) and math.isfinite(batch[1].item())


@pytest.mark.parametrize("crop", [0, 4])
def test_psnr_matches_skimage(crop: int) -> None:
    a = _image(3)
    b = _noisy(a, 4)
    sl = (slice(crop, a.shape[1] - crop), slice(crop, a.shape[2] - crop))
    ref_rgb = peak_signal_noise_ratio(a.numpy()[:, sl[0], sl[1]], b.numpy()[:, sl[0], sl[1]], data_range=255)
    assert psnr(a, b, crop_border=crop, y_only=False) == pytest.approx(ref_rgb, abs=1e-9)
    ref_y = peak_signal_noise_ratio(_y_np(a)[sl], _y_np(b)[sl], data_range=255)
    assert psnr(a, b, crop_border=crop, y_only=True) == pytest.approx(ref_y, abs=1e-9)


def test_psnr_dtype_independent_and_batched_matches_single() -> None:
    a, b = _image(5), _noisy(_image(5), 6)
    assert psnr(a.float(), b.float()) == pytest.approx(psnr(a, b), abs=1e-9)
    assert psnr(a.half(), b.half()) == pytest.approx(psnr(a, b), abs=1e-9)  # integer values are exact in fp16
    c, d = _image(7), _noisy(_image(7), 8)
    batch = psnr_batch(torch.stack([a, c]), torch.stack([b, d]), crop_border=2)
    assert batch[0].item() == pytest.approx(psnr(a, b, crop_border=2), abs=1e-12)
    assert batch[1].item() == pytest.approx(psnr(c, d, crop_border=2), abs=1e-12)


def test_border_crop_ignores_border_errors() -> None:
    a = _image(9)
    b = a.clone()
    b[:, :3, :] = 0  # damage only the top 3 rows
    b[:, :, -2:] = 255  # and the 2 rightmost columns
    assert math.isfinite(psnr(a, b, crop_border=0))
    assert psnr(a, b, crop_border=3) == float("inf")
    assert ssim(a, b, crop_border=3) == pytest.approx(1.0)
    assert math.isfinite(psnr(a, b, crop_border=2))
    with pytest.raises(ValueError):
        psnr(a, b, crop_border=20)


def test_shape_mismatch_rejected() -> None:
    with pytest.raises(ValueError):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))


# --- SSIM -------------------------------------------------------------------------------------------------------


def _sk_ssim(a: np.ndarray, b: np.ndarray, channel_axis: int | None = None) -> float:
    return float(
        structural_similarity(
            a,
            b,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=channel_axis,
        )
    )


@pytest.mark.parametrize("crop", [0, 3])
def test_ssim_y_matches_skimage(crop: int) -> None:
    a = _image(11)
    b = _noisy(a, 12, sigma=15)
    sl = (slice(crop, a.shape[1] - crop), slice(crop, a.shape[2] - crop))
    ref = _sk_ssim(_y_np(a)[sl], _y_np(b)[sl])
    assert ssim(a, b, crop_border=crop, y_only=True) == pytest.approx(ref, abs=1e-10)


def test_ssim_rgb_matches_skimage() -> None:
    a = _image(13, 37, 45)  # odd sizes
    b = _noisy(a, 14, sigma=20)
    ref = _sk_ssim(a.numpy(), b.numpy(), channel_axis=0)
    assert ssim(a, b, y_only=False) == pytest.approx(ref, abs=1e-10)


def test_ssim_properties() -> None:
    a = _image(15)
    assert ssim(a, a.clone()) == pytest.approx(1.0, abs=1e-12)
    mild, strong = _noisy(a, 16, sigma=5), _noisy(a, 16, sigma=30)
    assert ssim(a, strong) < ssim(a, mild) < 1.0
    batch = ssim_batch(torch.stack([a, a]), torch.stack([mild, strong]))
    assert batch[0].item() == pytest.approx(ssim(a, mild), abs=1e-12)
    assert batch[1].item() == pytest.approx(ssim(a, strong), abs=1e-12)
    with pytest.raises(ValueError):
        ssim(torch.zeros(3, 10, 30), torch.zeros(3, 10, 30))  # smaller than the 11x11 window


# --- score ------------------------------------------------------------------------------------------------------


def test_score_quantizes_and_crops() -> None:
    clean = _image(17)
    restored = _noisy(clean, 18, sigma=3) + 0.3  # off-grid values: scoring must see the rounded image
    restored[:, 0, :] = 1000.0  # out of range in the first row: clamped, and cropped away for SR
    s = score(restored, clean, scale=2)
    q = quantize(restored)
    assert set(s) >= {"psnr_y", "ssim_y", "psnr_rgb", "psnr", "ssim"}
    assert s["psnr_y"] == pytest.approx(psnr(q, clean, crop_border=2), abs=1e-12)
    assert s["ssim_y"] == pytest.approx(ssim(q, clean, crop_border=2), abs=1e-12)
    assert s["psnr_rgb"] == pytest.approx(psnr(q, clean, crop_border=2, y_only=False), abs=1e-12)
    assert s["psnr"] == s["psnr_y"] and s["ssim"] == s["ssim_y"]

    # scale 1: no crop by default, so the broken first row counts.
    s1 = score(restored, clean, scale=1)
    assert s1["psnr_y"] == pytest.approx(psnr(q, clean, crop_border=0), abs=1e-12)
    assert s1["psnr_y"] < s["psnr_y"]
    # explicit crop overrides the default
    s1c = score(restored[None], clean[None], scale=1, crop_border=2)
    assert s1c["psnr_y"] == pytest.approx(s["psnr_y"], abs=1e-12)


def test_score_rgb_colour_space() -> None:
    clean = _image(19)
    restored = _noisy(clean, 20, sigma=8)
    s = score(restored, clean, scale=1, color_space="rgb")
    assert s["psnr"] == s["psnr_rgb"]
    assert s["ssim"] == s["ssim_rgb"] == pytest.approx(ssim(restored, clean, y_only=False), abs=1e-12)
    assert score(clean, clean, scale=3)["psnr_y"] == float("inf")
    with pytest.raises(ValueError):
        score(restored, clean, scale=1, color_space="lab")  # type: ignore[arg-type]


# --- conventions: official-python vs matlab (issue 20) ----------------------------------------------------------


def test_rgb_to_y_rounded_is_matlab_rgb2ycbcr_on_uint8() -> None:
    rgb = torch.tensor([[[0.0, 255, 10, 200]], [[0.0, 255, 20, 100]], [[0.0, 255, 30, 50]]])
    y = rgb_to_y(rgb, round_to_uint8=True).flatten().tolist()
    # 16 + (65.481 R + 128.553 G + 24.966 B) / 255 = 16, 235, 31.59..., 122.57... -> nearest integers
    assert y == [16, 235, 32, 123]


def test_rounded_y_psnr_hand_computed() -> None:
    # Grey-ish RGB 100 everywhere, restored 101 on the left half. Float Y differs by 219/255 there; rounded Y
    # differs by exactly 1 (Y(100) = 101.88 -> 102, Y(101) = 102.74 -> 103). After a 2-pixel crop, 14 of 28
    # columns differ: MSE = (219/255)^2 / 2 (official-python) and 1 / 2 (matlab).
    clean = torch.full((3, 32, 32), 100.0)
    restored = clean.clone()
    restored[:, :, :16] = 101.0
    official = score(restored, clean, 2)["psnr_y"]
    matlab = score(restored, clean, 2, convention="matlab")["psnr_y"]
    assert official == pytest.approx(10 * math.log10(255**2 / ((219 / 255) ** 2 / 2)), abs=1e-9)
    assert matlab == pytest.approx(10 * math.log10(255**2 * 2), abs=1e-9)
    assert score(restored, clean, 2, convention="matlab")["psnr_rgb"] == score(restored, clean, 2)["psnr_rgb"]


def test_rounded_y_can_hide_a_difference() -> None:
    # (100, 100, 101) vs (100, 100, 100): float Y differs by 24.966/255; both round to Y = 102.
    clean = torch.full((3, 16, 16), 100.0)
    restored = clean.clone()
    restored[2] = 101.0
    assert score(restored, clean, 2, convention="matlab")["psnr_y"] == math.inf
    assert score(restored, clean, 2)["psnr_y"] == pytest.approx(20 * math.log10(255 / (24.966 / 255)), abs=1e-9)


def test_grey_pair_scored_on_grey_values_under_matlab() -> None:
    # A grey file is repeated to RGB by the reader. official-python scores Y = 16 + 219 g / 255, so every error
    # shrinks by 219/255 and the PSNR rises by 20 log10(255/219) = 1.3219 dB over the grey values' PSNR.
    g = torch.Generator().manual_seed(3)
    grey = torch.randint(0, 256, (1, 40, 36), generator=g).double()
    out = (grey + torch.randint(-9, 10, (1, 40, 36), generator=g)).clamp(0, 255)
    clean_rgb, out_rgb = grey.expand(3, -1, -1), out.expand(3, -1, -1)
    raw = psnr(out, grey, crop_border=3)  # 1-channel inputs are scored as they are
    matlab = score(out_rgb, clean_rgb, 3, convention="matlab", grey=True)
    official = score(out_rgb, clean_rgb, 3, grey=True)  # grey changes nothing here
    assert matlab["psnr_y"] == pytest.approx(raw, abs=1e-9)
    assert matlab["ssim_y"] == pytest.approx(ssim(out, grey, crop_border=3), abs=1e-12)
    assert official["psnr_y"] - matlab["psnr_y"] == pytest.approx(20 * math.log10(255 / 219), abs=1e-9)
    assert 20 * math.log10(255 / 219) == pytest.approx(1.32192, abs=1e-5)
    # without the grey flag an RGB-repeated image is scored on its rounded Y (16 + 219 g / 255, rounded)
    assert score(out_rgb, clean_rgb, 3, convention="matlab")["psnr_y"] != pytest.approx(raw, abs=0.1)


def test_scored_channel_of_grey_rgb_is_the_grey_value() -> None:
    g = torch.arange(256, dtype=torch.float64).reshape(1, 16, 16)
    assert torch.equal(scored_channel(g.expand(3, -1, -1), "matlab", grey=True), g)
    assert torch.equal(scored_channel(g, "matlab", grey=True), g)
    assert torch.allclose(scored_channel(g, "official-python"), 16 + g * 219 / 255, atol=1e-12)
    with pytest.raises(ValueError, match="convention must be one of"):
        scored_channel(g, "matlab-ish")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="convention must be one of"):
        score(g.expand(3, -1, -1), g.expand(3, -1, -1), 2, convention="octave")  # type: ignore[arg-type]
