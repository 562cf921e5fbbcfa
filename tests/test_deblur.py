"""The built-in ``deblur`` task: random Gaussian / motion blur kernels."""

from __future__ import annotations

import pytest
import torch

from ipt.plugins.deblur import PARAMS, blur, gaussian_kernel, ipt_register_tasks, motion_kernel, random_kernel


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_kernels_are_normalised_and_non_negative() -> None:
    g = _gen(0)
    sizes = set()
    for _ in range(40):
        k = random_kernel(g)
        assert k.dim() == 2 and k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
        assert k.min() >= 0
        assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
        sizes.add(k.shape[0])
    assert len(sizes) > 3  # sizes vary


@pytest.mark.parametrize(
    "k",
    [
        gaussian_kernel(7, 1.0),
        gaussian_kernel(21, 3.0, 0.8, 33.0),
        motion_kernel(5, 0),
        motion_kernel(13.7, 71.0),
        motion_kernel(21, 135.0),
    ],
)
def test_kernels_sum_to_one(k: torch.Tensor) -> None:
    assert k.min() >= 0
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_motion_kernel_angle_0_is_horizontal_and_90_vertical() -> None:
    k = motion_kernel(9, 0.0)
    c = k.shape[0] // 2
    assert k[c].sum().item() == pytest.approx(1.0, abs=1e-12)  # all mass on the centre row
    assert (k[c] > 0).sum() == 9
    kv = motion_kernel(9, 90.0)
    assert kv[:, c].sum().item() == pytest.approx(1.0, abs=1e-9)
    # 45 degrees goes up-right on screen (rows grow downwards): mass on the anti-diagonal only
    kd = motion_kernel(9, 45.0)
    assert kd[c - 2, c + 2] > 0.05 and kd[c + 2, c - 2] > 0.05
    assert kd[c - 2, c - 2] == 0 and kd[c + 2, c + 2] == 0


def test_anisotropic_gaussian_is_elongated_and_rotates() -> None:
    k = gaussian_kernel(15, 3.0, 0.8, 0.0)
    c = 7
    assert k[c, c + 3] > 10 * k[c + 3, c]  # wide along x
    k90 = gaussian_kernel(15, 3.0, 0.8, 90.0)
    assert torch.allclose(k90, k.T, atol=1e-12)


def test_blur_of_constant_is_constant() -> None:
    x = torch.full((6, 3, 40, 40), 77.5, dtype=torch.float64)
    y = blur(x, _gen(1), noise_sigma=None)
    assert torch.allclose(y, x, atol=1e-9)


def test_output_range_shape_and_reproducibility() -> None:
    x = torch.rand(5, 3, 48, 48, generator=_gen(9)) * 255
    y = blur(x, _gen(3))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 255
    assert torch.equal(y, blur(x, _gen(3)))
    assert not torch.equal(y, blur(x, _gen(4)))
    assert (y - x).abs().mean() > 1.0  # it does blur


def test_noise_is_small() -> None:
    x = torch.full((4, 3, 48, 48), 128.0)
    d = blur(x, _gen(5)) - x
    assert d.std() < 3.0


def test_blur_matches_direct_convolution() -> None:
    # A single image: padding + flipped grouped conv must equal a plain reflect-padded convolution.
    x = torch.rand(1, 3, 32, 32, generator=_gen(2), dtype=torch.float64) * 255
    k = random_kernel(_gen(11))
    y = blur(x, _gen(11), noise_sigma=None)
    p = k.shape[0] // 2
    xp = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect")
    ref = torch.nn.functional.conv2d(xp, k.flip(-1, -2).expand(3, 1, -1, -1), groups=3)
    assert torch.allclose(y, ref.clamp(0, 255), atol=1e-9)


def test_task_spec() -> None:
    (spec,) = ipt_register_tasks()
    assert spec.name == "deblur" and spec.scale == 1
    assert set(spec.params) == set(PARAMS)
    x = torch.rand(3, 24, 24, dtype=torch.float64) * 255
    assert spec.degrade(x, _gen(0)).shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_cuda_generator() -> None:
    x = (torch.rand(2, 3, 48, 48) * 255).cuda()
    y = blur(x, torch.Generator(device="cuda").manual_seed(0))
    assert y.device.type == "cuda" and y.shape == x.shape
