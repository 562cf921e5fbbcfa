"""``ipt bench --what data``: training patches per second per CPU core, per task and crops per decoded image.

What is measured is the data pipeline of one DataLoader worker at pre-training scale: a dataset too large to keep
decoded in memory (the cache is off, so every drawn image is decoded from its file, as with ImageNet), one torch
thread, and for each step: decode ``ceil(batch / crops)`` JPEGs, cut ``batch`` random crops (with flips), degrade
them with the task's plugin. The rate is patches per second of *process CPU time* (the work one core does, which a
machine busy with other jobs slows less than the wall clock); wall-clock rates are recorded too. Variants run
interleaved, one repeat of each in turn, and the median and the spread (min-max) over repeats are reported.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ipt.core.data.batches import TrainBatches
from ipt.core.data.schedule import TaskSchedule
from ipt.core.data.sources import load_images

__all__ = ["bench_data", "format_data", "DEFAULT_TASKS", "DEFAULT_CROPS"]

DEFAULT_TASKS = ("sr2", "denoise30", "derain")
DEFAULT_CROPS = (1, 2, 4, 8, 16)


def _ints(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"{option}: give integers >= 1, got {text!r}")
    return values


def _time_steps(batches: TrainBatches, first: int, steps: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of making ``steps`` batches starting at step ``first``."""
    cpu, wall = time.process_time(), time.perf_counter()
    for step in range(first, first + steps):
        batches[step]
    return time.process_time() - cpu, time.perf_counter() - wall


def bench_data(args: Any) -> dict[str, Any]:
    """Patches/s/core for every (task, crops per image); see the module doc. Returns a JSON-friendly dict."""
    tasks = [t.strip() for t in args.data_tasks.split(",") if t.strip()]
    crops = _ints(args.crops, "--crops")
    for option in ("data_batch", "data_steps", "repeats"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be >= 1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = load_images(args.data_dir)
        variants = {(t, k): TrainBatches(source, [t], TaskSchedule([t], args.seed), batch_size=args.data_batch,
                                         patch_size=48, seed=args.seed, cache_bytes=0, scan_limit=0, crops_per_image=k)
                    for t in tasks for k in crops}
        cpu: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        wall: dict[tuple[str, int], list[float]] = {v: [] for v in variants}
        for v, batches in variants.items():  # warm-up: imports, first decodes, kernel caches
            _time_steps(batches, 0, 1)
        for repeat in range(args.repeats):
            for v, batches in variants.items():
                c, w = _time_steps(batches, 1 + repeat * args.data_steps, args.data_steps)
                cpu[v].append(args.data_steps * args.data_batch / c)
                wall[v].append(args.data_steps * args.data_batch / w)
    finally:
        torch.set_num_threads(threads)
    rows = [{"task": t, "crops_per_image": k, "patches_per_cpu_s": statistics.median(cpu[(t, k)]),
             "min": min(cpu[(t, k)]), "max": max(cpu[(t, k)]), "patches_per_wall_s": statistics.median(wall[(t, k)]),
             "repeats": cpu[(t, k)]} for t, k in variants]
    return {"data": source.name, "images": len(source), "batch": args.data_batch, "steps": args.data_steps,
            "patch_size": 48, "torch_threads": 1, "cache": "off (every drawn image decoded)", "rows": rows}


def format_data(report: dict[str, Any]) -> str:
    lines = [f"\ndata pipeline: {report['data']} ({report['images']} images), batch {report['batch']}, 48 px patches, "
             "1 thread, no decode cache; patches per CPU-second = per core (median, min-max over repeats)",
             f"  {'task':<12}{'crops/img':>10}{'patches/s/core':>16}{'spread':>18}{'wall patches/s':>16}"]
    for r in report["rows"]:
        spread = f"{r['min']:.0f}-{r['max']:.0f}"
        lines.append(f"  {r['task']:<12}{r['crops_per_image']:>10}{r['patches_per_cpu_s']:>16.0f}{spread:>18}"
                     f"{r['patches_per_wall_s']:>16.0f}")
    return "\n".join(lines)


def tasks_meeting(report: dict[str, Any], target: float) -> dict[str, int | None]:
    """The smallest crops-per-image whose median rate reaches ``target`` patches/s/core, per task."""
    out: dict[str, int | None] = {}
    for r in sorted(report["rows"], key=lambda r: r["crops_per_image"]):
        if r["patches_per_cpu_s"] >= target and out.get(r["task"]) is None:
            out[r["task"]] = r["crops_per_image"]
        out.setdefault(r["task"], None)
    return out
