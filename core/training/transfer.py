"""``ipt transfer``: the paper's transfer experiment to unseen noise levels (§4.4, Table 4).

    ipt transfer --model MODEL_DIR [--sigmas 10,30,50,70] [--steps 200] [--out runs/transfer]

The model must hold at least one ``denoise<sigma>`` task (the paper's pre-training has ``denoise30`` and
``denoise50``). For every noise level ``sigma`` of ``--sigmas`` three rows are scored:

* **input**: the noisy image itself against the clean one;
* **zero-shot**: no training at this level. An unseen ``sigma`` gets a task ``denoise<sigma>`` whose head, tail and
  task embedding are copies of those of the *nearest* trained level (``|sigma - s|`` smallest; a tie goes to the
  lower ``s``), e.g. ``denoise10 <- denoise30`` and ``denoise70 <- denoise50``; that is numerically the same as
  running the nearest task on the ``sigma``-noisy input. A trained level is scored with its own task.
* **fine-tuned**: that initialisation (the paper: "we use the heads and tails for image denoising tasks as the
  pre-trained model") is fine-tuned for ``--steps`` optimizer steps on ``sigma``-noisy crops of the training photos
  (or ``--data``) with :func:`ipt.core.train.train` (``--init-from``, fine-tuning lr 2e-5 unless ``--lr``; L1 loss
  unless ``--contrastive-weight``), then scored. Levels the model was trained on are only fine-tuned with
  ``--finetune-trained`` (their cell is empty otherwise: the paper's Table 4 has only 10 and 70).

Evaluation images: the held-out built-in photos (``coffee``, ``flower``; :func:`ipt.core.photos.heldout_photos`) or
the images of ``--eval-data DIR``, centre-cropped to ``--eval-size`` px (192 by default, 25 tiles of 48 px each:
fast on a CPU; ``none`` scores whole images). The noise comes from the task's plugin with the seed
:func:`ipt.core.evaluate.pair_seed` ``(--seed, image name)`` -- the same noise ``ipt eval`` adds to a folder of clean
images. Scores follow :mod:`ipt.core.evaluation.evaluate` (8-bit outputs, PSNR/SSIM on BT.601 Y, RGB PSNR; means over images).

Outputs in ``--out``: ``transfer.md`` (the Table-4-style markdown table, also printed), ``transfer.json`` (every
number and the settings), ``transfer.png`` (PSNR vs sigma for the three rows); with ``--save-images``,
``images/<row>/denoise<sigma>/<name>.png``; with ``--keep-runs``, the fine-tuning runs in ``runs/denoise<sigma>``
(otherwise they go to a temporary folder that is deleted).

Python use: :func:`run_transfer` (keyword arguments = the flags) returns a :class:`TransferResult`.
"""

from __future__ import annotations

import copy
import math
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import Tensor

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.pretrained import read_config
from ipt.core.evaluation.evaluate import ScoreSummary, evaluate_pairs, pair_seed
from ipt.core.files import atomic_write_file, atomic_write_text
from ipt.core.images.io import list_images, read_image, write_image
from ipt.core.images.photos import heldout_photos
from ipt.core.inference.restorer import InferenceOptions
from ipt.core.model.ipt import IPT
from ipt.core.training.config import FINETUNE_LR, TrainConfig
from ipt.core.training.run import train
from ipt.registry import get_task

__all__ = [
    "SigmaResult",
    "TransferConfig",
    "TransferResult",
    "add_transfer_task",
    "denoise_levels",
    "format_table",
    "load_eval_images",
    "nearest_level",
    "noisy_samples",
    "plot_transfer",
    "run_transfer",
    "transfer",
]

DENOISE_RE = re.compile(r"^denoise([1-9][0-9]{0,2})$")
ROWS = ("input", "zero_shot", "fine_tuned")
ROW_LABELS = {"input": "input", "zero_shot": "zero-shot", "fine_tuned": "fine-tuned"}
Sample = tuple[str, Tensor, Tensor]  # (name, noisy (3,H,W), clean (3,H,W)) on 0-255


