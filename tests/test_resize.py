"""MATLAB-compatible bicubic imresize: weights, shapes, linearity, batching, dtypes, per-pass uint8 rounding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ipt.core.images.resize import bicubic_degrade, imresize, matlab_uint8


def _cubic_ref(x: float) -> float:
    ax = abs(x)
    if ax <= 1:
        return 1.5 * ax**3 - 2.5 * ax**2 + 1
    if ax <= 2:
        return -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2
    return 0.0


def _matlab_resize_1d(v: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB's imresize for one axis, written out with plain loops (independent of the implementation)."""
    n = len(v)
    out_len = math.ceil(n * scale)
    if scale < 1:
        width = 4 / scale
        kernel = lambda d: scale * _cubic_ref(scale * d)  # noqa: E731
    else:
        width = 4
        kernel = _cubic_ref
    out = np.zeros(out_len)
    for x in range(1, out_len + 1):
        u = x / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        taps = math.ceil(width) + 2
        idx = [left + k for k in range(taps)]
        w = [kernel(u - j) for j in idx]
        s = sum(w)
        acc = 0.0
        for j, wj in zip(idx, w):
            # symmetric padding: 1..n then n..1, repeating
            m = (j - 1) % (2 * n)
            src = m if m < n else 2 * n - 1 - m
            acc += wj / s * v[src]
        out[x - 1] = acc
    return out


def test_constant_image_is_exact() -> None:
    x = torch.full((2, 3, 37, 23), 123.25, dtype=torch.float64)
    for s in (0.5, 1 / 3, 0.25, 0.7, 2.0, 3.0):
        y = imresize(x, s)
        assert torch.allclose(y, torch.full_like(y, 123.25), atol=1e-10), s


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2.0, 3.0])
def test_linear_ramp_stays_linear_in_interior(scale: float) -> None:
    n = 96
    ramp = torch.arange(1, n + 1, dtype=torch.float64)
    x = ramp.view(1, n).repeat(5, 1)
    y = imresize(x, size=(5, math.ceil(n * scale)))[0]
    out_len = y.shape[0]
    xs = torch.arange(1, out_len + 1, dtype=torch.float64)
    expected = xs / scale + 0.5 * (1 - 1 / scale)  # the input coordinate each output samples
    margin = math.ceil(4 * max(1.0, scale) / min(1.0, scale)) + 2  # stay clear of mirrored borders
    assert torch.allclose(y[margin:-margin], expected[margin:-margin], atol=1e-9)


def test_hand_computed_downscale_by_2() -> None:
    v = np.array([3.0, -1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0])
    expected = _matlab_resize_1d(v, 0.5)
    got = imresize(torch.tensor(v).view(1, 8), 0.5)[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    # the explicit weights of output 1 (u = 1.5): taps at -2..5 with mirrored -2,-1,0 -> 3,2,1 (1-based)
    w = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375]) / 2
    src = [2, 1, 0, 0, 1, 2, 3, 4]
    assert got[0] == pytest.approx(float(np.dot(w, v[src])), abs=1e-12)


@pytest.mark.parametrize("n,scale", [(8, 0.5), (11, 1 / 3), (13, 0.75), (9, 0.25), (5, 1.5), (6, 4.0)])
def test_matches_loop_reference(n: int, scale: float) -> None:
    rng = np.random.default_rng(n)
    v = rng.uniform(0, 255, n)
    got = imresize(torch.tensor(v).view(n, 1), scale)[:, 0].numpy()  # a length-1 axis stays constant
    np.testing.assert_allclose(got, _matlab_resize_1d(v, scale), atol=1e-9)


def test_size_uses_out_over_in_as_scale() -> None:
    # MATLAB: with an explicit output size the kernel scale is out/in (here 4/11, not 1/3).
    v = np.random.default_rng(0).uniform(0, 255, 11)
    got = imresize(torch.tensor(v).view(11, 1), size=(4, 1))[:, 0].numpy()
    np.testing.assert_allclose(got, _matlab_resize_1d(v, 4 / 11), atol=1e-9)


