"""This machine's best matmul rate per precision (the denominator of MFU) and what the machine is."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ipt.core.benchmarking.timing import time_interleaved
from ipt.core.model.fused_linear import int8_available, quantize_activation

__all__ = ["matmul_ceiling", "machine_info", "CEILING_DTYPES"]

CEILING_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.int8,
}


def _candidates(device: torch.device, dtype: str, m: int, k: int, n: int) -> dict[str, Callable[[], object]]:
    """The kernels that could run an (m, k) x (k, n) product of ``dtype`` here: BLAS, oneDNN on a packed weight."""
    a = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    if dtype == "int8":  # oneDNN's quantized GEMM, the kernel of --dtype int8: uint8 activations, int8 weights
        q, scale, zp = quantize_activation(a)  # type: ignore[misc]
        wq = torch.randint(-127, 128, (n, k), dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(wq, None)
        ws, wz = torch.full((n,), 0.01), torch.zeros(n, dtype=torch.int32)
        return {"onednn-int8": lambda: torch.ops.onednn.qlinear_pointwise(
            q, scale, zp, packed, ws, wz, None, 1.0, 0, torch.float32, "none", [], "")}
    a, w = a.to(CEILING_DTYPES[dtype]), w.to(CEILING_DTYPES[dtype])
    fns: dict[str, Callable[[], object]] = {"blas": lambda: torch.mm(a, w.t())}
    if device.type == "cpu" and dtype != "fp16" and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        packed_w = torch.ops.mkldnn._reorder_linear_weight(w, m)
        fns["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed_w, None, "none", [], "")
    return fns


def matmul_ceiling(device: torch.device, dtype: str, repeats: int = 5, clock: str = "wall") -> float:
    """GFLOP/s (int8: GOP/s) of this machine's best matmul for ``dtype`` (fp32, bf16, fp16, int8).

    The best median over a large square product (2048^2 on CPU, 8192^2 on CUDA) and one of IPT's own GEMM shapes
    (1024 tokens x 576 -> 2304), with the default BLAS (``torch.mm``) and, on CPU, oneDNN on a pre-packed weight
    (the kernels our inference paths use), whichever is faster. int8 is measured on CPU only (``ValueError``
    elsewhere or without oneDNN's int8 kernels).
    """
    if dtype == "int8" and (device.type != "cpu" or not int8_available()):
        raise ValueError("the int8 ceiling is measured with oneDNN's quantized GEMM on the CPU only")
    big = 2048 if device.type == "cpu" else 8192
    best = 0.0
    for m, k, n in ((big, big, big), (1024, 576, 2304)):
        timings = time_interleaved(_candidates(device, dtype, m, k, n), warmup=2, repeats=repeats, device=device)
        best = max([best] + [2 * m * k * n / statistics.median(t) / 1e9 for t in timings.get(clock).values()])
    return best


def machine_info(device: torch.device) -> dict[str, Any]:
    """Date, platform, CPU model, core and thread counts, torch and Python versions (and the GPU's name)."""
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
