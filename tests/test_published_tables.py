"""The MATLAB convention reproduces the published SR bicubic rows and the official LR files (issue 20).

Needs the public Set5/Set14 folders (``HR/`` + ``LR_bicubic/X{s}/``) under ``$IPT_TEST_DATA`` (default
``/work/shared/data``); every test skips when a set is absent. Set5 runs in the default suite; Set14 (14 larger
images, about 1.5 CPU-minutes for all its tests) is marked slow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

from ipt.core.evaluation.evaluate import evaluate_pairs, load_pairs
from ipt.core.data.pairing import detect_layout
from ipt.core.images.io import read_image
from ipt.core.images.resize import imresize
from ipt.registry import get_task

DATA = Path(os.environ.get("IPT_TEST_DATA", "/work/shared/data"))

# Bicubic rows (PSNR-Y dB, SSIM-Y) of the table SR papers reprint (VDSR onwards; EDSR, RCAN, IPT Table 2 context).
SETS = [pytest.param("Set5"), pytest.param("Set14", marks=pytest.mark.slow)]
TABLE = {
    ("Set5", 2): (33.66, 0.9299), ("Set5", 3): (30.39, 0.8682), ("Set5", 4): (28.42, 0.8104),
    ("Set14", 2): (30.24, 0.8688), ("Set14", 3): (27.55, 0.7742), ("Set14", 4): (26.00, 0.7027),
}


def _needs(name: str) -> Path:
    root = DATA / name
    if not (root / "HR").is_dir() or not (root / "LR_bicubic").is_dir():
        pytest.skip(f"{root}: public set not present")
    return root


@pytest.mark.parametrize("name", SETS)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_clean_folder_degradation_is_the_official_lr_files(name: str, scale: int) -> None:
    root = _needs(name)
    spec = get_task(f"sr{scale}")
    pairs = detect_layout(root / "HR", spec).pairs  # a clean folder: LR made on the fly
    assert pairs and all(p.degraded is None for p in pairs)
    differs = 0
    for sample in load_pairs(pairs, spec, convention="matlab"):
        official = read_image(root / "LR_bicubic" / f"X{scale}" / f"{sample.name}x{scale}.png").rgb
        assert torch.equal(sample.degraded, official), sample.name
    for sample in load_pairs(pairs, spec):  # one rounding at the end: a share of the values differ
        official = read_image(root / "LR_bicubic" / f"X{scale}" / f"{sample.name}x{scale}.png").rgb
        differs += int((sample.degraded != official).sum())
    assert differs > 0


@pytest.mark.parametrize(
    "key", [pytest.param(k, id=f"{k[0]}x{k[1]}", marks=[pytest.mark.slow] if k[0] == "Set14" else []) for k in TABLE]
)
def test_bicubic_row_reproduced_under_matlab(key: tuple[str, int]) -> None:
    name, scale = key
    root = _needs(name)
    spec = get_task(f"sr{scale}")
    pairs = detect_layout(root, spec).pairs
    upscale = lambda d: imresize(d, scale=scale)
    res = evaluate_pairs(upscale, spec, load_pairs(pairs, spec, convention="matlab"), baseline=True,
                         convention="matlab")
    psnr, ssim = TABLE[key]
    assert res.baseline is not None and res.convention == "matlab"
    assert res.baseline.psnr_y == pytest.approx(psnr, abs=0.01)
    # Set5 SSIM matches to 4 decimals; Set14 x3/x4 measure -0.0006/-0.0008 (the reprinted Set14 row differs from
    # SRCNN's own by 0.01 dB too, so its Set14 copy likely differed slightly): 0.001 there.
    assert res.baseline.ssim_y == pytest.approx(ssim, abs=0.0005 if name == "Set5" else 0.001)
    assert math.isfinite(res.baseline.psnr_rgb)
