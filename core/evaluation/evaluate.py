"""``ipt eval``: score a model on a benchmark folder with the paper's conventions (DESIGN.md).

    ipt eval --task sr2 --model MODEL_DIR --data benchmark/Set5 [--baseline] [--json] [--protocol official]

Folder layouts are detected by :mod:`ipt.core.evaluation.pairing` (EDSR/Set5 ``HR/`` + ``LR_bicubic/X{s}/``, paired
subfolders, Rain100L ``rain-*``/``norain-*``, or a folder of clean images degraded on the fly by the task's plugin
with a seed derived from ``--seed`` and the file name). SR clean images are cropped to a multiple of the scale.

Scoring: the restored image is clamped and rounded to 8 bit, then PSNR and SSIM on the BT.601 Y channel with a
border crop of ``scale`` pixels for SR (none otherwise), plus PSNR on RGB; the means are over images. ``--baseline``
scores the MATLAB-bicubic upscale of the input (SR) or the degraded input itself (other tasks) the same way.
Python use: :func:`evaluate` (a model and a folder) and :func:`evaluate_pairs` (any model or whole-image function
and in-memory pairs). In ``--json`` output a perfect score is written as ``Infinity`` (as Python's json does).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ipt.core.files import check_not_inputs
from ipt.core.inference.restorer import InferenceOptions

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.ipt import IPT
    from ipt.core.evaluation.pairing import ImagePair
    from ipt.registry.spec import TaskSpec

__all__ = [
    "ImageScore",
    "ScoreSummary",
    "EvalResult",
    "evaluate",
    "evaluate_pairs",
    "load_pairs",
    "pair_seed",
    "baseline_image",
]

# (name, degraded (3,h,w), clean (3,H,W)) on 0-255, optionally followed by ``grey`` (bool): a grey image, whose
# restored output is reduced to one plane (channel mean, as ``ipt restore`` writes grey files) before scoring.
Sample = tuple  # tuple[str, Tensor, Tensor] | tuple[str, Tensor, Tensor, bool]


class ImageScore(BaseModel):
    """Scores of one image (dB for PSNR; SSIM in [-1, 1])."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    grey: bool = Field(False, description="a grey image: degraded on one plane, restored output made grey")


class ScoreSummary(BaseModel):
    """Means over images and the per-image scores (``name -> ImageScore``)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    per_image: dict[str, ImageScore] = Field(default_factory=dict)

    @classmethod
    def of(cls, per_image: dict[str, ImageScore]) -> "ScoreSummary":
        def mean(key: str) -> float:
            vals = [getattr(s, key) for s in per_image.values()]
            return math.fsum(vals) / len(vals) if vals else math.nan

        return cls(psnr_y=mean("psnr_y"), ssim_y=mean("ssim_y"), psnr_rgb=mean("psnr_rgb"), per_image=per_image)


class BaselineSummary(ScoreSummary):
    method: str = Field(..., description="bicubic (MATLAB imresize) for SR, the degraded input otherwise")


class EvalResult(BaseModel):
    """The result of one evaluation run (what ``ipt eval --json`` prints); metric means are over images."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    task: str
    n: int
    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    protocol: Literal["paper", "official"]
    tiles: int = Field(..., description="network inputs (48x48 tiles) run over all images")
    seconds: float = Field(..., description="wall time of restoring and scoring (not of loading the model)")
    data: str | None = None
    layout: str | None = None
    seed: int | None = Field(None, description="seed of the on-the-fly degradations (None: stored inputs)")
    options: dict[str, Any] = Field(default_factory=dict)
    per_image: dict[str, ImageScore] = Field(default_factory=dict)
    baseline: BaselineSummary | None = None
    grey_images: int = Field(0, description="how many of the images were grey (degraded and restored as grey)")


# -- loading -------------------------------------------------------------------------------------------------
def pair_seed(seed: int, name: str) -> int:
    """The degradation seed of one image: depends on ``seed`` and the image name only (not on order or --limit)."""
    from ipt.core.data.seeding import derive_seed, text_seed

    return derive_seed(seed, text_seed(name))


