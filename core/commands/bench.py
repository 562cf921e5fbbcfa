"""``ipt bench``: speed and memory of IPT, side by side with the official architecture on the same weights.

What is measured (method: ``benchmarks/README.md``):

* ``ceiling``: the machine's own large-matmul GFLOP/s in fp32 and the half-precision dtypes asked for;
* ``forward``: per-patch inference throughput (patches/s, GFLOP/s from :func:`flops_per_patch`, fraction of the
  ceiling) of our model in each dtype, and of the reference (spandrel's copy of the official IPT) in fp32;
* ``train``: training steps (forward + L1 + backward + Adam) per second, ours (fp32, autocast) vs the reference;
* ``restore``: one whole image (481x321 by default) with the paper protocol (:class:`TiledRestorer`, 48 px
  tiles, 10 px overlap) vs the official protocol (``forward_chop``: ~8x the tiles), plus the PSNR change of
  half-precision outputs after 8-bit quantisation;
* ``memory``: peak memory and time of restoring a large image (2048x2048) vs a quarter of it, in a subprocess.

Timings of all variants run interleaved (one repeat of each in turn, after warm-up) and the speed-ups quoted
are medians of per-repeat ratios, so that load from other processes on a shared machine cancels out.
The reference (``spandrel``) is a benchmark-only dependency, imported when needed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ipt.core.checkpoints.official import build_reference
from ipt.core.data.throughput import (
    DEFAULT_CROPS,
    DEFAULT_TASKS,
    bench_data,
    format_data,
)
from ipt.core.files import atomic_write_text
from ipt.core.images.photos import sized_photo
from ipt.core.inference.tiling import BORDER
from ipt.core.model.config import PRESETS, ModelConfig, preset

SECTIONS = ("ceiling", "forward", "train", "restore", "memory", "onnx")  # onnx: only when asked
DATA = "data"  # training data pipeline (core/data/throughput.py); only when asked for with --what data
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
REFERENCE = "reference"
OURS = "ipt"


# --- analytic FLOP count ----------------------------------------------------------------------------------------


def _conv_flops(c_in: int, c_out: int, k: int, pixels: int) -> int:
    return 2 * c_in * c_out * k * k * pixels


def flops_per_patch(cfg: ModelConfig, scale: int = 1) -> int:
    """Multiply-add FLOPs (2 per MAC) of one ``patch_size`` patch through head, body and tail.

    Counts convolutions, linear layers and the two attention matmuls (QK^T, AV); elementwise ops, LayerNorm and
    softmax are left out (they are a few percent of the time and no FLOPs of a matmul unit). The task-embedding
    projection, done once per call and not per patch, is left out too, so the count equals the official model's.
    Paper preset, scale 1: 65.9 GFLOP (33 GMAC).
    """
    c, k, s = cfg.n_feats, cfg.res_kernel, cfg.patch_size
    n, d, m = cfg.num_tokens, cfg.embed_dim, cfg.mlp_dim
    px = s * s
    head = _conv_flops(3, c, 3, px) + 4 * _conv_flops(c, c, k, px)  # conv3x3 + 2 ResBlocks of 2 convs
    lin = 2 * n * d * d  # one (N, D) x (D, D) projection
    attn = 2 * (2 * n * n * d)  # QK^T and AV over all heads
    mlp = 2 * (2 * n * d * m)  # fc1 + fc2
    attention = 4 * lin + attn  # q, k, v, out projections
    encoder = attention + mlp
    decoder = 2 * attention + mlp  # self- and cross-attention
    body = lin + cfg.num_enc_layers * encoder + cfg.num_dec_layers * decoder + mlp  # linear_encoding, mlp_head
    tail, side = 0, s
    if scale & (scale - 1) == 0:
        for _ in range(int(math.log2(scale))):
            tail += _conv_flops(c, 4 * c, 3, side * side)
            side *= 2
    elif scale == 3:
        tail += _conv_flops(c, 9 * c, 3, side * side)
        side *= 3
    tail += _conv_flops(c, 3, 3, side * side)
    return head + body + tail


def train_flops_per_patch(cfg: ModelConfig, scale: int = 1) -> int:
    """Forward + backward FLOPs of one patch (backward = 2x forward: gradients of inputs and of weights)."""
    return 3 * flops_per_patch(cfg, scale)


# --- timing helpers ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Per-call seconds of each function: wall clock and this process's CPU time (all threads)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def get(self, clock: str) -> dict[str, list[float]]:
        return self.cpu if clock == "cpu" else self.wall


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> Timings:
    """Seconds per call of each function, measured round-robin: every repeat runs each function once.

    The starting function rotates between repeats so that none always runs first (cache state, turbo).
    CPU time is recorded too: on a machine shared with other jobs, single-threaded CPU time measures the work
    done, while wall time also measures how long the scheduler kept us waiting.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            fns[name]()
            _sync(device)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return Timings(wall, cpu)


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of ``numerator[i] / denominator[i]`` (a speed-up when numerator is the baseline)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


