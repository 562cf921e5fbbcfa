"""The bundled model on saturated colours the training photos rarely show (issue 17, shared/cases/21).

Case 21 is one instance (a green leaf, sr2): the 0.1 model shifted it by -6 levels in green/blue and drew a lattice
at the 6-pixel period (x2 image of the body's 3-pixel patch tokens). The kind is "colours outside the training
photos", so this checks several saturated hues, SR at every scale and denoising, each against its baseline
(MATLAB bicubic for SR, the degraded input for denoising):

* PSNR-Y at least the baseline's (never worse than doing nothing);
* mean error per channel within 1 level (no colour cast);
* no peak at the patch-token period in the error spectrum: the magnitude at the period (x scale) is compared with
  the median magnitude of its neighbours on the same spectrum row (a lattice is a narrow spike; plain texture
  error is broad), along x and y.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ipt.core.checkpoints.bundled import bundled_model_dir
from ipt.core.evaluation.metrics import psnr
from ipt.core.images.resize import imresize
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.model.ipt import IPT

# (base RGB, texture weight per channel): strongly saturated hues, one channel near 0 or near 255
HUES = {
    "green": ((90, 180, 12), (0.5, 1.0, 0.15)),
    "red": ((200, 25, 30), (1.0, 0.3, 0.3)),
    "blue": ((20, 40, 190), (0.2, 0.4, 1.0)),
    "yellow": ((225, 205, 15), (0.8, 0.8, 0.1)),
}


def saturated_texture(base: tuple[int, int, int], weight: tuple[float, float, float], h: int, w: int,
                      seed: int = 0) -> torch.Tensor:
    """A smooth saturated texture with thin dark veins, ``(3, h, w)`` float on 0-255 (integer levels)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(float)
    wave = 30 * np.sin(x / 23.0 + y / 41.0) + 20 * np.sin(y / 17.0)
    coarse = rng.normal(0, 1, (h // 8 + 1, w // 8 + 1))
    tex = torch.nn.functional.interpolate(torch.tensor(coarse)[None, None], size=(h, w), mode="bicubic",
                                          align_corners=False)[0, 0].numpy() * 20
    veins = (np.sin((x * 0.8 + y * 0.6) / 6.0) > 0.93) * -50.0
    img = np.stack([b + (wave + tex + veins) * k for b, k in zip(base, weight)], 0)
    return torch.from_numpy(np.clip(img, 0, 255).round()).float()


def lattice_ratio(err: np.ndarray, period: int) -> tuple[float, float]:
    """Spectral magnitude of ``err`` (H, W) at ``period`` pixels along x and y, over the median magnitude of the
    neighbouring frequencies on the same row/column (+-2..8 bins)."""
    e = err - err.mean()
    spec = np.abs(np.fft.fft2(e))
    out = []
    for axis, n in ((1, e.shape[1]), (0, e.shape[0])):
        line = spec[0, :] if axis == 1 else spec[:, 0]
        k = round(n / period)
        around = np.r_[line[k - 8:k - 1], line[k + 2:k + 9]]
        out.append(float(line[k] / np.median(around)))
    return out[0], out[1]


# Lattice threshold: plain MATLAB-bicubic error on these textures reaches 6.0 at the same frequencies (texture, not
# lattice); the 0.1 model's lattice measured 8-15 on every hue and task.
MAX_LATTICE = 8.0

# Where the bundled model (v2, model card) still misses the targets, measured: the test is an expected failure
# there and turns into an error (strict) as soon as a better model meets it, so this list cannot go stale.
KNOWN_GAPS = {
    ("blue", "sr2"): "PSNR-Y 43.10 vs bicubic 43.17",
    ("blue", "sr3"): "9-px lattice 10.8 in blue",
    ("yellow", "sr4"): "mean error -1.06 levels in blue",
    **{(h, "denoise30"): "mean error 2-5 levels per channel (clipped noise near 0/255 is not undone)" for h in HUES},
}


def _gap(hue: str, task: str) -> pytest.MarkDecorator | tuple:
    reason = KNOWN_GAPS.get((hue, task))
    return pytest.mark.xfail(strict=True, reason=reason) if reason else ()


@pytest.fixture(scope="module")
def bundled() -> IPT:
    return IPT.from_pretrained(bundled_model_dir()).eval()


def y_psnr(a: torch.Tensor, b: torch.Tensor, border: int) -> float:
    return psnr(a, b, crop_border=border, y_only=True)


@pytest.mark.parametrize("hue,task,scale", [
    pytest.param(h, t, s, marks=_gap(h, t), id=f"{t}-{h}")
    for t, s in [("sr2", 2), ("sr3", 3), ("sr4", 4), ("denoise30", 1)] for h in HUES
])
def test_saturated_colours_no_cast_no_lattice_never_below_baseline(bundled: IPT, hue: str, task: str,
                                                                   scale: int) -> None:
    base, weight = HUES[hue]
    h = w = 72 * scale if scale > 1 else 144
    clean = saturated_texture(base, weight, h, w, seed=scale)
    if scale > 1:
        degraded = imresize(clean[None], 1 / scale).round().clamp(0, 255)[0]
        baseline = imresize(degraded[None], scale).round().clamp(0, 255)[0]
    else:
        gen = torch.Generator().manual_seed(0)
        degraded = bundled.spec(task).degrade(clean[None], gen)[0].float()
        baseline = degraded
    out = TaskRestorer(bundled, task, InferenceOptions(device="cpu"))(degraded).round()
    border = scale
    assert y_psnr(out, clean, border) >= y_psnr(baseline, clean, border), f"{hue} {task}: worse than its baseline"
    d = (out - clean)[:, border:h - border, border:w - border].numpy()
    cast = d.mean(axis=(1, 2))
    assert np.abs(cast).max() <= 1.0, f"{hue} {task}: mean error per channel {cast.round(2)} levels"
    period = 3 * scale
    for c in range(3):
        rx, ry = lattice_ratio(d[c], period)
        assert max(rx, ry) <= MAX_LATTICE, f"{hue} {task}: {period}-px lattice in channel {c}: x {rx:.1f}, y {ry:.1f}"


def test_lattice_ratio_finds_a_planted_lattice() -> None:
    """The lattice measure itself: a 6-pixel grid of 2 levels on noise is a spike; the noise alone is not."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 2, (144, 144))
    grid = 2.0 * (np.arange(144) % 6 == 0)[None, :] + 2.0 * (np.arange(144) % 6 == 0)[:, None]
    assert min(lattice_ratio(noise + grid, 6)) > 10
    assert max(lattice_ratio(noise, 6)) < 4


def smooth_saturated(h: int, w: int, seed: int = 1) -> torch.Tensor:
    """A very smooth magenta texture with green near 0 (bicubic alone is above 50 dB on it), ``(3, h, w)`` 0-255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(float)
    base = np.stack([200 + 30 * np.sin(x / 41.0), 20 + 15 * np.sin(y / 29.0), 150 + 40 * np.sin((x + y) / 53.0)])
    coarse = torch.tensor(rng.normal(0, 1, (h // 16 + 1, w // 16 + 1)))[None, None]
    tex = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0, 0].numpy()
    img = base + 12 * tex[None] * np.array([1.0, 0.2, 0.8])[:, None, None]
    return torch.from_numpy(np.clip(img, 0, 255).round()).float()


@pytest.mark.xfail(strict=True, reason="v2: PSNR-Y 49.70 vs bicubic 60.30 (its error floor near 48-50 dB is "
                   "above what bicubic reaches on very smooth content)")
def test_very_smooth_saturated_content_sr4_not_below_bicubic(bundled: IPT) -> None:
    """Another instance of case 21's kind: content so smooth that bicubic is nearly exact."""
    clean = smooth_saturated(240, 360)
    degraded = imresize(clean[None], 1 / 4).round().clamp(0, 255)[0]
    baseline = imresize(degraded[None], 4).round().clamp(0, 255)[0]
    out = TaskRestorer(bundled, "sr4", InferenceOptions(device="cpu"))(degraded).round()
    assert y_psnr(out, clean, 4) >= y_psnr(baseline, clean, 4)
