"""The RESIDE folder layout (``hazy/0001_0.8_0.2.png`` <-> ``clear/0001.png``) and the CIEDE2000 metric.

RESIDE (Li et al., "Benchmarking single-image dehazing and beyond", IEEE TIP 2019) renders each clear image
with several haze settings: the hazy file name is ``<clear id>_<airlight>_<beta>``, so many inputs share one
target. Subfolders ``hazy/`` (or ``haze/``) and ``clear/`` (or ``gt/``, ``GT/``) sit side by side, as in the ITS,
OTS and SOTS packages. The layout is registered with ``ipt_register_dataset_layouts`` and recognised by both
``ipt train --data DIR`` and ``ipt eval --data DIR``.

CIEDE2000 is the mean colour difference (Sharma et al. 2005) between the restored and reference images in
CIELAB, computed by scikit-image (``skimage.color.rgb2lab`` and ``deltaE_ciede2000``); lower is better.
"""

from __future__ import annotations

from pathlib import Path

from ipt.core.data.pairing import list_images, pair_by_key, subfolders
from ipt.registry import DatasetLayout, LayoutMatch, MetricSpec, PairingError, TaskSpec

__all__ = ["find_reside", "reside_key", "ciede2000", "LAYOUT", "METRIC"]

HAZY_DIRS = ("hazy", "haze")
CLEAR_DIRS = ("clear", "gt")


def reside_key(path: Path) -> str:
    """The clear image a hazy file belongs to: ``0001_0.8_0.2`` -> ``0001`` (a name without ``_`` is itself)."""
    return path.stem.split("_", 1)[0]


def find_reside(data: Path, spec: TaskSpec) -> LayoutMatch | None:
    """``hazy/`` + ``clear/`` subfolders of ``data``, several hazy inputs per clear image; ``None`` otherwise."""
    hazy, clear = subfolders(data, HAZY_DIRS), subfolders(data, CLEAR_DIRS)
    if not hazy or not clear:
        return None
    if len(hazy) > 1 or len(clear) > 1:
        raise PairingError(f"{data}: several RESIDE folders ({', '.join(p.name for p in hazy + clear)}); keep one "
                           "hazy/ and one clear/")
    pairs = pair_by_key(list_images(hazy[0]), list_images(clear[0]), reside_key, f"{data}: ", many_per_target=True)
    targets = len({p.clean for p in pairs})
    return LayoutMatch(f"{hazy[0].name}/ + {clear[0].name}/ (RESIDE, {len(pairs)} hazy for {targets} clear)", pairs)


def ciede2000(restored, reference) -> float:  # noqa: ANN001 - (3, H, W) float64 tensors on 0-255
    """Mean CIEDE2000 colour difference of two RGB images ``(3, H, W)`` on the 0-255 scale (lower is better)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    def lab(img):  # noqa: ANN001, ANN202
        return rgb2lab((img.permute(1, 2, 0).cpu().numpy() / 255.0).clip(0.0, 1.0))

    return float(deltaE_ciede2000(lab(restored), lab(reference)).mean())


LAYOUT = DatasetLayout(name="reside", description="hazy/ + clear/ (RESIDE: hazy/0001_0.8_0.2.png <-> clear/0001.png)",
                       find=find_reside)
METRIC = MetricSpec(name="ciede2000", description="mean CIEDE2000 colour difference in CIELAB (scikit-image)",
                    higher_is_better=False, compute=ciede2000, color_space="rgb", label="CIEDE2000")