class TransferConfig(BaseModel):
    """Options of the transfer experiment (the flags of ``ipt transfer``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: Path | None = Field(
        None, description="Model directory with denoise<sigma> task(s) (none = the bundled model)"
    )
    sigmas: list[int] = Field([10, 30, 50, 70], min_length=1, description="Noise levels to score (0-255 scale)")
    steps: int = Field(200, ge=1, description="Fine-tuning steps per noise level")
    batch_size: int = Field(8, ge=1, description="Fine-tuning batch size (48x48 crops)")
    lr: float | None = Field(None, gt=0, description="Fine-tuning learning rate (none = the trainer's 2e-5)")
    contrastive_weight: float = Field(0.0, ge=0, description="lambda of the contrastive loss while fine-tuning")
    finetune: bool = Field(True, description="Fine-tune (--no-finetune: input and zero-shot rows only)")
    finetune_trained: bool = Field(False, description="Also fine-tune at the levels the model was trained on")
    data: str | None = Field(None, description="Fine-tuning images: folder or datasets name (none = built-in photos)")
    eval_data: Path | None = Field(None, description="Folder of clean evaluation images (none = held-out photos)")
    eval_size: int | None = Field(192, ge=8, description="Centre-crop evaluation images to this size (none = whole)")
    seed: int = Field(0, description="Seed of the evaluation noise and of fine-tuning")
    out: Path = Field(Path("runs/transfer"), description="Output folder (transfer.md/.json/.png)")
    keep_runs: bool = Field(False, description="Keep the fine-tuning runs in OUT/runs/denoise<sigma>")
    save_images: bool = Field(False, description="Write restored images to OUT/images/<row>/denoise<sigma>/")
    show_ssim: bool = Field(False, description="Show SSIM next to PSNR in the table")
    progress: bool = Field(True, description="Progress bars")

    @field_validator("sigmas")
    @classmethod
    def _check_sigmas(cls, v: list[int]) -> list[int]:
        bad = [s for s in v if not 1 <= s <= 255]
        if bad:
            raise ValueError(f"noise level {bad[0]} out of range: use 1..255 (0-255 scale)")
        return sorted(set(v))


class SigmaResult(BaseModel):
    """The three rows at one noise level (``fine_tuned`` is None where no fine-tuning ran)."""

    model_config = ConfigDict(ser_json_inf_nan="constants")

    sigma: int
    trained: bool = Field(..., description="the model was pre-trained at this level")
    source_task: str = Field(..., description="task whose head/tail/embedding the zero-shot row uses")
    input: ScoreSummary
    zero_shot: ScoreSummary
    fine_tuned: ScoreSummary | None = None
    finetune_seconds: float | None = None


class TransferResult(BaseModel):
    """What ``transfer.json`` holds."""

    model_config = ConfigDict(ser_json_inf_nan="constants", protected_namespaces=())

    model: str
    model_tasks: list[str]
    settings: dict[str, Any]
    eval_images: list[str]
    eval_size: int | None
    results: list[SigmaResult]
    seconds: float

    def row(self, name: str) -> dict[int, ScoreSummary | None]:
        return {r.sigma: getattr(r, name) for r in self.results}


# -- pieces -----------------------------------------------------------------------------------------------------
def denoise_levels(task_names: Sequence[str]) -> dict[int, str]:
    """``{sigma: task name}`` of the ``denoise<sigma>`` tasks among ``task_names``."""
    return {int(m.group(1)): t for t in task_names if (m := DENOISE_RE.match(t))}


def nearest_level(sigma: int, trained: Sequence[int]) -> int:
    """The trained level closest to ``sigma`` (a tie goes to the lower level)."""
    if not trained:
        raise ValueError("no trained noise level to transfer from")
    return min(trained, key=lambda s: (abs(s - sigma), s))


def add_transfer_task(model: IPT, sigma: int, source: str) -> str:
    """Give ``model`` the task ``denoise<sigma>`` initialised as a copy of task ``source`` (head, tail, embedding)."""
    name = f"denoise{sigma}"
    model.add_task(name, embed_init=source)
    # strict loads: the new parts have exactly the source's structure (same plugin family, scale 1)
    model.heads[name].load_state_dict(model.heads[source].state_dict())
    model.tails[name].load_state_dict(model.tails[source].state_dict())
    return name


def _centre_crop(img: Tensor, size: int | None) -> Tensor:
    if size is None:
        return img
    h, w = img.shape[-2:]
    th, tw = min(size, h), min(size, w)
    top, left = (h - th) // 2, (w - tw) // 2
    return img[..., top : top + th, left : left + tw]


def load_eval_images(eval_data: str | Path | None = None, eval_size: int | None = 192) -> list[tuple[str, Tensor]]:
    """``(name, clean (3,H,W) on 0-255)``: the held-out photos or the images of ``eval_data``, centre-cropped."""
    if eval_data is None:
        paths = heldout_photos()
    else:
        folder = Path(eval_data)
        if not folder.is_dir():
            raise FileNotFoundError(f"--eval-data {folder}: not a folder")
        paths = list_images(folder)
        if not paths:
            raise ValueError(f"--eval-data {folder}: no images (png, jpg, webp, tif, bmp) in it")
    images = []
    names: set[str] = set()
    for p in paths:
        if p.stem in names:
            raise ValueError(f"--eval-data: two images are named {p.stem!r}")
        names.add(p.stem)
        images.append((p.stem, _centre_crop(read_image(p).rgb, eval_size).contiguous()))
    return images


def noisy_samples(images: Sequence[tuple[str, Tensor]], sigma: int, seed: int = 0) -> list[Sample]:
    """``(name, noisy, clean)`` with the ``denoise<sigma>`` plugin's noise, seeded by ``pair_seed(seed, name)``."""
    spec = get_task(f"denoise{sigma}")
    out = []
    for name, clean in images:
        g = torch.Generator().manual_seed(pair_seed(seed, name))
        out.append((name, spec.degrade(clean, g).float(), clean))
    return out


