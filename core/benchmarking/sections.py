"""The measured sections of ``ipt bench``: per-patch forward, training step, whole-image restore.

Each takes a :class:`BenchSetup` (the model, its reference twin, the settings and the measured ceilings) and
returns JSON-ready rows; the command (``ipt.core.commands.bench``) parses flags and prints them.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from ipt.core.benchmarking.timing import Stopwatch, Timings, median_ratio, time_interleaved
from ipt.core.evaluation.metrics import psnr, quantize
from ipt.core.images.photos import heldout_photos, sized_photo
from ipt.core.inference.int8_calibration import ensure_int8_calibration, task_patches
from ipt.core.inference.precision import precision
from ipt.core.inference.tiling import TiledRestorer, count_tiles, official_forward_chop, official_tile_count
from ipt.core.model.ipt import IPT

__all__ = ["BenchSettings", "BenchSetup", "bench_forward", "bench_train", "bench_restore", "make_optimizer",
           "bench_image", "REFERENCE", "OURS"]

REFERENCE = "reference"
OURS = "ipt"


class BenchSettings(BaseModel):
    """What to measure and how (the flags of ``ipt bench``; ``benchmarks/README.md`` explains each)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtypes: list[str] = ["fp32", "bf16"]
    compile: bool = False
    batch: int = 4
    repeats: int = 3
    warmup: int = 1
    clock: str = "wall"
    image_size: tuple[int, int] = (481, 321)
    tile_batch: int = 16
    full_reference_restore: bool = False


@dataclass
class BenchSetup:
    """The model (eval mode, on ``device``), its task, the reference twin (or None) and the ceilings (GFLOP/s)."""

    model: IPT
    task: str
    device: torch.device
    settings: BenchSettings
    flops_per_patch: int
    reference: nn.Module | None = None
    ceiling: dict[str, float] = field(default_factory=dict)
    _compiled: nn.Module | None = None
    _reference_per_patch: float | None = None

    def __post_init__(self) -> None:
        if "int8" in self.settings.dtypes:  # the static int8 scales, as ipt restore makes them (not timed)
            ensure_int8_calibration(self.model, self.task)

    @property
    def scale(self) -> int:
        return self.model.scale(self.task)

    def patches(self, batch: int) -> torch.Tensor:
        """``batch`` network inputs (B, C, S, S) on 0-255, the same for every variant: crops of the held-out
        built-in photos degraded by the task (:func:`~ipt.core.inference.int8_calibration.task_patches`; natural
        content, which the int8 path's speed depends on), or seeded uniform noise without those photos."""
        try:
            x = task_patches(self.model, self.task, heldout_photos(), batch, seed=1)
        except FileNotFoundError:
            size = self.model.config.patch_size
            gen = torch.Generator().manual_seed(1)
            x = torch.rand(batch, 3, size, size, generator=gen) * self.model.config.rgb_range
        return x.to(self.device)

    def compiled_model(self) -> nn.Module:
        if self._compiled is None:
            self._compiled = torch.compile(self.model)
        return self._compiled

    def variants(self, training: bool = False) -> list[tuple[str, str, bool]]:
        """(name, precision, compiled) of our model's variants; int8 is inference-only."""
        dtypes = [d for d in self.settings.dtypes if not (training and d == "int8")]
        out = [(f"{OURS}-{d}", d, False) for d in dtypes]
        if self.settings.compile:
            out += [(f"{OURS}-{d}-compile", d, True) for d in dtypes if d != "int8"]
        return out

    def reference_seconds_per_patch(self) -> float:
        """The reference's median seconds per patch (fp32), measured once."""
        if self._reference_per_patch is None:
            assert self.reference is not None
            s, ref, x = self.settings, self.reference, self.patches(self.settings.batch)
            with torch.inference_mode():
                t = time_interleaved({"r": lambda: ref(x)}, s.warmup, s.repeats, self.device).get(s.clock)["r"]
            self._reference_per_patch = statistics.median(t) / s.batch
        return self._reference_per_patch


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
            "impl": REFERENCE if name == REFERENCE else OURS, "variant": name, "dtype": dtype, "clock": clock,
            "seconds": sec, "wall_seconds_all": timings.wall[name], "cpu_seconds_all": timings.cpu[name],
            "patches_per_s": items / sec, "gflops": gflops,
            "fraction_of_ceiling": gflops / ceiling[dtype] if dtype in ceiling else None,
            "speedup_vs_reference": None,
        }
        if REFERENCE in timings.wall:
            row["speedup_vs_reference"] = median_ratio(timings.get(clock)[REFERENCE], times)
            row["speedup_wall"] = median_ratio(timings.wall[REFERENCE], timings.wall[name])
            row["speedup_cpu"] = median_ratio(timings.cpu[REFERENCE], timings.cpu[name])
            ratios = [a / b for a, b in zip(timings.get(clock)[REFERENCE], times)]
            row["speedup_min_max"] = [min(ratios), max(ratios)]
        rows.append(row)
    return rows


