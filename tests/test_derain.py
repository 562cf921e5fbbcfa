"""The built-in ``derain`` task: synthetic rain streaks."""

from __future__ import annotations

import pytest
import torch

from ipt.plugins.derain import PARAMS, add_rain, ipt_register_tasks, streak_kernels, synthesize_rain


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _clean(b: int = 4, h: int = 64, w: int = 48, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=_gen(123), dtype=dtype) * 200.0


def test_range_shape_dtype() -> None:
    x = _clean()
    y = add_rain(x, _gen(0))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 255
    assert torch.all(y >= x - 1e-4)  # rain only brightens (before the clamp at 255)


def test_seeded_reproducibility() -> None:
    x = _clean()
    assert torch.equal(add_rain(x, _gen(7)), add_rain(x, _gen(7)))
    assert not torch.equal(add_rain(x, _gen(7)), add_rain(x, _gen(8)))


def test_one_draw_per_image() -> None:
    rain = synthesize_rain((3, 64, 64), _gen(1))
    assert rain.shape == (3, 1, 64, 64)
    assert not torch.equal(rain[0], rain[1])


def test_rain_adds_brightness() -> None:
    x = torch.full((4, 3, 48, 48), 100.0)
    y = add_rain(x, _gen(2))
    assert (y.mean(dim=(1, 2, 3)) > x.mean(dim=(1, 2, 3)) + 1.0).all()


def test_rain_layer_is_gray() -> None:
    x = torch.zeros(2, 3, 48, 48)  # peak rain is at most 0.9 * 255: nothing clamps
    y = add_rain(x, _gen(3))
    assert y.max() > 0
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 0], y[:, 2])


def test_streaks_are_near_vertical() -> None:
    rain = synthesize_rain((4, 96, 96), _gen(4))
    gy = (rain[..., 1:, :] - rain[..., :-1, :]).pow(2).mean()
    gx = (rain[..., :, 1:] - rain[..., :, :-1]).pow(2).mean()
    assert gy < 0.5 * gx


def test_kernel_geometry() -> None:
    k = streak_kernels(torch.tensor([21.0]), torch.tensor([0.0]), torch.tensor([0.5]))[0, 0]
    kh, kw = k.shape
    assert kh % 2 == 1 and kw % 2 == 1 and kh > kw
    centre_col = k[:, kw // 2]
    assert centre_col.max() == pytest.approx(1.0)
    assert (centre_col > 0.5).sum() >= 20  # a vertical line of about the requested length
    assert (k[:, kw // 2 + 2 :] < 1e-3).all()  # thin


def test_float64_and_single_image() -> None:
    x = _clean(1, 40, 56, torch.float64)
    y = add_rain(x, _gen(5))
    assert y.dtype == torch.float64 and y.shape == x.shape
    from ipt.registry import TaskSpec

    (spec,) = ipt_register_tasks()
    assert isinstance(spec, TaskSpec) and spec.name == "derain" and spec.scale == 1
    single = spec.degrade(x[0], _gen(5))
    assert single.shape == x[0].shape
    assert torch.equal(single, y[0])


def test_params_documented() -> None:
    (spec,) = ipt_register_tasks()
    assert set(spec.params) == set(PARAMS)
    assert spec.metrics.color_space == "y"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cuda_generator() -> None:
    x = _clean().cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    y = add_rain(x, g)
    assert y.device.type == "cuda" and y.shape == x.shape
    assert torch.equal(y, add_rain(x, torch.Generator(device="cuda").manual_seed(0)))
