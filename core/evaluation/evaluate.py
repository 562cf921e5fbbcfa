"""``ipt eval``: score a model on a benchmark folder with the paper's conventions (DESIGN.md).

    ipt eval --task sr2 --model MODEL_DIR --data benchmark/Set5 [--baseline] [--json] [--protocol official]
             [--convention official-python|matlab]

Folder layouts are detected by :mod:`ipt.core.data.pairing` (EDSR/Set5 ``HR/`` + ``LR_bicubic/X{s}/``, paired
subfolders, Rain100L ``rain-*``/``norain-*``, or a folder of clean images degraded on the fly by the task's plugin
with a seed derived from ``--seed`` and the file name). SR clean images are cropped to a multiple of the scale.

Scoring: the restored image is clamped and rounded to 8 bit, then PSNR and SSIM on the BT.601 Y channel with a
border crop of ``scale`` pixels for SR (none otherwise), plus PSNR on RGB; the means are over images. ``--baseline``
scores the MATLAB-bicubic upscale of the input (SR) or the degraded input itself (other tasks) the same way.

Conventions (:data:`~ipt.core.evaluation.metrics.CONVENTIONS`): ``official-python`` (default) is the official
IPT/EDSR Python scorer, which the IPT paper's numbers come from. ``matlab`` is the MATLAB scripts behind the
published SR tables: Y rounded to 8 bit, one-channel files scored on their grey values, LR images made on the fly
by ``imresize`` on uint8 (rounded after each pass: the official LR files bit for bit), and the ``--baseline`` Y
scores recomputed with the tables' own recipe (:func:`table_bicubic_y`).
Python use: :func:`evaluate` (a model and a folder) and :func:`evaluate_pairs` (any model or whole-image function
and in-memory pairs). In ``--json`` output a perfect score is written as ``Infinity`` (as Python's json does).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from ipt.core.data.pairing import ImagePair, check_sizes, detect_layout
from ipt.core.evaluation.metrics import (
    DEFAULT_CONVENTION,
    Convention,
    MetricError,
    metric_specs,
    metric_values,
    psnr,
    quantize,
    score,
    scored_channel,
    ssim,
)
from ipt.core.files import check_not_inputs
from ipt.core.images.extra import with_extra_inputs
from ipt.core.images.resize import MATLAB_BICUBIC, bicubic_degrade, imresize, matlab_uint8
from ipt.core.images.channels import grey_plane
from ipt.core.inference.folder import prefetch
from ipt.core.inference.restorer import InferenceOptions
from ipt.core.evaluation.worst_best import GRID_NAME, WorstBest

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.model.ipt import IPT
    from ipt.registry import MetricSpec
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
    "table_bicubic_y",
    "Sample",
]


class Sample(NamedTuple):
    """One evaluation pair on 0-255: ``degraded`` ``(3, h, w)``, ``clean`` ``(3, H, W)``.

    ``grey``: a grey image, whose restored output is reduced to one plane (channel mean, as ``ipt restore`` writes
    grey files) before scoring. ``channels``: colour channels of the clean file (None: 1 when grey, else 3); the
    MATLAB convention scores one-channel files on their grey values. Plain ``(name, degraded, clean)`` or
    ``(name, degraded, clean, grey)`` tuples are accepted where samples are.
    """

    name: str
    degraded: Tensor
    clean: Tensor
    grey: bool = False
    channels: int | None = None

    @property
    def one_channel(self) -> bool:
        """The clean file had one colour channel (MATLAB's ``size(im, 3) == 1``)."""
        return self.channels == 1 if self.channels is not None else bool(self.grey)


class ImageScore(BaseModel):
    """Scores of one image (dB for PSNR; SSIM in [-1, 1])."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    grey: bool = Field(False, description="a grey image: degraded on one plane, restored output made grey")
    metrics: dict[str, float] = Field(default_factory=dict, description="the selected metrics (--metrics)")


class ScoreSummary(BaseModel):
    """Means over images and the per-image scores (``name -> ImageScore``)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    psnr_y: float
    ssim_y: float
    psnr_rgb: float
    metrics: dict[str, float] = Field(default_factory=dict, description="means of the selected metrics")
    per_image: dict[str, ImageScore] = Field(default_factory=dict)

    @classmethod
    def of(cls, per_image: dict[str, ImageScore]) -> "ScoreSummary":
        def mean(vals: list[float]) -> float:
            return math.fsum(vals) / len(vals) if vals else math.nan

        scores = list(per_image.values())
        names = list(scores[0].metrics) if scores else []
        return cls(psnr_y=mean([s.psnr_y for s in scores]), ssim_y=mean([s.ssim_y for s in scores]),
                   psnr_rgb=mean([s.psnr_rgb for s in scores]),
                   metrics={n: mean([s.metrics[n] for s in scores]) for n in names}, per_image=per_image)


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
    convention: Convention = Field(DEFAULT_CONVENTION, description="scoring convention (metrics.CONVENTIONS)")
    tiles: int = Field(..., description="network inputs (48x48 tiles) run over all images")
    seconds: float = Field(..., description="wall time of restoring and scoring (not of loading the model)")
    data: str | None = None
    layout: str | None = None
    seed: int | None = Field(None, description="seed of the on-the-fly degradations (None: stored inputs)")
    options: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict, description="means of the selected metrics")
    metric_info: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per metric: column, higher_is_better, color_space, unit, plugin")
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