def bench_forward(setup: BenchSetup) -> list[dict[str, Any]]:
    """Per-patch inference: a batch of ``batch`` patches per call, under ``torch.inference_mode``."""
    s = setup.settings
    x = setup.patches(s.batch)
    fns: dict[str, Callable[[], object]] = {}
    if setup.reference is not None:
        fns[REFERENCE] = lambda ref=setup.reference: ref(x)
    for name, dtype, compiled in setup.variants():
        net = setup.compiled_model() if compiled else setup.model
        fns[name] = _forward_fn(net, x, setup.task, setup.device, dtype)
    # The outer (disabled) autocast keeps autocast's cache of half-precision weight copies alive across calls, as
    # one autocast context around a whole restore does: weights are cast once, not once per batch of patches.
    with torch.inference_mode(), torch.autocast(setup.device.type, enabled=False):
        timings = time_interleaved(fns, s.warmup, s.repeats, setup.device)
    return _rows(timings, s.batch, setup.flops_per_patch, setup.ceiling, s.clock)


def _forward_fn(net: nn.Module, x: torch.Tensor, task: str, device: torch.device, dtype: str
                ) -> Callable[[], object]:
    def step() -> torch.Tensor:
        with precision(device, dtype):
            return net(x, task)

    return step


def make_optimizer(params: Iterator[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Adam with the fused (single-kernel) update where this torch build has one, else the default."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - old torch / unsupported device
        return torch.optim.Adam(params, lr=lr)


def _train_step(forward: Callable[[], torch.Tensor], target: torch.Tensor, opt: torch.optim.Optimizer,
                device: torch.device, dtype: str) -> None:
    # No .item(): a host-device sync per step would stall a GPU pipeline.
    with precision(device, dtype):
        out = forward()
    loss = F.l1_loss(out.float(), target)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_train(setup: BenchSetup) -> list[dict[str, Any]]:
    """Training steps: forward + L1 loss + backward + Adam on ``batch`` patches (fresh copies of the weights);
    the reference with plain ``torch.optim.Adam`` (the official trainer's), ours with fused Adam."""
    s = setup.settings
    x = setup.patches(s.batch)
    size = setup.model.config.patch_size * setup.scale
    target = torch.rand(s.batch, 3, size, size, device=setup.device) * setup.model.config.rgb_range
    fns: dict[str, Callable[[], object]] = {}
    if setup.reference is not None:
        ref = copy.deepcopy(setup.reference).train()
        ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-4)
        fns[REFERENCE] = lambda: _train_step(lambda: ref(x), target, ref_opt, setup.device, "fp32")
    for name, dtype, compiled in setup.variants(training=True):
        net = copy.deepcopy(setup.model).train()
        opt = make_optimizer(net.parameters(), lr=1e-4)
        run_net = torch.compile(net) if compiled else net
        fns[name] = (lambda n=run_net, o=opt, d=dtype:
                     _train_step(lambda: n(x, setup.task), target, o, setup.device, d))
    timings = time_interleaved(fns, s.warmup, s.repeats, setup.device)
    rows = _rows(timings, s.batch, 3 * setup.flops_per_patch, setup.ceiling, s.clock)
    for row in rows:
        row["steps_per_s"] = 1.0 / row["seconds"]
    return rows


def bench_image(h: int, w: int) -> torch.Tensor:
    """A natural photo (the built-in astronaut, cropped; enlarged when smaller) as (3, h, w) on 0-255."""
    return sized_photo(h, w)


def _restore_variants(setup: BenchSetup, degraded: torch.Tensor) -> tuple[list[dict[str, Any]], dict[str, torch.Tensor]]:
    """Each variant restores the image with the paper protocol: (rows with seconds, outputs by variant)."""
    s = setup.settings
    h, w = degraded.shape[-2:]
    tiles = count_tiles(h, w)
    rows, outputs = [], {}
    for name, dtype, compiled in setup.variants():
        net = setup.compiled_model() if compiled else setup.model
        restorer = TiledRestorer(lambda t, n=net: n(t, setup.task), setup.scale, tile=setup.model.config.patch_size,
                                 overlap=10, blend="average", tile_batch=s.tile_batch)
        with torch.inference_mode(), precision(setup.device, dtype), Stopwatch(setup.device) as watch:
            outputs[name] = restorer(degraded).float()
        sec = watch.seconds(s.clock)
        rows.append({"variant": name, "dtype": dtype, "seconds": sec, "wall_seconds": watch.wall,
                     "cpu_seconds": watch.cpu, "tiles": tiles, "seconds_per_tile": sec / tiles})
    return rows, outputs


def _score_variants(rows: list[dict[str, Any]], outputs: dict[str, torch.Tensor], clean: torch.Tensor,
                    border: int) -> None:
    """PSNR-Y of each variant's 8-bit output against the clean image and its change against our fp32 output."""
    fp32 = outputs.get(f"{OURS}-fp32")
    clean = clean.cpu().double()
    ref8 = None if fp32 is None else quantize(fp32.cpu().double())
    for row in rows:
        out = quantize(outputs[row["variant"]].cpu().double())
        row["psnr_y_vs_clean"] = psnr(out, clean, border)
        if ref8 is not None:
            row["delta_psnr_y_vs_fp32_db"] = row["psnr_y_vs_clean"] - psnr(ref8, clean, border)
            row["psnr_y_vs_fp32_output"] = psnr(out, ref8, border)
            row["pixels_differing_from_fp32"] = float(((out - ref8).abs() > 0).double().mean())


def _official_protocol(setup: BenchSetup, degraded: torch.Tensor) -> dict[str, Any]:
    """The official protocol on the reference: timed in full, or estimated as tiles x seconds per patch."""
    h, w = degraded.shape[-2:]
    tiles, per_tile = official_tile_count(h, w), setup.reference_seconds_per_patch()
    official: dict[str, Any] = {"tiles": tiles, "seconds_per_tile": per_tile}
    if setup.settings.full_reference_restore:
        ref = setup.reference
        with torch.inference_mode(), Stopwatch(setup.device) as watch:
            official_forward_chop(lambda t: ref(t), degraded, setup.scale, tile=setup.model.config.patch_size,
                                  tile_batch=64)
        official.update(seconds=watch.seconds(setup.settings.clock), estimated=False)
    else:
        official.update(seconds=per_tile * tiles, estimated=True,
                        note="official-protocol time = its tile count x the reference's measured fp32 seconds "
                             "per patch (--full-reference-restore runs it)")
    return official


def bench_restore(setup: BenchSetup) -> dict[str, Any]:
    """One whole image: the paper protocol (ours, each precision) vs the official protocol (reference), and the
    PSNR-Y change of each precision's 8-bit output against our fp32 output (the quality check)."""
    w, h = setup.settings.image_size
    clean = bench_image(h * setup.scale, w * setup.scale).to(setup.device)
    gen = torch.Generator().manual_seed(0)
    degraded = setup.model.spec(setup.task).degrade(clean.cpu()[None], gen)[0].to(setup.device)
    rows, outputs = _restore_variants(setup, degraded)
    if f"{OURS}-fp32" not in outputs:  # the quality check needs our fp32 output (computed, not timed)
        tiler = TiledRestorer(lambda t: setup.model(t, setup.task), setup.scale, tile=setup.model.config.patch_size,
                              overlap=10, blend="average", tile_batch=setup.settings.tile_batch)
        with torch.inference_mode():
            outputs[f"{OURS}-fp32"] = tiler(degraded).float()
    _score_variants(rows, outputs, clean, setup.scale if setup.scale > 1 else 0)
    result: dict[str, Any] = {"image_size": [w, h], "tile_batch": setup.settings.tile_batch,
                              "tiles_paper_protocol": count_tiles(h, w),
                              "tiles_official_protocol": official_tile_count(h, w), "variants": rows}
    if setup.reference is not None:
        result["official_protocol"] = official = _official_protocol(setup, degraded)
        for row in rows:
            row["speedup_vs_official_protocol"] = official["seconds"] / row["seconds"]
    return result
