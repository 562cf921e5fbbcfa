"""``ipt bench``: speed and memory of IPT, side by side with the official architecture on the same weights.

Flags, the model and its reference twin, printing and the JSON report. The measuring itself lives in
:mod:`ipt.core.benchmarking` (timing, FLOP counts, matmul ceilings, the forward/train/restore sections, memory);
method: ``benchmarks/README.md``. The reference (``spandrel``) is a benchmark-only dependency, imported when needed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ipt.core.benchmarking.ceiling import matmul_ceiling, machine_info
from ipt.core.benchmarking.flops import counted_flops_per_patch, flops_per_patch, train_flops_per_patch
from ipt.core.benchmarking.memory import memory_jobs, run_memory_jobs, summarise_memory
from ipt.core.benchmarking.sections import (
    BenchSettings,
    BenchSetup,
    bench_forward,
    bench_restore,
    bench_train,
    make_optimizer,
)
from ipt.core.benchmarking.timing import median_ratio, time_interleaved
from ipt.core.checkpoints.official import build_reference, to_official_state_dict  # noqa: F401 - re-exported
from ipt.core.commands.bench_onnx import bench_onnx, format_onnx
from ipt.core.data.throughput import DEFAULT_CROPS, DEFAULT_TASKS, bench_data, format_data
from ipt.core.files import atomic_write_text
from ipt.core.inference.precision import PRECISIONS, check_precision
from ipt.core.model.config import PRESETS, preset
from ipt.core.model.ipt import IPT

# Re-exported for benchmarks/ablate.py and older imports; they live in ipt.core.benchmarking.
__all__ = ["add_arguments", "run", "flops_per_patch", "train_flops_per_patch", "median_ratio", "time_interleaved",
           "make_optimizer", "to_official_state_dict", "build_reference"]

SECTIONS = ("ceiling", "forward", "train", "restore", "memory", "onnx")  # onnx: only when asked
DATA = "data"  # training data pipeline (core/data/throughput.py); only when asked for with --what data


# The reference model (spandrel's copy of the official IPT) is built by ipt.core.checkpoints.official.


def _load_model(args: argparse.Namespace, device: torch.device) -> tuple[IPT, str]:
    torch.manual_seed(args.seed)
    if args.model:
        return IPT.from_pretrained(args.model).eval().to(device), "custom"
    return IPT(preset(args.preset), [args.task]).eval().to(device), args.preset


def _check_reference(model: IPT, reference: nn.Module, task: str, device: torch.device) -> dict[str, float]:
    """Same weights, same function: compare outputs before timing anything (``RuntimeError`` if they differ)."""
    size = model.config.patch_size
    x = (torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1)) * model.config.rgb_range).to(device)
    with torch.inference_mode():
        a, b = model(x, task), reference(x)
    diff = float((a - b).abs().max())
    # fp32 rounding through 2x12 layers: relative to the output's magnitude, not absolute.
    rel = diff / max(float(b.abs().max()), 1e-12)
    if not rel <= 1e-4:
        raise RuntimeError(
            f"our model and the reference disagree on the same weights (max |diff| {diff:.3g}, relative {rel:.2g})"
        )
    return {"max_abs_diff_fp32": diff, "max_rel_diff_fp32": rel, "tolerance_rel": 1e-4}


def _setup(args: argparse.Namespace, device: torch.device) -> tuple[BenchSetup, str, dict[str, float]]:
    model, preset_name = _load_model(args, device)
    settings = BenchSettings(dtypes=args.dtype, compile=args.compile, batch=args.batch, repeats=args.repeats,
                             warmup=args.warmup, clock=args.clock, image_size=args.image_size,
                             tile_batch=args.tile_batch, full_reference_restore=args.full_reference_restore)
    setup = BenchSetup(model, args.task, device, settings, counted_flops_per_patch(model, args.task))
    check: dict[str, float] = {}
    if args.compare_reference:
        setup.reference = build_reference(model, [args.task]).eval()
        setup.reference.set_scale(0)
        check = _check_reference(model, setup.reference, args.task, device)
    return setup, preset_name, check


# --- flags --------------------------------------------------------------------------------------------------------


def _split_list(values: Sequence[str] | None, allowed: Sequence[str], option: str) -> list[str]:
    out: list[str] = []
    for value in values or []:
        for item in value.split(","):
            item = item.strip()
            if not item:
                continue
            if item not in allowed:
                raise ValueError(f"{option}: unknown value {item!r}; choose from {', '.join(allowed)}")
            if item not in out:
                out.append(item)
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 481x321, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"image size must be positive, got {text!r}")
    return w, h


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the ``data`` section of ``ipt bench``."""
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="data section: folder of training images, e.g. BSDS500/train JPEGs "
                             "(default: the built-in photos)")
    parser.add_argument("--data-tasks", default=",".join(DEFAULT_TASKS), metavar="A,B",
                        help=f"data section: tasks (default: {','.join(DEFAULT_TASKS)})")
    parser.add_argument("--crops", default=",".join(map(str, DEFAULT_CROPS)), metavar="N,M",
                        help=f"data section: crops per decoded image to compare (default: "
                             f"{','.join(map(str, DEFAULT_CROPS))})")
    parser.add_argument("--data-batch", type=int, default=32, help="data section: patches per step (default: 32)")
    parser.add_argument("--data-steps", type=int, default=8, help="data section: steps per timed repeat (default: 8)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=list(PRESETS), default="paper", help="model size (default: paper)")
    parser.add_argument("--model", default=None, help="benchmark a saved model directory instead of a preset "
                        "(trained weights make the half-precision PSNR check meaningful)")
    parser.add_argument("--task", default="denoise30", help="task whose head/tail run (default: denoise30, scale 1)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--dtype", action="append", default=None,
                        help="our model's precision(s): fp32, bf16, fp16, int8 (CPU; inference only); repeatable or "
                        "comma-separated (default: fp32,bf16). The reference always runs in fp32")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd variants")
    parser.add_argument("--batch", type=int, default=4, help="patches per forward / training step (default: 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per variant (default: 1)")
    parser.add_argument("--what", action="append", default=None,
                        help=f"sections to run, comma-separated: {','.join(SECTIONS)},{DATA} "
                             f"(default: all but onnx and {DATA})")
    parser.add_argument("--compare-reference", action="store_true",
                        help="also time spandrel's copy of the official IPT on the same weights (needs spandrel)")
    parser.add_argument("--full-reference-restore", action="store_true",
                        help="run the official protocol on the whole image instead of estimating it from tiles")
    parser.add_argument("--image-size", type=_size, default=(481, 321), metavar="WxH",
                        help="input image of the restore section (default: 481x321, the BSD size)")
    parser.add_argument("--tile-batch", type=int, default=16, help="tiles per forward when restoring (default: 16)")
    parser.add_argument("--memory-preset", choices=list(PRESETS), default="tiny",
                        help="model of the memory/linearity section (default: tiny)")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=(1024, 2048), metavar=("SMALL", "LARGE"),
                        help="image sides of the memory/linearity section (default: 1024 2048)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time that rates and speed-ups quote: wall clock, or process CPU time (use with "
                        "--threads 1 on a machine busy with other jobs; both are always recorded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                        help="write one JSON object to PATH (or stdout when no PATH is given)")
    add_data_arguments(parser)


def _check_args(args: argparse.Namespace) -> tuple[list[str], torch.device]:
    """Validate and normalise the flags; the sections to run and the device (``ValueError`` on bad values)."""
    args.dtype = _split_list(args.dtype, list(PRECISIONS), "--dtype") or ["fp32", "bf16"]
    sections = _split_list(args.what, (*SECTIONS, DATA), "--what") or [s for s in SECTIONS if s != "onnx"]
    for opt in ("batch", "repeats", "tile_batch"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    for d in args.dtype:
        if d != "fp16":  # fp16 on the CPU is measured too (autocast runs it), just not offered for restoring
            check_precision(d, device)
    return sections, device


def _report_head(args: argparse.Namespace, setup: BenchSetup, preset_name: str, sections: list[str],
                 check: dict[str, float]) -> dict[str, Any]:
    return {
        "machine": machine_info(setup.device),
        "settings": {
            "preset": preset_name, "task": setup.task, "scale": setup.scale, "device": str(setup.device),
            "dtypes": args.dtype, "compile": args.compile, "batch": args.batch, "repeats": args.repeats,
            "warmup": args.warmup, "sections": sections, "clock": args.clock, "threads": torch.get_num_threads(),
            "compare_reference": args.compare_reference,
            "command": "ipt bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        },
        "flops_per_patch": setup.flops_per_patch,
        "flops_counted_by": "torch.utils.flop_counter.FlopCounterMode on the benchmarked model",
        "train_flops_per_patch": train_flops_per_patch(setup.flops_per_patch),
        "reference_check": check or None,
    }


def _memory(args: argparse.Namespace, setup: BenchSetup, preset_name: str) -> dict[str, Any]:
    common = {"task": setup.task, "device": str(setup.device), "dtype": args.dtype[0],
              "tile_batch": args.tile_batch, "clock": args.clock, "threads": torch.get_num_threads()}
    jobs = memory_jobs(common, args.memory_preset, tuple(args.memory_sizes), preset_name, args.model,
                       setup.model.config.patch_size, args.tile_batch)
    return summarise_memory(run_memory_jobs(jobs), args.memory_preset, args.dtype[0], preset_name)


def run(args: argparse.Namespace) -> int:
    sections, device = _check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if sections == [DATA]:  # no model needed
        report = {"machine": machine_info(torch.device("cpu")), DATA: bench_data(args)}
        print(format_data(report[DATA]), file=sys.stderr if args.json == "-" else sys.stdout, flush=True)
        _write_json(args.json, report, lambda msg: print(msg, file=sys.stderr, flush=True))
        return 0
    setup, preset_name, check = _setup(args, device)
    report = _report_head(args, setup, preset_name, sections, check)
    human = args.json != "-"
    log = (lambda msg: print(msg, flush=True)) if human else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"ipt bench: preset {preset_name}, task {setup.task}, {device}, dtypes {','.join(args.dtype)}, "
        f"{report['flops_per_patch'] / 1e9:.2f} GFLOP/patch")
    if {"forward", "train", "ceiling"} & set(sections):
        dts = ["fp32"] + [d for d in args.dtype if d != "fp32"]
        setup.ceiling = report["ceiling_gflops"] = {d: matmul_ceiling(device, d, clock=args.clock) for d in dts}
        log("matmul ceiling: " + ", ".join(f"{d} {g:.0f} G{'OP' if d == 'int8' else 'FLOP'}/s"
                                           for d, g in setup.ceiling.items()))
    if "forward" in sections:
        report["forward"] = bench_forward(setup)
        log(format_rows("forward (per patch)", report["forward"], "patches_per_s", "patches/s"))
    if "train" in sections:
        report["train"] = bench_train(setup)
        log(format_rows("training step", report["train"], "steps_per_s", "steps/s"))
    if "restore" in sections:
        report["restore"] = bench_restore(setup)
        log(format_restore(report["restore"]))
    if "memory" in sections:
        report["memory"] = _memory(args, setup, preset_name)
        log(format_memory(report["memory"]))
    if "onnx" in sections:
        report["onnx"] = bench_onnx(SimpleNamespace(task=setup.task, device=setup.device, model=setup.model,
                                                    patches=setup.patches, args=args))
        log(format_onnx(report["onnx"]))
    if DATA in sections:
        report[DATA] = bench_data(args)
        log(format_data(report[DATA]))
    _write_json(args.json, report, log)
    return 0


def _write_json(target: str | None, report: dict[str, Any], log: Any) -> None:
    if not target:
        return
    text = json.dumps(report, indent=2)
    if target == "-":
        print(text)
    else:
        log(f"wrote {atomic_write_text(target, text + chr(10))}")


# --- printing -------------------------------------------------------------------------------------------------


def format_rows(title: str, rows: list[dict[str, Any]], rate_key: str, unit: str) -> str:
    clock = rows[0]["clock"] if rows else "wall"
    lines = [f"\n{title} ({clock} clock)", f"  {'variant':<22}{'seconds':>9}{unit:>12}{'GFLOP/s':>9}{'of peak':>9}  vs ref (min-max)"]
    for r in rows:
        frac = f"{100 * r['fraction_of_ceiling']:.0f}%" if r["fraction_of_ceiling"] is not None else "-"
        ratio = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] is not None else "-"
        if r.get("speedup_min_max") and len(r["cpu_seconds_all"]) > 1:
            ratio += " ({:.2f}-{:.2f})".format(*r["speedup_min_max"])
        lines.append(f"  {r['variant']:<22}{r['seconds']:>9.3f}{r[rate_key]:>12.3f}{r['gflops']:>9.1f}"
                     f"{frac:>9}  {ratio}")
    return "\n".join(lines)


def format_restore(res: dict[str, Any]) -> str:
    w, h = res["image_size"]
    lines = [f"\nwhole image {w}x{h}: paper protocol {res['tiles_paper_protocol']} tiles, "
             f"official protocol {res['tiles_official_protocol']} tiles"]
    off = res.get("official_protocol")
    if off:
        est = " (estimated: tiles x reference s/patch)" if off["estimated"] else ""
        lines.append(f"  official protocol, reference fp32: {off['seconds']:.1f} s{est}")
    for r in res["variants"]:
        extra = f", {r['speedup_vs_official_protocol']:.1f}x faster" if "speedup_vs_official_protocol" in r else ""
        dp = r.get("delta_psnr_y_vs_fp32_db")
        dp_txt = f", PSNR-Y {r['psnr_y_vs_clean']:.3f} dB" + (f" ({dp:+.4f} dB vs fp32)" if dp is not None else "")
        lines.append(f"  paper protocol, {r['variant']}: {r['seconds']:.1f} s{extra}{dp_txt}")
    return "\n".join(lines)


def format_memory(mem: dict[str, Any]) -> str:
    s, b, one = mem["small"], mem["large"], mem["one_tile_batch"]
    return "\n".join([
        f"\nmemory/linearity ({mem['preset']} preset, {mem['dtype']}):",
        f"  {s['width']}x{s['height']}: {s['seconds']:.1f} s, peak +{s['peak_rss_above_model_mb']:.0f} MB",
        f"  {b['width']}x{b['height']}: {b['seconds']:.1f} s, peak +{b['peak_rss_above_model_mb']:.0f} MB "
        f"(output canvas {b['output_mb']:.0f} MB)",
        f"  {mem['pixel_ratio']:.0f}x pixels -> {mem['time_ratio']:.2f}x time, "
        f"{mem['peak_memory_ratio']:.2f}x peak memory",
        f"  one tile batch ({one['tiles']} tiles) at preset {one['preset']}: "
        f"peak +{one['peak_rss_above_model_mb']:.0f} MB",
    ])