def _matlab_bicubic(spec: "TaskSpec") -> bool:
    """The task degrades with MATLAB bicubic ``imresize`` (it declares ``params["kernel"] == MATLAB_BICUBIC``)."""
    return spec.scale > 1 and spec.params.get("kernel") == MATLAB_BICUBIC


def load_pairs(
    pairs: "Iterable[ImagePair]", spec: "TaskSpec", seed: int = 0, convention: Convention = DEFAULT_CONVENTION
) -> Iterator[Sample]:
    """Read each pair lazily: the clean image (modcropped for SR) and the stored or freshly degraded input, and
    whether it is grey. A grey clean image is degraded as grey: the degradation's first plane is kept and
    repeated (noise of the task's sigma on one plane, not three independent ones). Under ``convention="matlab"``
    the LR image of a MATLAB-bicubic SR task is made with per-pass rounding (the official LR files bit for bit)."""
    from ipt.core.images.io import read_image

    for p in pairs:
        loaded = read_image(p.clean)
        clean = _modcrop(loaded.rgb, spec.scale)
        if p.degraded is None and convention == "matlab" and _matlab_bicubic(spec):
            degraded = bicubic_degrade(clean, spec.scale, round_each_pass=True)  # per channel: grey stays grey
        elif p.degraded is None:
            g = torch.Generator().manual_seed(pair_seed(seed, p.name))
            degraded = spec.degrade(clean, g).float()
            if loaded.grey:  # the RGB channels; a task's extra inputs (mask...) follow unchanged
                degraded = torch.cat([degraded[:1].expand(3, -1, -1), degraded[3:]]).contiguous()
        else:  # a task's extra inputs sit beside the stored input: input/photo_mask.png or mask/photo.png
            degraded = with_extra_inputs(Path(p.degraded), read_image(p.degraded).rgb, spec.extra_inputs)
            h, w = degraded.shape[-2:]
            clean = clean[:, : h * spec.scale, : w * spec.scale]
        yield Sample(p.name, degraded, clean, loaded.grey, loaded.channels)


def baseline_image(degraded: Tensor, scale: int, convention: Convention = DEFAULT_CONVENTION) -> Tensor:
    """The reference method's output: MATLAB-compatible bicubic upscaling for SR, the input itself otherwise.

    ``convention="matlab"`` upscales as MATLAB does a uint8 image (rounded after each pass).
    """
    if scale == 1:
        return degraded
    return imresize(degraded.float(), scale=scale, round_each_pass=convention == "matlab")


def table_bicubic_y(clean: Tensor, scale: int, grey: bool = False) -> tuple[Tensor, Tensor]:
    """The bicubic row of the published SR tables: ``(upscaled, reference)``, both ``(1, H, W)`` float64 on 0-255.

    The recipe of the SRCNN demo code (Dong et al., ``demo_SR.m``), which the later tables kept: Y of the 8-bit HR
    image by ``rgb2ycbcr`` (uint8; a grey file is its own Y), ``single(Y)/255``, ``imresize`` by ``1/scale`` and
    back by ``scale`` in floating point (no rounding between), then ``uint8(... * 255)``. It starts from HR and
    does not use stored LR files. Measured on Set5/Set14 x2/x3/x4 (issue 20): PSNR within 0.009 dB of the table,
    SSIM equal to 4 decimals on Set5. ``clean`` is the modcropped ``(3, H, W)`` image (``grey``: the file was grey).
    """
    ref = scored_channel(clean, "matlab", grey)
    low = imresize((ref / 255.0).float(), scale=1.0 / scale)
    return matlab_uint8(imresize(low, scale=scale) * 255.0).to(torch.float64), ref


