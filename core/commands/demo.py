"""``ipt demo``: degrade a packaged photo with every task of a model, restore it, score it, draw a grid."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.inference.restorer import TaskRestorer
from ipt.core.evaluation.metrics import quantize, score
from ipt.core.model.ipt import IPT
from ipt.core.images.photos import HELD_OUT, centre_crop
from ipt.core.images.resize import imresize

CROP = 192  # divisible by 2, 3 and 4, so every SR task sees an exact downscale
LABEL_H = 18


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--photo", default=HELD_OUT[0], help=f"packaged photo to use (default: {HELD_OUT[0]}, held out of training)")
    parser.add_argument("-o", "--out", "--output", dest="out", type=Path, default=Path("ipt-demo"),
                        help="folder for demo.png (default: ./ipt-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the degradations")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def load_crop(name: str, size: int = CROP) -> torch.Tensor:
    """Centre crop ``size`` x ``size`` of a packaged photo, float (3,H,W) on 0-255."""
    return centre_crop(name, size)


def _to_pil(x: torch.Tensor, size: int) -> Image.Image:
    """(3,h,w) 0-255 -> PIL, nearest-upscaled to ``size`` (so LR inputs show their pixels)."""
    arr = quantize(x).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    img = Image.fromarray(arr)
    return img if img.size == (size, size) else img.resize((size, size), Image.NEAREST)


def draw_grid(rows: list[tuple[str, list[tuple[str, torch.Tensor]]]], size: int = CROP) -> Image.Image:
    """One row per task: labelled panels of equal size."""
    cols = max(len(panels) for _, panels in rows)
    grid = Image.new("RGB", (cols * size, len(rows) * (size + LABEL_H)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (task, panels) in enumerate(rows):
        y0 = r * (size + LABEL_H)
        for c, (label, img) in enumerate(panels):
            grid.paste(_to_pil(img, size), (c * size, y0 + LABEL_H))
            draw.text((c * size + 3, y0 + 3), f"{task}: {label}" if c else f"{task}: {label}", fill="black")
    return grid


def restore_every_task(model: IPT, photo_name: str, seed: int = 0) -> tuple[list[dict], Image.Image]:
    clean = load_crop(photo_name)
    results, rows = [], []
    for task in model.task_names:
        spec = model.spec(task)
        s = spec.scale
        degraded = spec.degrade(clean.unsqueeze(0), torch.Generator().manual_seed(seed))[0]
        t0 = time.perf_counter()
        restored = TaskRestorer(model, task)(degraded)  # paper protocol, clamped to [0, 255]
        seconds = time.perf_counter() - t0
        if s > 1:
            shown_input = degraded.repeat_interleave(s, -1).repeat_interleave(s, -2)
            baseline = imresize(degraded, scale=s)
        else:
            shown_input = baseline = degraded
        border, space = spec.crop_border, spec.metrics.color_space
        res = {
            "task": task,
            "input_psnr": score(shown_input, clean, s, space, border)["psnr"],
            "output_psnr": score(restored, clean, s, space, border)["psnr"],
            "baseline_psnr": score(baseline, clean, s, space, border)["psnr"],
            "baseline": "bicubic" if s > 1 else "degraded input",
            "metric": f"PSNR {'Y' if space == 'y' else 'RGB'} (dB), border {border}",
            "seconds": round(seconds, 3),
        }
        results.append(res)
        rows.append((task, [("clean", clean), ("degraded", shown_input),
                            (f"restored {res['output_psnr']:.2f} dB", restored)]))
    return results, draw_grid(rows)


def run(args: argparse.Namespace) -> int:
    model_dir = resolve_model_dir(args.model)
    t0 = time.perf_counter()
    model = IPT.from_pretrained(model_dir).eval()
    results, grid = restore_every_task(model, args.photo, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    picture = args.out / "demo.png"
    grid.save(picture)
    if args.json:
        print(json.dumps({"model": str(model_dir), "photo": args.photo, "picture": str(picture), "tasks": results}, indent=2))
        return 0
    held = "held out of training" if args.photo in HELD_OUT else "a TRAINING photo of the bundled model: optimistic scores"
    print(f"model: {model_dir}  photo: {args.photo} (centre {CROP}x{CROP}, {held})")
    print(f"{'task':<10} {'input PSNR':>10} {'output PSNR':>11} {'baseline PSNR':>13}  baseline")
    for r in results:
        print(f"{r['task']:<10} {r['input_psnr']:>10.2f} {r['output_psnr']:>11.2f} {r['baseline_psnr']:>13.2f}  {r['baseline']}")
    print(f"PSNR on Y (BT.601), SR border crop = scale. Picture: {picture}  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace(model=None, photo=HELD_OUT[0], out=Path("ipt-demo"), seed=0, json=False)))