def _finetune(init_dir: Path, task: str, cfg: TransferConfig, options: InferenceOptions, run_dir: Path) -> Path:
    """Fine-tune ``task`` of the model in ``init_dir`` (body kept, other tasks dropped); the final model dir."""
    if run_dir.exists():  # our own earlier run of the same level (--keep-runs): start it afresh
        shutil.rmtree(run_dir)
    tc = TrainConfig(
        tasks=[task], init_from=init_dir, max_steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
        contrastive_weight=cfg.contrastive_weight, data=cfg.data, seed=cfg.seed, output_dir=run_dir,
        val_every=0, save_every=cfg.steps, keep_last=1, log_every=max(1, min(10, cfg.steps)),
        cpu=options.device == "cpu", progress=cfg.progress,
    )
    return train(tc)


def _evaluate(model: IPT, task: str, samples: list[Sample], options: InferenceOptions, baseline: bool,
              save_dir: Path | None, progress: bool) -> Any:
    return evaluate_pairs(model, task, samples, options=options, baseline=baseline, save_dir=save_dir,
                          progress=progress, total=len(samples))


def _summary(result: Any) -> ScoreSummary:
    return ScoreSummary(psnr_y=result.psnr_y, ssim_y=result.ssim_y, psnr_rgb=result.psnr_rgb,
                        per_image=result.per_image)


def _say(message: str) -> None:
    print(f"[ipt transfer] {message}", file=sys.stderr, flush=True)


# -- the experiment -----------------------------------------------------------------------------------------------
def _open_model(cfg: TransferConfig) -> tuple[Path, list[str], dict[int, str], IPT]:
    """The model directory, all its task names, its denoise levels and the model with those tasks only."""
    model_dir = resolve_model_dir(cfg.model)
    if not model_dir.exists():
        raise FileNotFoundError(f"{model_dir}: model directory not found")
    all_tasks = [t.name for t in read_config(model_dir).tasks]
    levels = denoise_levels(all_tasks)
    if not levels:
        raise ValueError(
            f"{model_dir}: the model has no denoise<sigma> task (its tasks: {', '.join(all_tasks) or 'none'}); "
            "the transfer experiment needs a model pre-trained on denoising, e.g. --tasks denoise30,denoise50"
        )
    base = IPT.from_pretrained(model_dir, tasks=list(levels.values())).eval()
    return model_dir, all_tasks, levels, base


@dataclass
class _Experiment:
    """What every noise level shares."""

    cfg: TransferConfig
    options: InferenceOptions
    model_dir: Path
    levels: dict[int, str]
    base: IPT
    images: list[tuple[str, Tensor]]
    out: Path
    scratch: Path

    def images_dir(self, row: str, task: str) -> Path | None:
        return self.out / "images" / row / task if self.cfg.save_images else None


