"""Before/after ratios of single optimisations of the IPT model (the table in ``benchmarks/RESULTS.md``).

Each idea is measured as a pair of variants of the same model (same weights, same inputs), timed interleaved with
:func:`ipt.core.benchmarking.timing.time_interleaved`; the ratio is the median over repeats of before/after.

    python benchmarks/ablate.py --preset paper --batch 4 --repeats 5 --threads 1 --clock cpu
    python benchmarks/ablate.py --only sdpa,residual     # a subset

"Before" switches an optimisation off by swapping the function that implements it for the plain one, so
everything else stays identical.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

import ipt.core.model.ipt as model_module
from ipt.core.benchmarking.sections import make_optimizer
from ipt.core.benchmarking.timing import median_ratio, time_interleaved
from ipt.core.model.config import PRESETS, preset
from ipt.core.model.fused_linear import onednn_paths
from ipt.core.model import IPT


def plain_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention with the weights materialised (what the official nn.MultiheadAttention does)."""
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return w @ v  # (B, H, N, d), contiguous: the head merge afterwards copies


_fused_linear = model_module.linear


def unfused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False,
                   residual: torch.Tensor | None = None, **kw: Any) -> torch.Tensor:
    """``model_module.linear`` with the residual added afterwards instead of inside the GEMM."""
    y = _fused_linear(x, weight, bias, relu=relu, **kw)
    return y if residual is None else residual + y


@contextlib.contextmanager
def patched(name: str, value: Any) -> Iterator[None]:
    old = getattr(model_module, name) if hasattr(model_module, name) else None
    setattr(model_module, name, value)
    try:
        yield
    finally:
        setattr(model_module, name, old)


def _sdpa_patch() -> Any:
    """``model_module.F`` with only scaled_dot_product_attention replaced."""

    class _F:
        def __getattr__(self, item: str) -> Any:
            return getattr(F, item)

        scaled_dot_product_attention = staticmethod(plain_sdpa)

    return _F()


def ideas(model: IPT, x: torch.Tensor, task: str) -> dict[str, tuple[str, Callable[[], object], Callable[[], object]]]:
    """name -> (description, before, after)."""

    def fwd(m: IPT = model, inp: torch.Tensor = x) -> torch.Tensor:
        return m(inp, task)

    def with_patch(name: str, value: Any) -> Callable[[], object]:
        def run() -> object:
            with patched(name, value):
                return fwd()

        return run

    def without_onednn(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            with onednn_paths(inference=False):
                return fn()

        return run

    def bf16(m: IPT = model, inp: torch.Tensor = x) -> Callable[[], object]:
        def run() -> object:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return m(inp, task)

        return run

    cl = copy.deepcopy(model)
    cl.heads.to(memory_format=torch.channels_last)
    cl.tails.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def no_mkldnn() -> object:
        with torch.backends.mkldnn.flags(enabled=False):
            return fwd()

    return {
        "sdpa": ("SDPA (flash kernel) vs attention with materialised weights", with_patch("F", _sdpa_patch()), fwd),
        "onednn": ("oneDNN linear layers on packed weights (fused bias/ReLU/residual) vs default BLAS (F.linear)",
                   without_onednn(fwd), fwd),
        "residual": ("residual add fused into the projection GEMMs vs a separate add (on top of oneDNN)",
                     with_patch("linear", unfused_linear), fwd),
        "bf16": ("bf16 autocast vs fp32", fwd, bf16()),
        "channels_last": ("channels-last heads/tails vs contiguous (NCHW)", fwd, lambda: fwd(cl, x_cl)),
        "mkldnn": ("oneDNN (mkldnn) convolutions vs the native CPU kernels", no_mkldnn, fwd),
    }


def train_ideas(model: IPT, x: torch.Tensor, task: str) -> dict[str, tuple[str, Callable[[], object], Callable[[], object]]]:
    scale = model.scale(task)
    target = torch.rand(x.shape[0], 3, x.shape[2] * scale, x.shape[3] * scale) * 255

    def step(m: IPT, opt: torch.optim.Optimizer, autocast: bool = False, onednn: bool = True) -> Callable[[], object]:
        def run() -> object:
            with onednn_paths(training=onednn):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = m(x, task)
                F.l1_loss(out.float(), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return None

        return run

    a, b = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    c, d = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    e, f = copy.deepcopy(model).train(), copy.deepcopy(model).train()
    return {
        "onednn_train": ("training step, fp32: oneDNN forward + input-gradient GEMMs with fused epilogues "
                         "(OneDNNLinearFunction) vs F.linear/addmm autograd (MKL)",
                         step(e, make_optimizer(e.parameters(), 1e-4), onednn=False),
                         step(f, make_optimizer(f.parameters(), 1e-4))),
        "fused_adam": ("training step: fused Adam vs default (for-loop/foreach) Adam",
                       step(a, torch.optim.Adam(a.parameters(), lr=1e-4)), step(b, make_optimizer(b.parameters(), 1e-4))),
        "train_bf16": ("training step: bf16 autocast vs fp32 (both fused Adam)",
                       step(c, make_optimizer(c.parameters(), 1e-4)),
                       step(d, make_optimizer(d.parameters(), 1e-4), autocast=True)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=list(PRESETS), default="paper")
    p.add_argument("--task", default="denoise30")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    p.add_argument("--only", default=None, help="comma-separated idea names")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = IPT(preset(args.preset), [args.task]).eval()
    x = torch.rand(args.batch, 3, 48, 48, generator=torch.Generator().manual_seed(1)) * 255
    only = set(args.only.split(",")) if args.only else None
    results = []
    groups = [(ideas(model, x, args.task), True), (train_ideas(model, x, args.task), False)]
    known = [name for table, _ in groups for name in table]
    if only and only - set(known):
        p.error(f"--only: unknown idea(s) {', '.join(sorted(only - set(known)))}; known: {', '.join(known)}")
    for table, inference in groups:
        for name, (desc, before, after) in table.items():
            if only and name not in only:
                continue
            ctx = torch.inference_mode() if inference else contextlib.nullcontext()
            # inference: keep autocast's weight cache across calls (as one autocast around a whole restore does)
            with ctx, torch.autocast("cpu", enabled=False) if inference else contextlib.nullcontext():
                t = time_interleaved({"before": before, "after": after}, args.warmup, args.repeats, torch.device("cpu"))
            times = t.get(args.clock)
            row = {"idea": name, "description": desc, "clock": args.clock,
                   "before_s": statistics.median(times["before"]), "after_s": statistics.median(times["after"]),
                   "speedup": median_ratio(times["before"], times["after"]),
                   "speedup_wall": median_ratio(t.wall["before"], t.wall["after"])}
            results.append(row)
            print(f"{name:<14} {row['before_s']:8.3f} s -> {row['after_s']:8.3f} s  x{row['speedup']:.3f} "
                  f"({args.clock}; wall x{row['speedup_wall']:.3f})  {desc}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"settings": vars(args), "torch_threads": torch.get_num_threads(), "results": results}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
