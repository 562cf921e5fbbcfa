"""``ipt eval``: score a model on a benchmark folder and print the table (or JSON)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from ipt.core.commands.options import add_model_arguments, parse_config
from ipt.core.evaluation.metrics import CONVENTIONS, DEFAULT_CONVENTION
from ipt.core.evaluation.evaluate import EvalResult, evaluate
from ipt.core.files import check_not_inputs
from ipt.core.inference.restorer import (
    InferenceOptions,
    load_task_model,
    resolve_device,
)


# -- command line --------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:

    parser.add_argument("--task", required=True, help="task to score, e.g. sr2, denoise30, derain")
    parser.add_argument("--model", metavar="MODEL_DIR", default=None,
                        help="model directory (config.json + model.safetensors) or Hub repo id user/name[@revision]; "
                        "default: the bundled model")
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="benchmark folder (HR/ + LR_bicubic/X{s}/, rainy/ + norain/, rain-*/norain-*, "
                             "or clean images degraded on the fly)")
    parser.add_argument("--baseline", action="store_true",
                        help="also score bicubic upscaling (SR) or the degraded input (other tasks)")
    parser.add_argument("--convention", choices=CONVENTIONS, default=DEFAULT_CONVENTION,
                        help="scoring convention: official-python = the official IPT/EDSR Python scorer (the IPT "
                             "paper's numbers); matlab = the MATLAB scripts behind the published SR tables (Y "
                             "rounded to 8 bit, grey files scored on grey, per-pass-rounded imresize, the tables' "
                             f"bicubic recipe for --baseline). Default: {DEFAULT_CONVENTION}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--save-dir", metavar="DIR", default=None,
                        help="write the restored images here, and _worst_best_grid.png (crops of the worst and "
                        "best images with their PSNR-Y)")
    parser.add_argument("--seed", type=int, default=0, help="seed of on-the-fly degradations (default: 0)")
    parser.add_argument("--limit", type=int, default=None, metavar="N", help="score only the first N images")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--metrics", metavar="A,B,...", default=None,
                        help="metrics to report, e.g. psnr,ssim,psnr_b (`ipt plugins` lists them; default: the "
                             "task's own list). PSNR-Y, SSIM-Y and PSNR-RGB are always reported")
    add_model_arguments(parser, InferenceOptions, config_flag=False)


def _fmt(v: float, digits: int) -> str:
    return "inf" if math.isinf(v) else f"{v:.{digits}f}"


_COL = 10


_FIXED = ("PSNR-Y", "SSIM-Y", "PSNR-RGB")


def _extra_columns(result: EvalResult) -> dict[str, str]:
    """Selected metrics shown after the fixed columns: ``name -> header``, skipping those equal to a fixed one."""
    return {n: info["column"] for n, info in result.metric_info.items() if info["column"] not in _FIXED}


def _row(name: str, s: Any, b: Any, width: int, extra: dict[str, str]) -> str:
    """One table row; ``s``/``b`` have ``psnr_y``, ``ssim_y``, ``psnr_rgb`` and ``metrics`` (b may be None)."""
    cells = [f"{name:<{width}}"]
    for m in (s, b) if b is not None else (s,):
        cells += [f"{_fmt(m.psnr_y, 2):>{_COL}}", f"{_fmt(m.ssim_y, 4):>{_COL}}", f"{_fmt(m.psnr_rgb, 2):>{_COL}}"]
        cells += [f"{_fmt(m.metrics[k], 2 if abs(m.metrics[k]) >= 2 else 4):>{_COL}}" for k in extra]
    return "  ".join(cells)


def format_table(result: EvalResult) -> str:
    """The per-image table and the mean, as ``ipt eval`` prints it."""
    width = max([4, *(len(n) + 1 for n in result.per_image)])
    base = result.baseline
    extra = _extra_columns(result)
    head = [f"{'image':<{width}}"] + [f"{h:>{_COL}}" for h in (*_FIXED, *extra.values())]
    if base is not None:
        tag = "bic" if base.method.startswith("bicubic") else "input"
        head += [f"{h:>{_COL}}" for h in (f"{tag} Y", f"{tag} SSIM", f"{tag} RGB", *(f"{tag} {c}" for c in extra.values()))]
    lines = [
        f"task {result.task}  data {result.data}  ({result.layout})",
        f"protocol {result.protocol}  convention {result.convention}  {result.tiles} tiles  {result.seconds:.1f} s",
        "  ".join(head),
    ]
    for name, s in result.per_image.items():
        shown = f"{name}*" if s.grey else name
        lines.append(_row(shown, s, base.per_image[name] if base is not None else None, width, extra))
    lines.append(_row("mean", result, base, width, extra) + f"   (n={result.n})")
    if result.grey_images:
        lines.append(f"{result.grey_images} of {result.n} images are grey (marked *): degraded on one plane, "
                     "outputs made grey (channel mean) before scoring")
    return "\n".join(lines)


def check_save_dir(data: Path, save_dir: str | Path | None) -> None:
    """``--save-dir`` may not be the benchmark folder or lie inside it (outputs would replace ground truth or join
    the benchmark), nor, for a one-image ``--data``, write over that image. Raises :class:`OverwriteError`."""
    if save_dir is None:
        return
    save = Path(save_dir)
    writes = [save, *([save / f"{data.stem}.png"] if data.is_file() else [])]
    check_not_inputs([data], "--save-dir", writes=writes, hint="save the restored images outside the benchmark folder")


def run(args: argparse.Namespace) -> int:

    options = parse_config(InferenceOptions, args)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    data = Path(args.data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: --data not found")
    check_save_dir(data, args.save_dir)
    model = load_task_model(args.model, args.task, resolve_device(options.device))
    result = evaluate(
        model, args.task, data, baseline=args.baseline, seed=args.seed, limit=args.limit,
        save_dir=args.save_dir, options=options, progress=not args.quiet, convention=args.convention,
        metrics=[m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None,
    )
    print(result.model_dump_json() if args.json else format_table(result))
    return 0
