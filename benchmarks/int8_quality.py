"""int8 against fp32 on restored 8-bit images: PSNR-Y change per task and image (``benchmarks/RESULTS.md``).

    python benchmarks/int8_quality.py --tasks denoise30,sr2 [--model DIR] [--cbsd68 DIR] [--set5 DIR]

Images: a 192x192 crop of the held-out built-in photo ``coffee``, the top-left 192x192 of the first three CBSD68
images and the first two Set5 HR images (when their folders are given; never needed), and two synthetic images
outside the calibration photos' range: a smooth saturated magenta gradient and saturated colour blocks. SR inputs
are MATLAB-bicubic downscales (rounded), the other tasks' inputs their own degradation with seed 0. Each image is
restored by ``TaskRestorer`` in fp32 and in int8 (calibrated as ``ipt restore`` calibrates) and scored against
the clean image (PSNR-Y, crop border = the scale for SR).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.pretrained import CheckpointError
from ipt.core.evaluation.metrics import psnr, quantize
from ipt.core.images.io import read_image
from ipt.core.images.photos import photo
from ipt.core.images.resize import imresize
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
from ipt.core.model.ipt import IPT


def images(cbsd68: Path | None, set5: Path | None, size: int = 192) -> dict[str, torch.Tensor]:
    out = {"coffee": read_image(photo("coffee")).rgb[:, 100 : 100 + size, 200 : 200 + size]}
    for folder, count in ((cbsd68, 3), (set5, 2)):
        if folder is not None:
            for p in sorted(folder.glob("*.png"))[:count]:
                out[p.stem] = read_image(p).rgb[:, :size, :size]
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    out["magenta_gradient"] = torch.stack([200 + 55 * xx, 20 * yy, 180 + 75 * yy]).round()
    blocks = torch.zeros(3, size, size)
    half = size // 2
    blocks[0, :half], blocks[2, :, half:], blocks[1, half:, :half] = 255, 255, 255
    out["colour_blocks"] = blocks
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="denoise30,denoise50,sr2,sr3,sr4,deblur,derain")
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--cbsd68", type=Path, default=None, help="CBSD68 folder of PNGs")
    ap.add_argument("--set5", type=Path, default=None, help="Set5 HR folder")
    args = ap.parse_args()
    for folder in (args.cbsd68, args.set5):
        if folder is not None and not folder.is_dir():
            ap.error(f"{folder}: no such folder")
    imgs = images(args.cbsd68, args.set5)
    print("task        " + " ".join(f"{name[:16]:>16s}" for name in imgs))
    for task in args.tasks.split(","):
        try:
            model = IPT.from_pretrained(resolve_model_dir(args.model), tasks=[task]).eval()
        except (OSError, ValueError, CheckpointError) as exc:  # missing task, bad model directory
            ap.error(str(exc))
        spec = model.spec(task)
        border = spec.scale if spec.scale > 1 else 0
        restorers = {d: TaskRestorer(model, task, InferenceOptions(device="cpu", dtype=d)) for d in ("fp32", "int8")}
        deltas = []
        for clean in imgs.values():
            h, w = (n - n % spec.scale for n in clean.shape[-2:])
            clean = clean[:, :h, :w]
            if spec.scale == 1:
                degraded = spec.degrade(clean[None], torch.Generator().manual_seed(0))[0]
            else:
                degraded = imresize(clean.double(), scale=1 / spec.scale).float().clamp(0, 255).round()
            scores = {d: psnr(quantize(r(degraded)).double(), clean.double(), border) for d, r in restorers.items()}
            deltas.append(float(scores["int8"] - scores["fp32"]))
        print(f"{task:12s}" + " ".join(f"{d:+16.4f}" for d in deltas))


if __name__ == "__main__":
    main()