@contextlib.contextmanager
def precision(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """fp32: nothing; bf16/fp16: autocast (matmuls and convs in half precision, LayerNorm/softmax/loss in fp32)."""
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(device.type, dtype=dtype):
            yield


def matmul_ceiling(device: torch.device, dtype: torch.dtype, repeats: int = 5, clock: str = "wall") -> float:
    """GFLOP/s of this machine's best matmul for ``dtype``: the best median over a large square product and one of
    IPT's own GEMM shapes (1024 tokens x 576 -> 2304), with the default BLAS (``torch.mm``) and, on CPU, with
    oneDNN on a pre-packed weight (the kernel our inference path uses), whichever is faster."""
    big = 2048 if device.type == "cpu" else 8192
    best = 0.0
    for m, k, n in ((big, big, big), (1024, 576, 2304)):
        a = torch.randn(m, k, device=device).to(dtype)
        w = torch.randn(n, k, device=device).to(dtype)
        fns: dict[str, Callable[[], object]] = {"blas": lambda: torch.mm(a, w.t())}
        if device.type == "cpu" and dtype != torch.float16 and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
            fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], "")
        timings = time_interleaved(fns, warmup=2, repeats=repeats, device=device).get(clock)
        best = max([best] + [2 * m * k * n / statistics.median(t) / 1e9 for t in timings.values()])
    return best


# --- the measurements -------------------------------------------------------------------------------------------


def _variant_name(dtype: str, compiled: bool) -> str:
    return f"{OURS}-{dtype}" + ("-compile" if compiled else "")


def _variants(args: argparse.Namespace) -> list[tuple[str, str, bool]]:
    """(name, dtype, compiled) of our model's variants to measure."""
    out = [(_variant_name(d, False), d, False) for d in args.dtype]
    if args.compile:
        out += [(_variant_name(d, True), d, True) for d in args.dtype]
    return out


def _rows(timings: Timings, items: int, flops_per_item: int, ceiling: dict[str, float], clock: str
          ) -> list[dict[str, Any]]:
    """One result row per variant; rates and the speed-up use ``clock`` (wall or cpu)."""
    rows = []
    for name in timings.wall:
        dtype = "fp32" if name == REFERENCE else name.split("-")[1]
        times = timings.get(clock)[name]
        sec = statistics.median(times)
        gflops = items * flops_per_item / sec / 1e9
        row: dict[str, Any] = {
            "impl": REFERENCE if name == REFERENCE else OURS,
            "variant": name,
            "dtype": dtype,
            "clock": clock,
            "seconds": sec,
            "wall_seconds_all": timings.wall[name],
            "cpu_seconds_all": timings.cpu[name],
            "patches_per_s": items / sec,
            "gflops": gflops,
            "fraction_of_ceiling": gflops / ceiling[dtype] if dtype in ceiling else None,
            "speedup_vs_reference": None,
        }
        if REFERENCE in timings.wall:
            row["speedup_vs_reference"] = median_ratio(timings.get(clock)[REFERENCE], times)
            row["speedup_wall"] = median_ratio(timings.wall[REFERENCE], timings.wall[name])
            row["speedup_cpu"] = median_ratio(timings.cpu[REFERENCE], timings.cpu[name])
        rows.append(row)
    return rows