def _zero_shot_model(exp: _Experiment, sigma: int) -> tuple[IPT, str]:
    """The model for ``denoise<sigma>`` without training at it, and the task its parts come from."""
    if sigma in exp.levels:
        return exp.base, f"denoise{sigma}"
    source = exp.levels[nearest_level(sigma, sorted(exp.levels))]
    model = copy.deepcopy(exp.base)
    add_transfer_task(model, sigma, source)
    model.keep_tasks([f"denoise{sigma}"])
    return model.eval(), source


def _fine_tuned_row(exp: _Experiment, model: IPT, task: str, samples: list[Sample], row: SigmaResult) -> str:
    """Fine-tune ``model``'s ``task`` (or the pre-trained model's, at a trained level), score it into ``row``."""
    if row.trained:
        init_dir = exp.model_dir
    else:
        init_dir = exp.scratch / f"init-{task}"
        model.save_pretrained(init_dir)
    run_dir = exp.out / "runs" / task if exp.cfg.keep_runs else exp.scratch / f"run-{task}"
    t1 = time.perf_counter()
    final = _finetune(init_dir, task, exp.cfg, exp.options, run_dir)
    tuned = IPT.from_pretrained(final, tasks=[task]).eval()
    row.finetune_seconds = time.perf_counter() - t1
    ft = _evaluate(tuned, task, samples, exp.options, False, exp.images_dir("fine_tuned", task), exp.cfg.progress)
    row.fine_tuned = _summary(ft)
    return f", fine-tuned {row.fine_tuned.psnr_y:.2f} dB ({row.finetune_seconds:.0f} s)"


def _score_level(exp: _Experiment, sigma: int) -> SigmaResult:
    """The input, zero-shot and (where asked) fine-tuned rows at one noise level."""
    cfg, task = exp.cfg, f"denoise{sigma}"
    trained = sigma in exp.levels
    samples = noisy_samples(exp.images, sigma, cfg.seed)
    model, source = _zero_shot_model(exp, sigma)
    zs = _evaluate(model, task, samples, exp.options, True, exp.images_dir("zero_shot", task), cfg.progress)
    if (noisy_dir := exp.images_dir("input", task)) is not None:
        for name, noisy, _ in samples:
            write_image(noisy_dir / f"{name}.png", noisy)
    row = SigmaResult(sigma=sigma, trained=trained, source_task=source, input=_summary(zs.baseline),
                      zero_shot=_summary(zs))
    msg = f"sigma {sigma}: input {row.input.psnr_y:.2f} dB, zero-shot {row.zero_shot.psnr_y:.2f} dB" + (
        "" if trained else f" (from {source})")
    if cfg.finetune and (not trained or cfg.finetune_trained):
        msg += _fine_tuned_row(exp, model, task, samples, row)
    _say(msg)
    return row


def _write_outputs(result: TransferResult, cfg: TransferConfig, out: Path) -> None:
    atomic_write_text(out / "transfer.md", format_table(result, show_ssim=cfg.show_ssim) + "\n")
    atomic_write_text(out / "transfer.json", result.model_dump_json(indent=2) + "\n")
    plot_transfer(result, out / "transfer.png")


def transfer(cfg: TransferConfig, options: InferenceOptions | None = None) -> TransferResult:
    """Run the experiment as configured, write ``transfer.{md,json,png}`` to ``cfg.out`` and return the numbers."""
    options = options or InferenceOptions()
    t0 = time.perf_counter()
    model_dir, all_tasks, levels, base = _open_model(cfg)
    images = load_eval_images(cfg.eval_data, cfg.eval_size)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _say(f"model {model_dir} (denoise levels {', '.join(map(str, sorted(levels)))}); "
         f"{len(images)} evaluation image(s) ({', '.join(n for n, _ in images)}); sigmas {cfg.sigmas}; "
         + (f"{cfg.steps} fine-tuning steps per level" if cfg.finetune else "no fine-tuning"))
    scratch = Path(tempfile.mkdtemp(prefix="ipt-transfer-"))
    try:
        exp = _Experiment(cfg, options, model_dir, levels, base, images, out, scratch)
        results = [_score_level(exp, sigma) for sigma in cfg.sigmas]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {
        **cfg.model_dump(mode="json", exclude={"model", "progress", "show_ssim"}),
        "lr": cfg.lr if cfg.lr is not None else FINETUNE_LR,
        "inference": options.model_dump(),
        "noise_seed": "ipt.core.evaluate.pair_seed(seed, image name)",
        "torch": torch.__version__,
    }
    result = TransferResult(
        model=str(model_dir), model_tasks=all_tasks, settings=settings, eval_images=[n for n, _ in images],
        eval_size=cfg.eval_size, results=results, seconds=time.perf_counter() - t0,
    )
    _write_outputs(result, cfg, out)
    return result


