"""``ipt restore``: restore image files of any size with a trained model and write ``OUT_DIR/<stem>.png``.

    ipt restore --task denoise30 --model MODEL_DIR photo.jpg scans/ -o restored/ [--compare --reference REF]

Inputs are files or folders (their images, sorted). Each image is read as RGB (grey -> RGB, alpha kept aside and
re-attached, resized for SR), restored with :class:`~ipt.core.inference.TaskRestorer` and written as an 8-bit PNG
(``--keep-depth`` keeps 16-bit inputs at 16 bit). An image that cannot be read or restored is named on stderr; the
others are still processed and the command exits with 1 and a summary. ``--compare`` also writes
``<stem>_compare.png``: input (nearest-upscaled for SR) | output [| reference], labelled with the task and, with a
reference, the PSNR on Y (task conventions).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

from ipt.core.images.io import IMAGE_EXTENSIONS, ImageReadError, LoadedImage, read_image, to_uint8, write_image

__all__ = ["add_arguments", "run", "compare_panel", "find_reference", "restore_files"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ipt.core.commands.options import add_model_arguments
    from ipt.core.inference.restorer import InferenceOptions

    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    parser.add_argument("--task", required=True, help="task to run, e.g. sr2, denoise30, derain")
    parser.add_argument("--model", metavar="MODEL_DIR", default=None,
                        help="model directory (config.json + model.safetensors); default: the bundled model")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for <stem>.png outputs")
    parser.add_argument("--compare", action="store_true",
                        help="also write <stem>_compare.png: input | output [| reference]")
    parser.add_argument("--reference", metavar="DIR_OR_FILE", default=None,
                        help="clean reference(s) for --compare, matched by file stem; adds the PSNR to the label")
    parser.add_argument("--keep-depth", action="store_true", help="write 16-bit inputs as 16-bit PNGs")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser, InferenceOptions, config_flag=False)


def find_reference(reference: Path | None, stem: str, single_input: bool) -> Path | None:
    """The reference for an input stem: the file itself (one input), or ``DIR/<stem>.<any image ext>``."""
    if reference is None:
        return None
    if reference.is_file():
        return reference if single_input else (reference if reference.stem == stem else None)
    for ext in IMAGE_EXTENSIONS:
        for cand in (reference / f"{stem}{ext}", reference / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def compare_panel(panels: list[tuple[str, Tensor]]) -> "Image.Image":
    """A PIL image of equally sized ``(3, H, W)`` panels side by side, each with its label above it."""
    from PIL import Image, ImageDraw

    h, w = panels[0][1].shape[-2:]
    label_h, gap = 16, 4
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + label_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (label, img) in enumerate(panels):
        x0 = i * (w + gap)
        canvas.paste(Image.fromarray(to_uint8(img)), (x0, label_h))
        draw.text((x0 + 2, 2), label, fill=(0, 0, 0))
    return canvas


def _upscale_nearest(img: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    return torch.nn.functional.interpolate(img[None], size=size, mode="nearest")[0]


def _write_compare(
    out_path: Path, task: str, scale: int, crop_border: int, loaded: LoadedImage, restored: Tensor,
    reference: Path | None, warn: Callable[[str], None],
) -> None:
    from ipt.core.evaluation.metrics import quantize, score

    size = (int(restored.shape[-2]), int(restored.shape[-1]))
    output_label = task
    panels = [("input" + (f" (x{scale} nearest)" if scale > 1 else ""), _upscale_nearest(loaded.rgb, size))]
    ref_panel = None
    if reference is not None:
        ref = read_image(reference).rgb
        rh, rw = ref.shape[-2:]
        # An SR reference may exceed the output by < scale pixels (sizes not divisible by the scale): modcrop.
        if size[0] <= rh < size[0] + scale and size[1] <= rw < size[1] + scale:
            ref = ref[:, : size[0], : size[1]]
            s = score(restored, ref, scale, crop_border=crop_border)
            output_label = f"{task}  PSNR-Y {s['psnr_y']:.2f} dB"
            ref_panel = ("reference", ref)
        else:
            warn(f"{reference}: reference is {rh}x{rw}, output is {size[0]}x{size[1]}; no PSNR")
    panels.append((output_label, quantize(restored)))
    if ref_panel is not None:
        panels.append(ref_panel)
    image = compare_panel(panels)
    write_rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()
    write_image(out_path, write_rgb)


def _check_collisions(paths: list[Path], out_dir: Path) -> None:
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p)
    clashes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if clashes:
        listed = "; ".join(f"{out_dir / (s + '.png')} <- {', '.join(map(str, ps))}" for s, ps in clashes.items())
        raise ValueError(f"several inputs would write the same output: {listed}")


def restore_files(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ipt.core.commands.options import parse_config
    from ipt.core.images.io import iter_images
    from ipt.core.inference.restorer import InferenceOptions, TaskRestorer, load_task_model, resolve_device

    options = parse_config(InferenceOptions, args)
    paths = list(iter_images(args.inputs))
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: -o must be a folder")
    _check_collisions(paths, out_dir)
    reference = Path(args.reference) if args.reference else None
    if reference is not None and not reference.exists():
        raise FileNotFoundError(f"{reference}: --reference not found")
    if reference is not None and not args.compare:
        raise ValueError("--reference is only used with --compare")

    device = resolve_device(options.device)
    model = load_task_model(args.model, args.task, device)
    restorer = TaskRestorer(model, args.task, options)
    spec = model.spec(args.task)
    out_dir.mkdir(parents=True, exist_ok=True)

    quiet = args.quiet
    failures: list[tuple[Path, str]] = []
    written = 0
    t0 = time.perf_counter()
    images_bar = tqdm(paths, desc="images", unit="img", disable=quiet or None, file=sys.stderr)
    tiles_bar = tqdm(total=0, desc="tiles", unit="tile", leave=False, disable=quiet or None, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        tiles_bar.total = total
        tiles_bar.n = done
        tiles_bar.refresh()

    def warn(msg: str) -> None:
        tqdm.write(f"ipt restore: warning: {msg}", file=sys.stderr)

    for path in images_bar:
        try:
            loaded = read_image(path)
            tiles_bar.reset()
            restored = restorer(loaded.rgb, progress=progress)
            depth = 16 if args.keep_depth and loaded.bit_depth == 16 else 8
            write_image(out_dir / f"{path.stem}.png", restored, loaded.alpha, bit_depth=depth)
            if args.compare:
                ref = find_reference(reference, path.stem, len(paths) == 1)
                if reference is not None and ref is None:
                    warn(f"no reference for {path.name} in {reference}")
                _write_compare(out_dir / f"{path.stem}_compare.png", args.task, spec.scale, spec.crop_border,
                               loaded, restored, ref, warn)
            written += 1
        except (ImageReadError, OSError, ValueError, RuntimeError) as exc:
            reason = exc.reason if isinstance(exc, ImageReadError) else str(exc).splitlines()[0]
            failures.append((path, reason))
            tqdm.write(f"ipt restore: {path}: {reason}", file=sys.stderr)
    tiles_bar.close()
    images_bar.close()

    seconds = time.perf_counter() - t0
    print(f"restored {written} of {len(paths)} image(s) with {args.task} into {out_dir} "
          f"({restorer.tiles} tiles, {seconds:.1f} s)")
    if failures:
        listed = ", ".join(f"{p.name} ({why})" for p, why in failures)
        print(f"ipt restore: {len(failures)} of {len(paths)} images failed: {listed}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    return restore_files(args)