def bench_forward(ctx: "_Context") -> list[dict[str, Any]]:
    """Per-patch inference: a batch of ``--batch`` patches per call, under ``torch.inference_mode``."""
    x = ctx.patches(ctx.args.batch)
    fns: dict[str, Callable[[], object]] = {}
    if ctx.reference is not None:
        fns[REFERENCE] = lambda: ctx.reference(x)
    for name, dtype, compiled in _variants(ctx.args):
        net = ctx.compiled_model() if compiled else ctx.model
        fns[name] = _forward_fn(net, x, ctx.task, ctx.device, DTYPES[dtype])
    # The outer (disabled) autocast keeps autocast's cache of half-precision weight copies alive across calls, as
    # one autocast context around a whole restore does: weights are cast once, not once per batch of patches.
    with torch.inference_mode(), torch.autocast(ctx.device.type, enabled=False):
        timings = time_interleaved(fns, ctx.args.warmup, ctx.args.repeats, ctx.device)
    return _rows(timings, ctx.args.batch, flops_per_patch(ctx.cfg, ctx.scale), ctx.ceiling, ctx.args.clock)


def _forward_fn(net: nn.Module, x: torch.Tensor, task: str, device: torch.device, dtype: torch.dtype) -> Callable[[], object]:
    def step() -> torch.Tensor:
        with precision(device, dtype):
            return net(x, task)

    return step


def bench_train(ctx: "_Context") -> list[dict[str, Any]]:
    """Training steps: forward + L1 loss + backward + Adam on ``--batch`` patches (fresh copies of the weights)."""
    import copy

    args = ctx.args
    x = ctx.patches(args.batch)
    target = torch.rand(args.batch, 3, ctx.cfg.patch_size * ctx.scale, ctx.cfg.patch_size * ctx.scale,
                        device=ctx.device) * ctx.cfg.rgb_range
    fns: dict[str, Callable[[], object]] = {}
    if ctx.reference is not None:
        ref = copy.deepcopy(ctx.reference).train()
        # The official trainer's optimizer: plain torch.optim.Adam with default settings.
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
        fns[REFERENCE] = lambda: _train_step(lambda: ref(x), target, ref_opt, ctx.device, torch.float32)
    for name, dtype, compiled in _variants(args):
        net = copy.deepcopy(ctx.model).train()
        opt = make_optimizer(net.parameters(), lr=1e-4)
        run_net = torch.compile(net) if compiled else net
        fns[name] = (lambda n=run_net, o=opt, d=DTYPES[dtype]:
                     _train_step(lambda: n(x, ctx.task), target, o, ctx.device, d))
    timings = time_interleaved(fns, args.warmup, args.repeats, ctx.device)
    rows = _rows(timings, args.batch, train_flops_per_patch(ctx.cfg, ctx.scale), ctx.ceiling, args.clock)
    for row in rows:
        row["steps_per_s"] = 1.0 / row["seconds"]
    return rows