# -- scoring -------------------------------------------------------------------------------------------------
def _score(restored: Tensor, clean: Tensor, spec: "TaskSpec", sample: Sample, convention: Convention,
           metrics: "Sequence[MetricSpec]" = (), where: str = "") -> ImageScore:
    s = score(restored, clean, spec.scale, color_space=spec.metrics.color_space, crop_border=spec.crop_border,
              convention=convention, grey=sample.one_channel)
    values = metric_values(restored, clean, spec, metrics, where)
    return ImageScore(psnr_y=s["psnr_y"], ssim_y=s["ssim_y"], psnr_rgb=s["psnr_rgb"], grey=sample.grey,
                      metrics=values)


def _baseline_score(sample: Sample, spec: "TaskSpec", convention: Convention,
                    metrics: "Sequence[MetricSpec]" = (), where: str = "") -> ImageScore:
    """Scores of the baseline; under ``matlab`` a MATLAB-bicubic SR task's Y scores follow :func:`table_bicubic_y`
    (its RGB PSNR is that of the per-pass upscale of the input, the tables having no RGB column)."""
    up = baseline_image(sample.degraded[:3], spec.scale, convention)
    base = _score(up, sample.clean, spec, sample, convention, metrics, where)
    if convention != "matlab" or not _matlab_bicubic(spec):
        return base
    up_y, ref_y = table_bicubic_y(sample.clean, spec.scale, sample.one_channel)
    border = spec.crop_border
    return base.model_copy(update={"psnr_y": psnr(up_y, ref_y, border), "ssim_y": ssim(up_y, ref_y, border)})


def metric_info(metrics: "Sequence[MetricSpec]", spec: "TaskSpec") -> dict[str, dict[str, Any]]:
    """What ``EvalResult.metric_info`` records about each selected metric."""
    return {m.name: {"column": m.column(spec.metrics.color_space), "higher_is_better": m.higher_is_better,
                     "color_space": m.space_for(spec.metrics.color_space), "unit": m.unit,
                     "plugin": m.plugin, "distribution": m.distribution, "version": m.version} for m in metrics}


def _task_spec(model: Any, task: "str | TaskSpec") -> "TaskSpec":
    from ipt.core.model.ipt import IPT
    from ipt.registry import get_task

    if not isinstance(task, str):
        return task
    if isinstance(model, IPT):
        return model.spec(task)
    return get_task(task)


def _restored(restorer: Any, fn: Any, pairs: Iterable[Sample | tuple]) -> Iterator[tuple[Sample, Tensor]]:
    """``(sample, restored)`` per sample, restored ``(3, H, W)`` float on 0-255. With a :class:`TaskRestorer`,
    samples are decoded ahead in a thread and tile batches are filled across images
    (:mod:`ipt.core.inference.folder`); a whole-image function runs sample by sample."""
    samples = (Sample(*item) for item in pairs)
    if restorer is None:
        for sample in samples:
            with torch.inference_mode():
                restored = fn(sample.degraded).detach().float().cpu().clamp(0, 255)
            yield sample, restored
        return
    yield from restorer.stream((sample, sample.degraded) for sample in prefetch(samples, 8))


def _as_scored(sample: Sample, restored: Tensor) -> Tensor:
    """The 8-bit restored image as it is scored (made grey for a grey sample); ValueError when its size differs
    from the clean image's."""
    if restored.shape != sample.clean.shape:
        raise ValueError(
            f"{sample.name}: restored image is {tuple(restored.shape)}, clean image {tuple(sample.clean.shape)}"
        )
    if sample.grey:
        restored = grey_plane(restored).expand(3, -1, -1)
    return quantize(restored)


