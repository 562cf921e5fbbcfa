"""``ipt bench --what onnx``: ONNX Runtime (CPU, fp32) vs our PyTorch model on the same batches of tiles.

The model's task is exported to a temporary ``.onnx`` file (:func:`ipt.core.inference.onnx.export_onnx`), both
outputs are compared (max |diff| on 0-255), then both run interleaved (``time_interleaved``): the speed-up quoted
is the median over repeats of PyTorch seconds / ONNX Runtime seconds. Needs the ``[onnx]`` extra.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from ipt.core.benchmarking.timing import median_ratio, time_interleaved
from ipt.core.inference.onnx import OnnxTileFunction, export_onnx


def bench_onnx(ctx: Any) -> dict[str, Any]:
    """Patches/s of ONNX Runtime and of our fp32 model on ``--batch`` tiles of ``ctx.task`` (CPU only)."""
    if ctx.device.type != "cpu":
        raise ValueError("--what onnx measures ONNX Runtime on the CPU: use --device cpu")
    x = ctx.patches(ctx.args.batch)
    with tempfile.TemporaryDirectory(prefix="ipt-bench-onnx-") as tmp:
        ort_fn = OnnxTileFunction(export_onnx(ctx.model, ctx.task, Path(tmp) / "tile.onnx"),
                                  threads=torch.get_num_threads())
        with torch.inference_mode():
            ours = ctx.model(x, ctx.task)
            diff = float((ort_fn(x) - ours).abs().max())
            fns = {"onnxruntime": lambda: ort_fn(x), "ipt-fp32": lambda: ctx.model(x, ctx.task)}
            timings = time_interleaved(fns, ctx.args.warmup, ctx.args.repeats, ctx.device).get(ctx.args.clock)
    return {
        "batch": ctx.args.batch, "clock": ctx.args.clock, "max_abs_diff": diff,
        "patches_per_s": {k: ctx.args.batch / statistics.median(v) for k, v in timings.items()},
        "seconds_all": timings,
        "onnx_speedup_vs_ipt": median_ratio(timings["ipt-fp32"], timings["onnxruntime"]),
    }


def format_onnx(res: dict[str, Any]) -> str:
    rates = ", ".join(f"{k} {v:.2f} patches/s" for k, v in res["patches_per_s"].items())
    return (f"\nONNX Runtime vs PyTorch (CPU fp32, batch {res['batch']}, {res['clock']} clock): {rates}; "
            f"ONNX Runtime {res['onnx_speedup_vs_ipt']:.2f}x ours; max |diff| {res['max_abs_diff']:.2g}")