def _modcrop(img: Tensor, scale: int) -> Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def load_pairs(pairs: "Iterable[ImagePair]", spec: "TaskSpec", seed: int = 0) -> Iterator[Sample]:
    """Read each pair lazily: the clean image (modcropped for SR) and the stored or freshly degraded input, and
    whether it is grey. A grey clean image is degraded as grey: the degradation's first plane is kept and
    repeated (noise of the task's sigma on one plane, not three independent ones)."""
    from ipt.core.images.io import read_image

    for p in pairs:
        loaded = read_image(p.clean)
        clean = _modcrop(loaded.rgb, spec.scale)
        if p.degraded is None:
            g = torch.Generator().manual_seed(pair_seed(seed, p.name))
            degraded = spec.degrade(clean, g).float()
            if loaded.grey:
                degraded = degraded[:1].expand(3, -1, -1).contiguous()
        else:
            degraded = read_image(p.degraded).rgb
            h, w = degraded.shape[-2:]
            clean = clean[:, : h * spec.scale, : w * spec.scale]
        yield p.name, degraded, clean, loaded.grey


def baseline_image(degraded: Tensor, scale: int) -> Tensor:
    """The reference method's output: MATLAB-compatible bicubic upscaling for SR, the input itself otherwise."""
    if scale == 1:
        return degraded
    from ipt.core.images.resize import imresize

    return imresize(degraded.float(), scale=scale)


# -- scoring -------------------------------------------------------------------------------------------------
def _score(restored: Tensor, clean: Tensor, spec: "TaskSpec", grey: bool = False) -> ImageScore:
    from ipt.core.evaluation.metrics import score

    s = score(restored, clean, spec.scale, color_space=spec.metrics.color_space, crop_border=spec.crop_border)
    return ImageScore(psnr_y=s["psnr_y"], ssim_y=s["ssim_y"], psnr_rgb=s["psnr_rgb"], grey=grey)


def _task_spec(model: Any, task: "str | TaskSpec") -> "TaskSpec":
    from ipt.core.model.ipt import IPT
    from ipt.registry import get_task

    if not isinstance(task, str):
        return task
    if isinstance(model, IPT):
        return model.spec(task)
    return get_task(task)


def _restored(
    restorer: Any, fn: Any, pairs: Iterable[Sample]
) -> Iterator[tuple[str, Tensor, Tensor, tuple, Tensor]]:
    """``(name, degraded, clean, rest of the sample, restored)`` per sample. With a :class:`TaskRestorer`, samples are decoded ahead in
    a thread and tile batches are filled across images (:mod:`ipt.core.inference.folder`); a whole-image function
    runs sample by sample."""
    from ipt.core.inference.folder import prefetch

    if restorer is None:
        for name, degraded, clean, *rest in pairs:
            with torch.inference_mode():
                restored = fn(degraded).detach().float().cpu().clamp(0, 255)
            yield name, degraded, clean, tuple(rest), restored
        return
    items = (((name, degraded, clean, tuple(rest)), degraded) for name, degraded, clean, *rest in prefetch(pairs, 8))
    for (name, degraded, clean, rest), restored in restorer.stream(items):
        yield name, degraded, clean, rest, restored