def run_transfer(
    model_dir: str | Path | None = None,
    sigmas: Sequence[int] = (10, 30, 50, 70),
    steps: int = 200,
    data: str | None = None,
    eval_data: str | Path | None = None,
    options: InferenceOptions | None = None,
    **kwargs: Any,
) -> TransferResult:
    """Python entry point: ``kwargs`` are the other :class:`TransferConfig` fields (``out``, ``eval_size``, ...)."""
    cfg = TransferConfig(model=model_dir, sigmas=list(sigmas), steps=steps, data=data, eval_data=eval_data, **kwargs)
    return transfer(cfg, options)


# -- reporting ------------------------------------------------------------------------------------------------------
def _cell(s: ScoreSummary | None, show_ssim: bool) -> str:
    if s is None:
        return "—"
    p = "inf" if math.isinf(s.psnr_y) else f"{s.psnr_y:.2f}"
    return f"{p} / {s.ssim_y:.4f}" if show_ssim else p


def format_table(result: TransferResult, show_ssim: bool = False) -> str:
    """The Table-4-style markdown table: rows input / zero-shot / fine-tuned, one column per sigma."""
    sigmas = [r.sigma for r in result.results]
    steps = result.settings.get("steps")
    metric = "PSNR (dB) / SSIM" if show_ssim else "PSNR (dB)"
    size = f"{result.eval_size}x{result.eval_size} centre crops" if result.eval_size else "whole images"
    lines = [
        f"Colour denoising at noise level σ: {metric} on the Y channel (BT.601), mean over "
        f"{len(result.eval_images)} image(s) ({', '.join(result.eval_images)}; {size}). Model: {result.model}",
        "",
        "| Method | " + " | ".join(f"σ={s}" for s in sigmas) + " |",
        "|---|" + "---:|" * len(sigmas),
    ]
    labels = {"input": "Input (noisy)", "zero_shot": "IPT zero-shot",
              "fine_tuned": f"IPT fine-tuned ({steps} steps)"}
    for name in ROWS:
        row = result.row(name)
        lines.append(f"| {labels[name]} | " + " | ".join(_cell(row[s], show_ssim) for s in sigmas) + " |")
    sources = ", ".join(
        f"σ={r.sigma} trained (its own task)" if r.trained else f"σ={r.sigma} ← {r.source_task}"
        for r in result.results
    )
    lines += ["", f"Zero-shot head/tail/embedding: {sources}."]
    if any(r.fine_tuned is None for r in result.results):
        lines.append("— : not fine-tuned (trained levels are fine-tuned only with --finetune-trained).")
    return "\n".join(lines)


def plot_transfer(result: TransferResult, path: str | Path) -> Path:
    """PSNR (Y) vs sigma for the three rows, as a PNG (matplotlib's Agg canvas; no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    styles = {"input": ("tab:gray", "s", "--"), "zero_shot": ("tab:blue", "o", "-"),
              "fine_tuned": ("tab:red", "^", "-")}
    for name in ROWS:
        row = result.row(name)
        # NaN where a row has no value (not fine-tuned): the line breaks instead of bridging the gap
        ys = [v.psnr_y if v is not None and math.isfinite(v.psnr_y) else math.nan for v in row.values()]
        if any(math.isfinite(y) for y in ys):
            color, marker, ls = styles[name]
            ax.plot(list(row), ys, color=color, marker=marker, linestyle=ls, label=ROW_LABELS[name])
    for r in result.results:
        if r.trained:
            ax.axvline(r.sigma, color="0.85", linewidth=6, zorder=0)
    shaded = "; shaded = pre-trained levels" if any(r.trained for r in result.results) else ""
    ax.set_xlabel(f"noise level σ (0-255 scale){shaded}")
    ax.set_ylabel("PSNR on Y (dB)")
    ax.set_xticks([r.sigma for r in result.results])
    ax.set_title("IPT transfer to unseen noise levels")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    return atomic_write_file(path, lambda tmp: fig.savefig(tmp, format="png"))
