"""Peak memory and time of whole-image restores, each size in a fresh process (so peak RSS belongs to one job)."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ipt.core.benchmarking.timing import Stopwatch
from ipt.core.inference.precision import precision
from ipt.core.inference.tiling import BORDER, TiledRestorer, count_tiles
from ipt.core.model.config import preset
from ipt.core.model.ipt import IPT

__all__ = ["run_memory_jobs", "memory_jobs", "summarise_memory"]


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


def _job_model(spec: dict[str, Any], models: dict[str, IPT], device: torch.device) -> IPT:
    if spec["preset"] not in models:
        torch.manual_seed(0)
        net = IPT.from_pretrained(spec["model_dir"]) if spec.get("model_dir") else IPT(
            preset(spec["preset"]), [spec["task"]])
        models[spec["preset"]] = net.eval().to(device)
    return models[spec["preset"]]


def _run_job(spec: dict[str, Any], model: IPT, device: torch.device) -> dict[str, Any]:
    import psutil

    scale, h, w = model.scale(spec["task"]), spec["height"], spec["width"]
    image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0)).to(device) * 255
    restorer = TiledRestorer(lambda t: model(t, spec["task"]), scale, tile=model.config.patch_size, overlap=10,
                             tile_batch=spec["tile_batch"])
    gc.collect()
    base = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    exact = _reset_peak_rss()
    base_rss = psutil.Process().memory_info().rss
    with torch.inference_mode(), precision(device, spec["dtype"]), Stopwatch(device) as watch:
        restorer(image)
    result = {"preset": spec["preset"], "height": h, "width": w, "tiles": count_tiles(h, w),
              "seconds": watch.seconds(spec["clock"]), "wall_seconds": watch.wall, "cpu_seconds": watch.cpu,
              "output_mb": 3 * h * w * scale * scale * 4 / 2**20,
              "peak_rss_above_model_mb": max(0, _peak_rss_bytes() - base_rss) / 2**20, "peak_rss_exact": exact}
    if device.type == "cuda":
        result["peak_cuda_above_model_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return result


def _memory_child(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Restore each job's ``height`` x ``width`` image in turn; time and peak memory above the loaded model."""
    models: dict[str, IPT] = {}
    results = []
    for spec in jobs:
        device = torch.device(spec["device"])
        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        results.append(_run_job(spec, _job_model(spec, models, device), device))
    return results


def _memory_main() -> None:  # pragma: no cover - runs in the child process
    print(json.dumps(_memory_child(json.loads(sys.argv[1]))))


def run_memory_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run :func:`_memory_child` on ``jobs`` in a fresh Python process; ``RuntimeError`` with its last line."""
    code = "from ipt.core.benchmarking.memory import _memory_main; _memory_main()"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(jobs)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_jobs(common: dict[str, Any], memory_preset: str, sizes: tuple[int, int], bench_preset: str,
                model_dir: str | None, patch_size: int, tile_batch: int) -> list[dict[str, Any]]:
    """Small, large, small again (the faster small run is kept: the first also warms up), then one tile batch
    of the benchmarked preset: a strip exactly ``tile_batch`` tiles long (less the reflection margin that the
    restorer adds on every side)."""
    small, large = sizes
    jobs = [{**common, "preset": memory_preset, "height": side, "width": side} for side in (small, large, small)]
    jobs.append({**common, "preset": bench_preset, "model_dir": model_dir, "height": patch_size - 2 * BORDER,
                 "width": patch_size + 38 * (tile_batch - 1) - 2 * BORDER})
    return jobs


def summarise_memory(results: list[dict[str, Any]], memory_preset: str, dtype: str, bench_preset: str
                     ) -> dict[str, Any]:
    """Ratios of time and peak memory, large vs small image, and the one-tile-batch peak."""
    first_small, big, second_small, strip = results
    small_sec = min(first_small["seconds"], second_small["seconds"])
    small_peak = max(first_small["peak_rss_above_model_mb"], second_small["peak_rss_above_model_mb"])
    pixels = (big["height"] * big["width"]) / (first_small["height"] * first_small["width"])
    return {
        "preset": memory_preset, "dtype": dtype,
        "small": {**first_small, "seconds": small_sec, "peak_rss_above_model_mb": small_peak},
        "large": big, "pixel_ratio": pixels, "time_ratio": big["seconds"] / small_sec,
        "peak_memory_ratio": big["peak_rss_above_model_mb"] / max(small_peak, 1e-9),
        "one_tile_batch": {**strip, "preset": bench_preset},
    }