def make_optimizer(params: Iterator[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused (single-kernel) update where this torch build has one, else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - old torch / unsupported device
        return torch.optim.Adam(params, lr=lr)


def _train_step(forward: Callable[[], torch.Tensor], target: torch.Tensor, opt: torch.optim.Optimizer,
                device: torch.device, dtype: torch.dtype) -> None:
    # No .item(): a host-device sync per step would stall a GPU pipeline.
    with precision(device, dtype):
        out = forward()
    loss = F.l1_loss(out.float(), target)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_restore(ctx: "_Context") -> dict[str, Any]:
    """One whole image: the paper protocol (ours) vs the official protocol (reference), and half-precision PSNR."""
    from ipt.core.evaluation.metrics import psnr, quantize
    from ipt.core.inference.tiling import (
        TiledRestorer,
        count_tiles,
        official_forward_chop,
        official_tile_count,
    )

    args = ctx.args
    w, h = args.image_size
    clean = bench_image(h * ctx.scale, w * ctx.scale).to(ctx.device)
    gen = torch.Generator().manual_seed(0)
    degraded = ctx.model.spec(ctx.task).degrade(clean.cpu()[None], gen)[0].to(ctx.device)
    tiles_ours = count_tiles(h, w)
    tiles_official = official_tile_count(h, w)
    result: dict[str, Any] = {
        "image_size": [w, h],
        "tile_batch": args.tile_batch,
        "tiles_paper_protocol": tiles_ours,
        "tiles_official_protocol": tiles_official,
        "variants": [],
    }
    outputs: dict[str, torch.Tensor] = {}
    for name, dtype, compiled in _variants(args):
        net = ctx.compiled_model() if compiled else ctx.model
        restorer = TiledRestorer(lambda t, n=net: n(t, ctx.task), ctx.scale, tile=ctx.cfg.patch_size, overlap=10,
                                 blend="average", tile_batch=args.tile_batch)
        with torch.inference_mode(), precision(ctx.device, DTYPES[dtype]), _Stopwatch(ctx.device) as watch:
            out = restorer(degraded)
        outputs[name] = out.float()
        sec = watch.seconds(args.clock)
        result["variants"].append({"variant": name, "dtype": dtype, "seconds": sec, "wall_seconds": watch.wall,
                                   "cpu_seconds": watch.cpu, "tiles": tiles_ours, "seconds_per_tile": sec / tiles_ours})
    # PSNR of each variant's 8-bit output against the clean image and against our fp32 output.
    border = ctx.scale if ctx.scale > 1 else 0
    fp32 = outputs.get(_variant_name("fp32", False))
    for row in result["variants"]:
        out = quantize(outputs[row["variant"]].cpu().double())
        row["psnr_y_vs_clean"] = psnr(out, clean.cpu().double(), border)
        if fp32 is not None:
            ref8 = quantize(fp32.cpu().double())
            row["delta_psnr_y_vs_fp32_db"] = row["psnr_y_vs_clean"] - psnr(ref8, clean.cpu().double(), border)
            diff = (out - ref8).abs()
            row["pixels_differing_from_fp32"] = float((diff > 0).double().mean())
    if ctx.reference is not None:
        per_tile = ctx.reference_seconds_per_patch()
        official: dict[str, Any] = {"tiles": tiles_official, "seconds_per_tile": per_tile}
        if args.full_reference_restore:
            def ref_fn(t: torch.Tensor) -> torch.Tensor:
                return ctx.reference(t)

            with torch.inference_mode(), _Stopwatch(ctx.device) as watch:
                official_forward_chop(ref_fn, degraded, ctx.scale, tile=ctx.cfg.patch_size, tile_batch=64)
            official["seconds"] = watch.seconds(args.clock)
            official["estimated"] = False
        else:
            official["seconds"] = per_tile * tiles_official
            official["estimated"] = True
            official["note"] = ("official-protocol time = its tile count x the reference's measured fp32 seconds "
                                "per patch (--full-reference-restore runs it)")
        result["official_protocol"] = official
        for row in result["variants"]:
            row["speedup_vs_official_protocol"] = official["seconds"] / row["seconds"]
    return result


class _Stopwatch:
    """Wall and process CPU seconds of a ``with`` block (device work included: synchronises on entry and exit)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "_Stopwatch":
        _sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        _sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def seconds(self, clock: str) -> float:
        return self.cpu if clock == "cpu" else self.wall


def bench_image(h: int, w: int) -> torch.Tensor:
    """A natural photo (the built-in astronaut, cropped; enlarged when smaller) as (3, h, w) on 0-255."""
    return sized_photo(h, w)


# --- memory (own process, so that peak RSS belongs to one measurement) ---------------------------------------------


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # lifetime peak, KiB on Linux


def _memory_child(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Restore each job's ``height`` x ``width`` image in turn; report time and peak memory above the loaded model
    (peak RSS reset before each job, so one process serves all sizes)."""
    import gc

    import psutil

    from ipt.core.inference.tiling import TiledRestorer, count_tiles
    from ipt.core.model.ipt import IPT

    models: dict[str, IPT] = {}
    results = []
    for spec in jobs:
        device = torch.device(spec["device"])
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        if spec["preset"] not in models:
            torch.manual_seed(0)
            net = IPT.from_pretrained(spec["model_dir"]) if spec.get("model_dir") else IPT(
                preset(spec["preset"]), [spec["task"]])
            models[spec["preset"]] = net.eval().to(device)
        model = models[spec["preset"]]
        cfg, scale = model.config, model.scale(spec["task"])
        h, w = spec["height"], spec["width"]
        image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)).to(device) * 255
        restorer = TiledRestorer(lambda t, m=model: m(t, spec["task"]), scale, tile=cfg.patch_size, overlap=10,
                                 tile_batch=spec["tile_batch"])
        gc.collect()
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        exact = _reset_peak_rss()
        base_rss = psutil.Process().memory_info().rss
        with torch.inference_mode(), precision(device, DTYPES[spec["dtype"]]), _Stopwatch(device) as watch:
            restorer(image)
        result = {"preset": spec["preset"], "height": h, "width": w, "tiles": count_tiles(h, w),
                  "seconds": watch.seconds(spec["clock"]), "wall_seconds": watch.wall, "cpu_seconds": watch.cpu,
                  "output_mb": 3 * h * w * scale * scale * 4 / 2**20,
                  "peak_rss_above_model_mb": max(0, _peak_rss_bytes() - base_rss) / 2**20,
                  "peak_rss_exact": exact}
        if device.type == "cuda":
            result["peak_cuda_above_model_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        results.append(result)
    return results


def _memory_main() -> None:  # pragma: no cover - runs in the child process
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))


