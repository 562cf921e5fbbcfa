"""Tests of the dehaze plugin: the framework's plugin kit, plus what is specific to haze."""

from __future__ import annotations

import math

import torch

from ipt_plugin_dehaze import dehaze_task
from ipt_plugin_dehaze.haze import PARAMS, add_haze, depth_map, scatter


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_plugin_passes_the_ipt_kit(ipt_task_checker) -> None:  # noqa: ANN001 - pytest fixture
    # Discovery through our entry point, spec, seeded degrade, range/shape, model shapes, gradients, save/load.
    ipt_task_checker("dehaze", distribution="ipt-plugin-dehaze")


def test_spec() -> None:
    spec = dehaze_task()
    assert (spec.name, spec.scale, spec.metrics.color_space, spec.crop_border) == ("dehaze", 1, "rgb", 0)


def test_scattering_model_by_hand() -> None:
    # J = 100, A = 200, beta = 1, d = 0.5: t = e^-0.5, I = 100 t + 200 (1 - t).
    t = math.exp(-0.5)
    out = scatter(torch.tensor(100.0), torch.tensor(0.5), torch.tensor(1.0), torch.tensor(200.0))
    assert abs(float(out) - (100 * t + 200 * (1 - t))) < 1e-4
    # No depth, no haze; infinite depth, only airlight.
    assert float(scatter(torch.tensor(80.0), torch.tensor(0.0), torch.tensor(1.5), torch.tensor(230.0))) == 80.0
    far = scatter(torch.tensor(80.0), torch.tensor(50.0), torch.tensor(1.0), torch.tensor(230.0))
    assert abs(float(far) - 230) < 1e-3


def test_depth_spans_unit_interval_and_is_smooth() -> None:
    d = depth_map(4, 64, 80, _gen(0))
    assert d.shape == (4, 1, 64, 80)
    assert torch.allclose(d.amin(dim=(-2, -1)), torch.zeros(4, 1))
    assert torch.allclose(d.amax(dim=(-2, -1)), torch.ones(4, 1))
    # Low-frequency: neighbouring pixels differ far less than the full range (noise would jump by ~0.3).
    assert (d[..., 1:, :] - d[..., :-1, :]).abs().max() < 0.1
    assert (d[..., 1:] - d[..., :-1]).abs().max() < 0.1
    assert not torch.equal(d[0], d[1])  # one draw per image


def test_black_image_shows_the_airlight() -> None:
    # J = 0: I = A (1 - t) per channel, so every channel ratio is the airlight tint and I <= A <= 255.
    hazy = add_haze(torch.zeros(3, 3, 48, 48), _gen(1))
    lo, hi = PARAMS["airlight"]
    brightest = hazy.amax(dim=(-2, -1))  # at the farthest point: A (1 - exp(-beta))
    assert (brightest <= 255 * hi * (1 + PARAMS["tint"]) * (1 - math.exp(-PARAMS["beta"][1])) + 1e-3).all()
    assert (brightest >= 255 * lo * (1 - PARAMS["tint"]) * (1 - math.exp(-PARAMS["beta"][0])) - 1e-3).all()
    ratio = hazy[:, 0] / hazy[:, 1].clamp_min(1e-6)
    far = hazy[:, 1] > 20  # where the ratio is well defined it is constant: one airlight colour per image
    for i in range(3):
        r = ratio[i][far[i]]
        assert r.numel() > 0 and (r.max() - r.min()) < 1e-3


def test_haze_pulls_towards_the_airlight() -> None:
    # Each output pixel lies between the clean value and the airlight (a convex combination).
    clean = torch.rand(2, 3, 48, 48, generator=_gen(5)) * 255
    hazy = add_haze(clean, _gen(6))
    black = add_haze(torch.zeros_like(clean), _gen(6))  # same seed: same depth, beta, A -> black = A (1 - t)
    white_ish = add_haze(torch.full_like(clean, 255.0), _gen(6))
    t = (white_ish - black) / 255.0  # I(255) - I(0) = 255 t
    assert torch.allclose(hazy, clean * t + black, atol=1e-3)
    assert (t > math.exp(-PARAMS["beta"][1]) - 1e-4).all() and (t <= 1 + 1e-5).all()
    assert (t.amax(dim=(-2, -1)) > 0.999).all()  # the nearest point (d = 0) is clear


def test_dtype_and_device_follow_the_input() -> None:
    x = torch.rand(1, 3, 32, 40, dtype=torch.float64) * 255
    assert add_haze(x, _gen(0)).dtype == torch.float64


# -- the RESIDE layout and CIEDE2000 -----------------------------------------------------------------------------
def test_reside_pairs_many_hazy_per_clear(tmp_path) -> None:  # noqa: ANN001
    import pytest
    from ipt.core.images.io import write_image
    from ipt.registry import PairingError

    from ipt_plugin_dehaze.reside import find_reside

    img = torch.full((3, 16, 16), 100.0)
    for name in ("0001", "0002"):
        write_image(tmp_path / "clear" / f"{name}.png", img)
    for name in ("0001_0.8_0.2", "0001_1_0.16", "0002_0.9_0.08"):
        write_image(tmp_path / "hazy" / f"{name}.png", img + 50)
    match = find_reside(tmp_path, dehaze_task())
    assert [(p.name, p.clean.name) for p in match.pairs] == [
        ("0001_0.8_0.2", "0001.png"), ("0001_1_0.16", "0001.png"), ("0002_0.9_0.08", "0002.png")]
    assert find_reside(tmp_path / "hazy", dehaze_task()) is None  # no hazy/ + clear/ inside: not RESIDE
    write_image(tmp_path / "hazy" / "0003_0.8_0.2.png", img)
    with pytest.raises(PairingError, match="inputs without a target: 0003_0.8_0.2.png"):
        find_reside(tmp_path, dehaze_task())


def test_ciede2000_of_greys_is_the_lightness_difference() -> None:
    # Two greys with L* = 45 and 55: mean L* 50, so S_L = 1 and CIEDE2000 = |dL*| = 10 (Sharma et al. 2005, eq. 4).
    from skimage.color import lab2rgb

    from ipt_plugin_dehaze.reside import ciede2000

    def grey(lightness: float) -> torch.Tensor:
        rgb = lab2rgb([[[lightness, 0.0, 0.0]]])[0, 0] * 255.0
        return torch.tensor(rgb, dtype=torch.float64).view(3, 1, 1).expand(3, 8, 8)

    assert abs(ciede2000(grey(45.0), grey(55.0)) - 10.0) < 1e-3
    assert ciede2000(grey(50.0), grey(50.0)) == 0.0