def test_hand_computed_upscale_by_2() -> None:
    v = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    # Output 1 samples u = 0.75: taps -1,0,1,2 (1-based) weights cubic(1.75), cubic(0.75), cubic(0.25),
    # cubic(1.25) = -0.0234375, 0.2265625, 0.8671875, -0.0703125; -1 -> 2 and 0 -> 1 after mirroring.
    # So out1 = 1.09375*v1 - 0.09375*v2; out2 (u = 1.25) = -0.0703125*v1 + 0.8671875*v1 + 0.2265625*v2
    # - 0.0234375*v3 (tap 0 -> 1); by symmetry the right end mirrors it.
    o1 = 1.09375 * 1 - 0.09375 * 2
    o2 = (-0.0703125 + 0.8671875) * 1 + 0.2265625 * 2 - 0.0234375 * 3
    o3 = (-0.0234375 + 0.2265625) * 1 + 0.8671875 * 2 - 0.0703125 * 3  # u = 1.75, tap 0 -> 1
    expected = torch.tensor([o1, o2, o3, 2.25, 2.75, 5 - o3, 5 - o2, 5 - o1], dtype=torch.float64)
    got = imresize(v, 2.0)
    assert got.shape == (2, 8)
    assert torch.allclose(got[0], expected, atol=1e-12)
    assert torch.allclose(got[1], expected, atol=1e-12)
    assert got[0, 0].item() == pytest.approx(0.90625)


def test_output_shape_rules() -> None:
    x = torch.zeros(1, 3, 10, 7)
    assert imresize(x, 0.5).shape == (1, 3, 5, 4)  # ceil(3.5) = 4
    assert imresize(x, 1 / 3).shape == (1, 3, 4, 3)
    assert imresize(torch.zeros(3, 48, 48), 1 / 3).shape == (3, 16, 16)  # no float-noise ceil to 17
    assert imresize(x, 2.0).shape == (1, 3, 20, 14)
    assert imresize(x, size=(4, 9)).shape == (1, 3, 4, 9)
    assert imresize(torch.zeros(3, 9, 9), 0.5).shape == (3, 5, 5)
    with pytest.raises(ValueError):
        imresize(x)
    with pytest.raises(ValueError):
        imresize(x, 0.5, size=(3, 3))


def test_batched_equals_per_image() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 24, 20, generator=g) * 255
    y = imresize(x, 0.5)
    for i in range(3):
        assert torch.allclose(y[i], imresize(x[i], 0.5), atol=1e-4)


def test_float64_and_float32_agree() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 30, 18, generator=g, dtype=torch.float64) * 255
    y64 = imresize(x, 0.25)
    assert y64.dtype == torch.float64
    y32 = imresize(x.float(), 0.25)
    assert y32.dtype == torch.float32
    assert torch.allclose(y64.float(), y32, atol=1e-3)


def test_no_rounding_or_clamping_but_degrade_does() -> None:
    x = torch.zeros(1, 3, 8, 8)
    x[..., ::2, :] = 255.0  # stripes make the cubic kernel overshoot
    y = imresize(x, 2.0)
    assert y.max() > 255 or y.min() < 0
    assert not torch.equal(y, y.round())
    lr = bicubic_degrade(torch.rand(2, 3, 12, 12) * 255, 2)
    assert lr.shape == (2, 3, 6, 6)
    assert torch.equal(lr, lr.round()) and lr.min() >= 0 and lr.max() <= 255


