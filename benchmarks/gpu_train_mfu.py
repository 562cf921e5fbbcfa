"""Training and inference throughput of IPT on one GPU, as a fraction of the GPU's measured bf16 matmul ceiling.

    python benchmarks/gpu_train_mfu.py --device cuda --preset paper --json out/gpu_mfu.json   # ~5-8 min on an H200
    python benchmarks/gpu_train_mfu.py --device cpu --preset tiny --steps 3 --warmup 1 --infer-batch 8 --batch 4
                                                                          # the CPU smoke run (tests run it)

What the training step does, and why (the GPU path of issue 15):

* ``torch.compile`` of the model (forward and, through AOTAutograd, its backward); ``--no-compile`` for eager;
* bf16 autocast around forward and loss (matmuls and convolutions in bf16, LayerNorm/softmax/loss in fp32);
* fused Adam (one kernel for the whole update) where the build has it;
* no host-device synchronisation inside the timed loop: the loss is summed on the device and read once at the
  end (a ``.item()`` per step would drain the GPU's queue every step);
* data off the critical path: batches are degraded on the CPU in a background thread (``prefetch``), kept in
  pinned memory and copied with ``non_blocking=True``, so the copy overlaps the previous step's kernels.

MFU = (patches/s x FLOPs per patch) / measured bf16 matmul GFLOP/s, where FLOPs per patch are counted by
``torch.utils.flop_counter`` on the model (x3 for a training step: forward + gradients of inputs and weights).
The ceiling is the best of an 8192^2 bf16 product and IPT's own 1024x576x2304 GEMM (``matmul_ceiling``).
Every phase checks ``--time-budget`` (seconds, default 500) and stops measuring when it is spent.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from ipt.core.benchmarking.ceiling import machine_info, matmul_ceiling
from ipt.core.benchmarking.flops import counted_flops_per_patch
from ipt.core.benchmarking.sections import bench_image, make_optimizer
from ipt.core.benchmarking.timing import sync
from ipt.core.files import atomic_write_text
from ipt.core.inference.folder import prefetch
from ipt.core.model.config import PRESETS, preset
from ipt.core.model.ipt import IPT


def synthetic_batches(model: IPT, task: str, batch: int, seed: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (degraded, clean) training batches: random crops of a built-in photo degraded by the task's plugin,
    in pinned memory when CUDA is available (so the host-to-device copy can run asynchronously)."""
    spec, size = model.spec(task), model.config.patch_size
    photo = bench_image(512, 512)
    gen = torch.Generator().manual_seed(seed)
    pin = torch.cuda.is_available()
    while True:
        top = torch.randint(0, 512 - size * spec.scale + 1, (batch,), generator=gen)
        left = torch.randint(0, 512 - size * spec.scale + 1, (batch,), generator=gen)
        side = size * spec.scale
        hr = torch.stack([photo[:, t:t + side, s:s + side] for t, s in zip(top.tolist(), left.tolist())])
        lr = spec.degrade(hr, gen).float()
        yield (lr.pin_memory(), hr.pin_memory()) if pin else (lr, hr)


def ceiling(device: torch.device) -> float:
    """The bf16 matmul ceiling (GFLOP/s) of this device (measured, wall clock)."""
    return matmul_ceiling(device, "bf16", repeats=5, clock="wall")


def train_throughput(model: IPT, task: str, args: argparse.Namespace, device: torch.device, deadline: float
                     ) -> dict[str, Any]:
    """Training steps per second (wall clock, device synchronised only at the ends of the timed window)."""
    model.train()
    opt = make_optimizer(model.parameters(), lr=1e-4)
    net = torch.compile(model) if args.compile else model
    data = prefetch(synthetic_batches(model, task, args.batch), size=4)
    losses = torch.zeros((), device=device)

    def step() -> None:
        nonlocal losses
        lr, hr = next(data)
        lr, hr = lr.to(device, non_blocking=True), hr.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            out = net(lr, task)
        loss = F.l1_loss(out.float(), hr)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses = losses + loss.detach()  # on the device: no sync

    t0 = time.perf_counter()
    for _ in range(args.warmup):  # includes compilation
        step()
    sync(device)
    compile_s = time.perf_counter() - t0
    steps, t0 = 0, time.perf_counter()
    while steps < args.steps and time.perf_counter() < deadline:
        step()
        steps += 1
    sync(device)
    seconds = time.perf_counter() - t0
    data.close()
    return {"steps": steps, "seconds": seconds, "patches_per_s": steps * args.batch / max(seconds, 1e-12),
            "warmup_seconds_incl_compile": compile_s, "mean_loss": float(losses) / max(steps + args.warmup, 1)}


def infer_throughput(model: IPT, task: str, args: argparse.Namespace, device: torch.device, deadline: float
                     ) -> dict[str, Any]:
    """Inference patches per second (bf16 autocast, ``inference_mode``), batches of ``--infer-batch``."""
    model.eval()
    net = torch.compile(model) if args.compile else model
    size = model.config.patch_size
    x = torch.rand(args.infer_batch, 3, size, size, device=device) * 255
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            net(x, task)
        sync(device)
        compile_s = time.perf_counter() - t0
        calls, t0 = 0, time.perf_counter()
        while calls < args.steps and time.perf_counter() < deadline:
            net(x, task)
            calls += 1
        sync(device)
        seconds = time.perf_counter() - t0
    return {"calls": calls, "seconds": seconds, "patches_per_s": calls * args.infer_batch / max(seconds, 1e-12),
            "warmup_seconds_incl_compile": compile_s}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", choices=list(PRESETS), default="paper")
    p.add_argument("--task", default="denoise30")
    p.add_argument("--batch", type=int, default=64, help="patches per training step (default 64)")
    p.add_argument("--infer-batch", type=int, default=256, help="patches per inference call (default 256)")
    p.add_argument("--steps", type=int, default=50, help="timed steps / inference calls (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing, compilation included")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--time-budget", type=float, default=500.0, help="seconds for the whole run (default 500)")
    p.add_argument("--json", default=None, metavar="PATH")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    model = IPT(preset(args.preset), [args.task]).to(device)
    flops = counted_flops_per_patch(model, args.task)
    peak = ceiling(device)
    print(f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}: bf16 matmul ceiling "
          f"{peak:.0f} GFLOP/s; {flops / 1e9:.2f} GFLOP per patch", flush=True)
    budget_end = start + args.time_budget
    train = train_throughput(model, args.task, args, device, start + 0.6 * args.time_budget)
    train["mfu"] = train["patches_per_s"] * 3 * flops / 1e9 / peak
    print(f"train (batch {args.batch}, compile={args.compile}): {train['patches_per_s']:.0f} patches/s, "
          f"MFU {100 * train['mfu']:.1f}% (warm-up {train['warmup_seconds_incl_compile']:.0f} s)", flush=True)
    infer = infer_throughput(model, args.task, args, device, budget_end)
    infer["mfu"] = infer["patches_per_s"] * flops / 1e9 / peak
    print(f"inference (batch {args.infer_batch}): {infer['patches_per_s']:.0f} patches/s, "
          f"MFU {100 * infer['mfu']:.1f}%", flush=True)
    report = {"machine": machine_info(device), "settings": vars(args), "flops_per_patch": flops,
              "ceiling_bf16_gflops": peak, "train": train, "inference": infer,
              "seconds_total": time.perf_counter() - start, "command": " ".join(sys.argv)}
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