def evaluate_pairs(
    model_or_fn: "IPT | Callable[[Tensor], Tensor]",
    task: "str | TaskSpec",
    pairs: Iterable[Sample],
    options: InferenceOptions | None = None,
    baseline: bool = False,
    save_dir: str | Path | None = None,
    progress: bool = False,
    total: int | None = None,
    on_image: Callable[[str, ImageScore, ImageScore | None], None] | None = None,
) -> EvalResult:
    """Restore and score ``(name, degraded, clean)`` samples.

    ``model_or_fn`` is an :class:`~ipt.core.model.IPT` (run with the tiling ``options``) or a whole-image function
    ``degraded (3, h, w) -> restored (3, h*s, w*s)`` (run as is; ``tiles`` stays 0). ``task`` gives the scale and
    the metric conventions. ``save_dir`` receives ``<name>.png`` per restored image. ``on_image`` is called after
    each image with its scores (and its baseline scores).
    """
    from tqdm import tqdm

    from ipt.core.images.channels import grey_plane
    from ipt.core.images.io import write_image
    from ipt.core.inference.restorer import TaskRestorer
    from ipt.core.evaluation.metrics import quantize
    from ipt.core.model.ipt import IPT

    options = options or InferenceOptions()
    spec = _task_spec(model_or_fn, task)
    restorer = TaskRestorer(model_or_fn, spec.name, options) if isinstance(model_or_fn, IPT) else None
    save = Path(save_dir) if save_dir is not None else None
    per_image: dict[str, ImageScore] = {}
    base_scores: dict[str, ImageScore] = {}
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"eval {spec.name}", unit="img", disable=not progress or None, file=sys.stderr)
    for name, degraded, clean, rest, restored in _restored(restorer, model_or_fn, pairs):
        bar.update()
        grey = bool(rest and rest[0])
        if name in per_image:
            raise ValueError(f"two samples are named {name!r}")
        if restored.shape != clean.shape:
            raise ValueError(f"{name}: restored image is {tuple(restored.shape)}, clean image {tuple(clean.shape)}")
        if grey:
            restored = grey_plane(restored).expand(3, -1, -1)
        restored = quantize(restored)
        try:
            per_image[name] = _score(restored, clean, spec, grey)
            if baseline:
                base_scores[name] = _score(baseline_image(degraded, spec.scale), clean, spec, grey)
        except ValueError as exc:  # e.g. an image too small for SSIM's 11x11 window after the border crop
            raise ValueError(f"{name}: cannot be scored: {exc}") from exc
        if save is not None:
            write_image(save / f"{name}.png", restored[:1] if grey else restored)
        if on_image is not None:
            on_image(name, per_image[name], base_scores.get(name))
    bar.close()
    if not per_image:
        raise ValueError(f"no images to evaluate for {spec.name}")
    summary = ScoreSummary.of(per_image)
    base = None
    if baseline:
        method = "bicubic (MATLAB imresize)" if spec.scale > 1 else "degraded input"
        base = BaselineSummary(method=method, **ScoreSummary.of(base_scores).model_dump())
    return EvalResult(
        task=spec.name,
        n=len(per_image),
        protocol=options.protocol,
        tiles=restorer.tiles if restorer is not None else 0,
        seconds=time.perf_counter() - t0,
        options={**options.model_dump(), "resolved_device": str(restorer.device) if restorer else None},
        baseline=base,
        grey_images=sum(s.grey for s in per_image.values()),
        **summary.model_dump(),
    )


def evaluate(
    model: "IPT",
    task: str,
    data_dir: str | Path,
    protocol: Literal["paper", "official"] = "paper",
    baseline: bool = False,
    seed: int = 0,
    limit: int | None = None,
    save_dir: str | Path | None = None,
    options: InferenceOptions | None = None,
    progress: bool = False,
    on_image: Callable[[str, ImageScore, ImageScore | None], None] | None = None,
) -> EvalResult:
    """Score ``model`` on ``task`` over a benchmark folder (layouts of :mod:`ipt.core.evaluation.pairing`).

    ``options`` (tiling, device, dtype) overrides ``protocol`` when given; ``limit`` keeps the first N pairs (sorted
    by name). Raises :class:`~ipt.core.pairing.PairingError` for unpairable folders or mismatched sizes.
    """
    from ipt.core.evaluation.pairing import check_sizes, detect_layout

    spec = model.spec(task)
    options = options or InferenceOptions(protocol=protocol)
    layout = detect_layout(data_dir, spec.name, spec.scale, spec.params)
    pairs = layout.pairs[:limit] if limit is not None else layout.pairs
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    check_sizes(pairs, spec.scale)
    if save_dir is not None:  # outputs may not replace or join the benchmark's own files
        outputs = [Path(save_dir), *(Path(save_dir) / f"{p.name}.png" for p in pairs)]
        inputs = [Path(data_dir), *(f for p in pairs for f in (p.clean, p.degraded) if f is not None)]
        check_not_inputs(inputs, "--save-dir", writes=outputs, hint="save the restored images outside the benchmark")
    result = evaluate_pairs(
        model, spec, load_pairs(pairs, spec, seed), options=options, baseline=baseline, save_dir=save_dir,
        progress=progress, total=len(pairs), on_image=on_image,
    )
    return result.model_copy(update={
        "data": str(data_dir), "layout": layout.description, "seed": seed if layout.synthetic else None,
    })