def _run_memory_child(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    code = "from ipt.core.commands.bench import _memory_main; _memory_main()"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_memory(ctx: "_Context") -> dict[str, Any]:
    """Peak memory and time of a large image vs a quarter of its pixels (``--memory-sizes``).

    Runs the ``--memory-preset`` model (tiling, not network width, decides how memory and time scale), plus one
    tile batch of the benchmarked preset for the per-batch memory bound.
    """
    args = ctx.args
    small, large = args.memory_sizes
    common = {"task": ctx.task, "device": str(ctx.device), "dtype": args.dtype[0], "tile_batch": args.tile_batch,
              "clock": args.clock, "threads": torch.get_num_threads()}
    # Small, large, small again (the faster small run is kept: the first one also warms up), then one tile batch
    # of the benchmarked preset: a strip exactly tile_batch tiles long.
    jobs = [{**common, "preset": args.memory_preset, "height": side, "width": side} for side in (small, large, small)]
    # (less the reflection margin that the restorer adds on every side).
    jobs.append({**common, "preset": ctx.preset_name, "model_dir": ctx.args.model,
                 "height": ctx.cfg.patch_size - 2 * BORDER,
                 "width": ctx.cfg.patch_size + 38 * (args.tile_batch - 1) - 2 * BORDER})
    first_small, big, second_small, strip = _run_memory_child(jobs)
    small_sec = min(first_small["seconds"], second_small["seconds"])
    small_peak = max(first_small["peak_rss_above_model_mb"], second_small["peak_rss_above_model_mb"])
    out: dict[str, Any] = {
        "preset": args.memory_preset,
        "dtype": args.dtype[0],
        "small": {**first_small, "seconds": small_sec, "peak_rss_above_model_mb": small_peak},
        "large": big,
        "pixel_ratio": (large / small) ** 2,
        "time_ratio": big["seconds"] / small_sec,
        "peak_memory_ratio": big["peak_rss_above_model_mb"] / max(small_peak, 1e-9),
        "one_tile_batch": {**strip, "preset": ctx.preset_name},
    }
    return out


# --- context and CLI ---------------------------------------------------------------------------------------------


class _Context:
    """The model, its reference twin, inputs and the measured ceilings shared by the sections."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ipt.core.model.ipt import IPT

        self.args = args
        self.device = torch.device(args.device)
        torch.manual_seed(args.seed)
        if args.model:
            self.model = IPT.from_pretrained(args.model)
            self.preset_name = "custom"
        else:
            self.model = IPT(preset(args.preset), [args.task])
            self.preset_name = args.preset
        self.model = self.model.eval().to(self.device)
        self.task = args.task
        self.cfg: ModelConfig = self.model.config
        self.scale = self.model.scale(self.task)
        self.ceiling: dict[str, float] = {}
        self.reference: nn.Module | None = None
        self.reference_check: dict[str, float] = {}
        self._compiled: nn.Module | None = None
        self._reference_per_patch: float | None = None
        if args.compare_reference:
            self.reference = build_reference(self.model, [self.task]).eval()
            self.reference.set_scale(0)
            self.reference_check = self._check_reference()

    def patches(self, batch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1)
        x = torch.rand(batch, 3, self.cfg.patch_size, self.cfg.patch_size, generator=gen) * self.cfg.rgb_range
        return x.to(self.device)

    def compiled_model(self) -> nn.Module:
        if self._compiled is None:
            self._compiled = torch.compile(self.model)
        return self._compiled

    def _check_reference(self) -> dict[str, float]:
        """Same weights, same function: compare outputs before timing anything."""
        assert self.reference is not None
        x = self.patches(2)
        with torch.inference_mode():
            a, b = self.model(x, self.task), self.reference(x)
        diff = float((a - b).abs().max())
        # fp32 rounding through 2x12 layers: relative to the output's magnitude, not absolute.
        rel = diff / max(float(b.abs().max()), 1e-12)
        if not rel <= 1e-4:
            raise RuntimeError(
                f"our model and the reference disagree on the same weights (max |diff| {diff:.3g}, relative {rel:.2g})"
            )
        return {"max_abs_diff_fp32": diff, "max_rel_diff_fp32": rel, "tolerance_rel": 1e-4}

    def reference_seconds_per_patch(self) -> float:
        if self._reference_per_patch is None:
            x = self.patches(self.args.batch)
            assert self.reference is not None
            with torch.inference_mode():
                t = time_interleaved({"r": lambda: self.reference(x)}, self.args.warmup, self.args.repeats,
                                     self.device).get(self.args.clock)["r"]
            self._reference_per_patch = statistics.median(t) / self.args.batch
        return self._reference_per_patch


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
                        help="our model's precision(s): fp32, bf16, fp16; repeatable or comma-separated "
                        "(default: fp32,bf16). The reference always runs in fp32")
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


def run(args: argparse.Namespace) -> int:
    args.dtype = _split_list(args.dtype, list(DTYPES), "--dtype") or ["fp32", "bf16"]
    sections = _split_list(args.what, (*SECTIONS, DATA), "--what") or [s for s in SECTIONS if s != "onnx"]
    if sections == [DATA]:  # no model needed
        return _write_report({"machine": machine_info(torch.device("cpu")), DATA: bench_data(args)}, args)
    for opt in ("batch", "repeats", "tile_batch"):
        if getattr(args, opt) < 1:
            raise ValueError(f"--{opt.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise ValueError("--warmup must be >= 0")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = _Context(args)
    report: dict[str, Any] = {
        "machine": machine_info(device),
        "settings": {
            "preset": ctx.preset_name, "task": ctx.task, "scale": ctx.scale, "device": str(device),
            "dtypes": args.dtype, "compile": args.compile, "batch": args.batch, "repeats": args.repeats,
            "warmup": args.warmup, "sections": sections, "clock": args.clock, "threads": torch.get_num_threads(),
            "compare_reference": args.compare_reference,
            "command": "ipt bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
        },
        "flops_per_patch": flops_per_patch(ctx.cfg, ctx.scale),
        "train_flops_per_patch": train_flops_per_patch(ctx.cfg, ctx.scale),
        "reference_check": ctx.reference_check or None,
    }
    human = args.json != "-"
    log = (lambda msg: print(msg, flush=True)) if human else (lambda msg: print(msg, file=sys.stderr, flush=True))
    log(f"ipt bench: preset {ctx.preset_name}, task {ctx.task}, {device}, dtypes {','.join(args.dtype)}, "
        f"{report['flops_per_patch'] / 1e9:.2f} GFLOP/patch")
    needs_ceiling = {"forward", "train", "ceiling"} & set(sections)
    if needs_ceiling:
        dts = ["fp32"] + [d for d in args.dtype if d != "fp32"]
        ctx.ceiling = {d: matmul_ceiling(device, DTYPES[d], clock=args.clock) for d in dts}
        report["ceiling_gflops"] = ctx.ceiling
        log("matmul ceiling: " + ", ".join(f"{d} {g:.0f} GFLOP/s" for d, g in ctx.ceiling.items()))
    if "forward" in sections:
        report["forward"] = bench_forward(ctx)
        log(format_rows("forward (per patch)", report["forward"], "patches_per_s", "patches/s"))
    if "train" in sections:
        report["train"] = bench_train(ctx)
        log(format_rows("training step", report["train"], "steps_per_s", "steps/s"))
    if "restore" in sections:
        report["restore"] = bench_restore(ctx)
        log(format_restore(report["restore"]))
    if "memory" in sections:
        report["memory"] = bench_memory(ctx)
        log(format_memory(report["memory"]))
    if "onnx" in sections:
        from ipt.core.commands.bench_onnx import bench_onnx, format_onnx

        report["onnx"] = bench_onnx(ctx)
        log(format_onnx(report["onnx"]))
    if DATA in sections:
        report[DATA] = bench_data(args)
        log(format_data(report[DATA]))
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            path = atomic_write_text(args.json, text + "\n")
            log(f"wrote {path}")
    return 0


def _write_report(report: dict[str, Any], args: argparse.Namespace) -> int:
    """The data-only run: print the table (or the JSON) like the other sections."""
    if args.json != "-":
        print(format_data(report[DATA]), flush=True)
    if args.json:
        text = json.dumps(report, indent=2)
        if args.json == "-":
            print(text)
        else:
            print(f"wrote {atomic_write_text(args.json, text + chr(10))}")
    return 0


def machine_info(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_rows(title: str, rows: list[dict[str, Any]], rate_key: str, unit: str) -> str:
    clock = rows[0]["clock"] if rows else "wall"
    lines = [f"\n{title} ({clock} clock)", f"  {'variant':<22}{'seconds':>9}{unit:>12}{'GFLOP/s':>9}{'of peak':>9}{'vs ref':>8}"]
    for r in rows:
        frac = f"{100 * r['fraction_of_ceiling']:.0f}%" if r["fraction_of_ceiling"] is not None else "-"
        ratio = f"{r['speedup_vs_reference']:.2f}x" if r["speedup_vs_reference"] is not None else "-"
        lines.append(f"  {r['variant']:<22}{r['seconds']:>9.3f}{r[rate_key]:>12.3f}{r['gflops']:>9.1f}"
                     f"{frac:>9}{ratio:>8}")
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