def evaluate_pairs(
    model_or_fn: "IPT | Callable[[Tensor], Tensor]",
    task: "str | TaskSpec",
    pairs: Iterable[Sample | tuple],
    options: InferenceOptions | None = None,
    baseline: bool = False,
    save_dir: str | Path | None = None,
    progress: bool = False,
    total: int | None = None,
    on_image: Callable[[str, ImageScore, ImageScore | None], None] | None = None,
    convention: Convention = DEFAULT_CONVENTION,
    metrics: Sequence[str] | None = None,
) -> EvalResult:
    """Restore and score :class:`Sample` s (or ``(name, degraded, clean[, grey])`` tuples).

    ``model_or_fn`` is an :class:`~ipt.core.model.IPT` (run with the tiling ``options``) or a whole-image function
    ``degraded (3, h, w) -> restored (3, h*s, w*s)`` (run as is; ``tiles`` stays 0). ``task`` gives the scale and
    the metric conventions; ``convention`` the scoring convention (module docstring). ``save_dir`` receives
    ``<name>.png`` per restored image and ``_worst_best_grid.png``, crops of the worst and best images by PSNR-Y
    (:mod:`ipt.core.evaluation.worst_best`). ``on_image`` is called after each image with its scores (and its
    baseline scores). ``metrics`` names registered metrics (hook ``ipt_register_metrics``; default: the task's
    ``MetricConventions.report``); a metric that raises or returns NaN stops the run with
    :class:`~ipt.core.evaluation.metrics.MetricError` naming it and the image. Raises ValueError for duplicate
    names, size mismatches, unscorable images or no images.
    """
    from tqdm import tqdm

    from ipt.core.images.io import write_image
    from ipt.core.inference.restorer import TaskRestorer
    from ipt.core.model.ipt import IPT

    options = options or InferenceOptions()
    spec = _task_spec(model_or_fn, task)
    selected = metric_specs(metrics if metrics is not None else spec.metrics.report)
    restorer = TaskRestorer(model_or_fn, spec.name, options) if isinstance(model_or_fn, IPT) else None
    save = Path(save_dir) if save_dir is not None else None
    per_image: dict[str, ImageScore] = {}
    base_scores: dict[str, ImageScore] = {}
    worst_best = WorstBest()
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc=f"eval {spec.name}", unit="img", disable=not progress or None, file=sys.stderr)
    for sample, network_output in _restored(restorer, model_or_fn, pairs):
        bar.update()
        if sample.name in per_image:
            raise ValueError(f"two samples are named {sample.name!r}")
        restored = _as_scored(sample, network_output)
        try:
            per_image[sample.name] = _score(restored, sample.clean, spec, sample, convention, selected,
                                            f"{sample.name}: ")
            if baseline:
                base_scores[sample.name] = _baseline_score(sample, spec, convention, selected,
                                                           f"{sample.name} (baseline): ")
        except MetricError:
            raise
        except ValueError as exc:  # e.g. an image too small for SSIM's 11x11 window after the border crop
            raise ValueError(f"{sample.name}: cannot be scored: {exc}") from exc
        if save is not None:
            write_image(save / f"{sample.name}.png", restored[:1] if sample.grey else restored)
            worst_best.add(sample.name, per_image[sample.name].psnr_y, sample.degraded[:3], restored, sample.clean)
        if on_image is not None:
            on_image(sample.name, per_image[sample.name], base_scores.get(sample.name))
    bar.close()
    if not per_image:
        raise ValueError(f"no images to evaluate for {spec.name}")
    if save is not None:
        worst_best.save(save / GRID_NAME, spec.name)
    base = None
    if baseline:
        method = "bicubic (MATLAB imresize)" if spec.scale > 1 else "degraded input"
        base = BaselineSummary(method=method, **ScoreSummary.of(base_scores).model_dump())
    return EvalResult(
        task=spec.name,
        n=len(per_image),
        protocol=options.protocol,
        convention=convention,
        tiles=restorer.tiles if restorer is not None else 0,
        seconds=time.perf_counter() - t0,
        options={**options.model_dump(), "resolved_device": str(restorer.device) if restorer else None},
        baseline=base,
        grey_images=sum(s.grey for s in per_image.values()),
        metric_info=metric_info(selected, spec),
        **ScoreSummary.of(per_image).model_dump(),
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
    convention: Convention = DEFAULT_CONVENTION,
    metrics: Sequence[str] | None = None,
) -> EvalResult:
    """Score ``model`` on ``task`` over a benchmark folder (layouts of :mod:`ipt.core.data.pairing`).

    ``options`` (tiling, device, dtype) overrides ``protocol`` when given; ``limit`` keeps the first N pairs (sorted
    by name); ``convention`` is the scoring convention (module docstring). Raises
    :class:`~ipt.registry.PairingError` for unpairable folders or mismatched sizes.
    """
    spec = model.spec(task)
    options = options or InferenceOptions(protocol=protocol)
    layout = detect_layout(data_dir, spec)
    pairs = layout.pairs[:limit] if limit is not None else layout.pairs
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    check_sizes(pairs, spec.scale)
    if save_dir is not None:  # outputs may not replace or join the benchmark's own files
        outputs = [Path(save_dir), *(Path(save_dir) / f"{p.name}.png" for p in pairs)]
        inputs = [Path(data_dir), *(f for p in pairs for f in (p.clean, p.degraded) if f is not None)]
        check_not_inputs(inputs, "--save-dir", writes=outputs, hint="save the restored images outside the benchmark")
    result = evaluate_pairs(
        model, spec, load_pairs(pairs, spec, seed, convention), options=options, baseline=baseline,
        save_dir=save_dir, progress=progress, total=len(pairs), on_image=on_image, convention=convention,
        metrics=metrics,
    )
    return result.model_copy(update={
        "data": str(data_dir), "layout": layout.description, "seed": seed if layout.synthetic else None,
    })