def test_antialias_off_is_plain_cubic_interpolation() -> None:
    v = torch.arange(16, dtype=torch.float64).view(1, 16) ** 2
    a = imresize(v, 0.5, antialias=True)
    b = imresize(v, 0.5, antialias=False)
    assert a.shape == b.shape == (1, 8)
    assert not torch.allclose(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    x = torch.rand(2, 3, 33, 47, dtype=torch.float64) * 255
    assert torch.allclose(imresize(x.cuda(), 0.5).cpu(), imresize(x, 0.5), atol=1e-9)


# -- MATLAB uint8 semantics: round after each pass (issue 20) --------------------------------------------------
def _matlab_uint8_ref(v: float) -> int:
    """MATLAB ``uint8(v)``: halves away from zero, saturated."""
    r = math.floor(abs(v) + 0.5) * (1 if v >= 0 else -1)
    return int(min(255, max(0, r)))


def _matlab_resize_u8(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize`` of a 2-D uint8 image, equal scales: rows (dim 1) first, uint8 after each pass."""
    cols = [[_matlab_uint8_ref(v) for v in _matlab_resize_1d(img[:, c].astype(float), scale)]
            for c in range(img.shape[1])]
    mid = np.array(cols, dtype=float).T
    rows = [[_matlab_uint8_ref(v) for v in _matlab_resize_1d(mid[r], scale)] for r in range(mid.shape[0])]
    return np.array(rows, dtype=np.int64)


def _sharp(h: int, w: int, seed: int) -> np.ndarray:
    """3x3 blocks of 0 and 255 and a few mid-tones: over/undershoot in every pass, so rounding and clamping bite."""
    rng = np.random.default_rng(seed)
    img = (rng.integers(0, 2, size=(h // 3 + 1, w // 3 + 1)) * 255).repeat(3, 0).repeat(3, 1)[:h, :w]
    img[rng.integers(0, h, 6), rng.integers(0, w, 6)] = rng.integers(0, 256, 6)
    return img.astype(np.int64)


def test_matlab_uint8_rounds_halves_away_from_zero_and_saturates() -> None:
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 2.4999, 254.5, 255.5, 300.0, -3.0], dtype=torch.float64)
    assert matlab_uint8(x).tolist() == [1, 2, 3, 0, 2, 255, 255, 255, 0]
    assert torch.round(x)[:3].tolist() == [0, 2, 2]  # torch rounds halves to even: not MATLAB


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2.0, 3.0])
def test_round_each_pass_matches_loop_reference(scale: float) -> None:
    img = _sharp(18, 15, 0)
    out = imresize(torch.from_numpy(img).double(), scale=scale, round_each_pass=True)
    assert np.array_equal(out.numpy().astype(np.int64), _matlab_resize_u8(img, scale))


def test_round_each_pass_differs_from_one_rounding_on_sharp_edges() -> None:
    img = torch.from_numpy(_sharp(24, 21, 1)).double()
    per_pass = bicubic_degrade(img, 2, round_each_pass=True)
    once = bicubic_degrade(img, 2)
    assert torch.equal(once, imresize(img, scale=0.5).round().clamp(0, 255))  # default unchanged
    assert (per_pass != once).any()  # the clamp between passes removes the first pass's overshoot
    assert torch.equal(per_pass, per_pass.round()) and per_pass.min() >= 0 and per_pass.max() <= 255


def test_round_each_pass_dtypes_channels_and_unequal_scales() -> None:
    x = torch.from_numpy(_sharp(18, 15, 2)).to(torch.uint8)
    out = imresize(x, scale=0.5, round_each_pass=True)
    assert out.dtype == torch.float32 and out.shape == (9, 8)
    rgb = torch.stack([x, x.flip(0), x.flip(1)]).double()
    out3 = imresize(rgb, scale=1 / 3, round_each_pass=True)
    assert out3.dtype == torch.float64 and out3.shape == (3, 6, 5)
    for c in range(3):  # channels are independent, so a grey image gives the grey of its RGB repeat
        assert torch.equal(out3[c], imresize(rgb[c], scale=1 / 3, round_each_pass=True))
    assert imresize(rgb, size=(7, 30), round_each_pass=True).shape == (3, 7, 30)
    with pytest.raises(ValueError, match="exactly one"):
        imresize(rgb, round_each_pass=True)
