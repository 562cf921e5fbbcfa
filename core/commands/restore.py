"""``ipt restore``: restore image files of any size with a trained model and write ``OUT_DIR/<stem>.png``.

    ipt restore --task denoise30 --model MODEL_DIR photo.jpg scans/ -o restored/ [--compare --reference REF]

Inputs are files or folders (their images, sorted). Each image is read as RGB, restored with
:class:`~ipt.core.inference.TaskRestorer` and written as an 8-bit PNG (``--keep-depth`` keeps 16-bit inputs at 16
bit). Grey inputs (L, I;16, LA, or R = G = B) come back grey in their own mode (:mod:`ipt.core.images.channels`);
alpha is kept aside, resized with the image and re-attached, and the colour hidden under fully transparent pixels
is replaced by the visible colour before restoring (no halo). Nothing is written over an input: an output that
would replace an input image or reference, or ``-o`` set to an input folder, is refused before the model loads
(``--suffix TEXT`` names outputs ``<stem>TEXT.png`` to write beside the inputs). An image that cannot be read or
restored (unreadable, over the pixel limit, out of memory, non-finite output) is named on stderr; the others are
still processed and the command exits with 1 and a summary. ``--compare`` also writes
``<stem>_compare.png``: input (nearest-upscaled for SR) | output [| reference], labelled with the task and, with a
reference, the PSNR on Y (task conventions).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from ipt.core.inference.restorer import InferenceOptions, TaskRestorer
    from ipt.registry.spec import TaskSpec

from ipt.core.files import check_not_inputs
from ipt.core.inference.folder import restore_all
from ipt.core.images.channels import fill_transparent, grey_plane
from ipt.core.images.extra import is_extra_input_file, with_extra_inputs
from ipt.core.images.io import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    LoadedImage,
    iter_images,
    read_image,
    to_uint8,
    write_image,
)
from ipt.core.inference.onnx import onnx_restorer
from ipt.registry import get_task

if TYPE_CHECKING:  # pragma: no cover
    from ipt.core.inference.restorer import TaskRestorer

__all__ = ["add_arguments", "compare_panel", "find_reference", "restore_files", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ipt.core.commands.options import add_model_arguments
    from ipt.core.inference.restorer import InferenceOptions

    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    parser.add_argument("--task", required=True, help="task to run, e.g. sr2, denoise30, derain")
    parser.add_argument("--model", metavar="MODEL_DIR", default=None,
                        help="model directory (config.json + model.safetensors), Hub repo id user/name[@revision], "
                        "or with --backend onnx an .onnx file; default: the bundled model")
    parser.add_argument("--backend", choices=("torch", "onnx"), default="torch",
                        help="torch: this package's model; onnx: an 'ipt export --format onnx' file run by ONNX "
                        "Runtime on the CPU (same tiling)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT_DIR", help="folder for <stem>.png outputs")
    parser.add_argument("--compare", action="store_true",
                        help="also write <stem>_compare.png: input | output [| reference]")
    parser.add_argument("--reference", metavar="DIR_OR_FILE", default=None,
                        help="clean reference(s) for --compare, matched by file stem; adds the PSNR to the label")
    parser.add_argument("--keep-depth", action="store_true", help="write 16-bit inputs as 16-bit PNGs")
    parser.add_argument("--suffix", default="", metavar="TEXT",
                        help="name outputs <stem>TEXT.png (lets -o be the input folder: outputs beside the inputs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser, InferenceOptions, config_flag=False)


def find_reference(reference: Path | None, stem: str, single_input: bool) -> Path | None:
    """The reference for an input stem: the file itself (one input), or ``DIR/<stem>.<any image ext>``."""
    if reference is None:
        return None
    if reference.is_file():
        return reference if single_input else (reference if reference.stem == stem else None)
    for ext in sorted(IMAGE_EXTENSIONS):
        for cand in (reference / f"{stem}{ext}", reference / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def compare_panel(panels: list[tuple[str, Tensor]]) -> Image.Image:
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


def _output_names(paths: list[Path], out_dir: Path, suffix: str, compare: bool) -> list[tuple[Path, Path | None]]:
    """``(OUT_DIR/<stem><suffix>.png, OUT_DIR/<stem><suffix>_compare.png or None)`` per input; two inputs with the
    same stem are refused (they would write one file)."""
    by_stem: dict[str, list[Path]] = {}
    for p in paths:
        by_stem.setdefault(p.stem, []).append(p)
    clashes = {s: ps for s, ps in by_stem.items() if len(ps) > 1}
    if clashes:
        listed = "; ".join(f"{out_dir / (s + suffix + '.png')} <- {', '.join(map(str, ps))}" for s, ps in clashes.items())
        raise ValueError(f"several inputs would write the same output: {listed}")
    return [(out_dir / f"{p.stem}{suffix}.png", out_dir / f"{p.stem}{suffix}_compare.png" if compare else None)
            for p in paths]


def _restorer(args: argparse.Namespace, options: "InferenceOptions") -> tuple["TaskRestorer", "TaskSpec"]:
    """The restorer of ``--backend`` and the task's spec (scale, metric conventions)."""
    from ipt.core.inference.restorer import (
        TaskRestorer,
        load_task_model,
        resolve_device,
    )

    if args.backend == "onnx":
        if args.model is None:
            raise ValueError("--backend onnx needs --model FILE.onnx (written by 'ipt export --format onnx')")
        return onnx_restorer(args.model, args.task, options), get_task(args.task)
    model = load_task_model(args.model, args.task, resolve_device(options.device))
    return TaskRestorer(model, args.task, options), model.spec(args.task)


def _check_outputs(args: argparse.Namespace, paths: list[Path], outputs: list[tuple[Path, Path | None]],
                   reference: Path | None) -> None:
    """No output may replace an input image or a reference; without ``--suffix``, ``-o`` may not be an input
    folder either (the outputs would mix with the photos they came from)."""
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: -o must be a folder")
    hint = "choose another -o folder, or add --suffix to write beside the input under a new name"
    if not args.suffix:
        folders = [p for p in map(Path, args.inputs) if p.is_dir()]
        check_not_inputs(folders, "-o", writes=[f for f in folders if f.resolve() == out_dir.resolve()], hint=hint)
    files = [f for pair in outputs for f in pair if f is not None]
    check_not_inputs([*paths, *([reference] if reference else [])], "-o", writes=files, hint=hint)


def _network_input(restorer: TaskRestorer, loaded: LoadedImage, path: Path | None = None) -> Tensor:
    """What the network restores: the RGB pixels with the hidden colour under alpha = 0 replaced (no halo), then
    the task's extra inputs (a mask ...) read from beside ``path``."""
    rgb = fill_transparent(loaded.rgb, loaded.alpha)
    extras = restorer.model.spec(restorer.task).extra_inputs if restorer.model is not None else ()
    return with_extra_inputs(path, rgb, extras) if path is not None and extras else rgb


def _as_input_kind(restored: Tensor, loaded: LoadedImage) -> Tensor:
    """The network's output brought back to the input's kind: ``(3, H', W')``, or ``(1, H', W')`` for
    one-channel grey files; grey inputs come back with R = G = B; a non-finite output (damaged weights) raises
    ``ValueError`` instead of writing a black image."""
    if not bool(torch.isfinite(restored).all()):
        bad = int((~torch.isfinite(restored)).sum())
        raise ValueError(f"the model output has {bad} non-finite values (NaN/inf): are its weights damaged?")
    if loaded.grey:
        plane = grey_plane(restored)
        return plane if loaded.channels == 1 else plane.expand(3, -1, -1).contiguous()
    return restored


class _Progress:
    """The two progress bars of ``ipt restore`` (images, tiles of the current image) and its stderr lines."""

    def __init__(self, total: int, quiet: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.images = tqdm(total=total, desc="images", unit="img", disable=quiet or None, file=sys.stderr)
        self.tiles = tqdm(total=0, desc="tiles", unit="tile", leave=False, disable=quiet or None, file=sys.stderr)

    def tile(self, done: int, total: int) -> None:
        self.tiles.total = total
        self.tiles.n = done
        self.tiles.refresh()

    def say(self, msg: str) -> None:
        self._tqdm.write(f"ipt restore: {msg}", file=sys.stderr)

    def close(self) -> None:
        self.tiles.close()
        self.images.close()


@dataclass
class _Run:
    """What every image of one ``ipt restore`` call shares."""

    args: argparse.Namespace
    restorer: TaskRestorer
    crop_border: int
    reference: Path | None
    single: bool
    bars: _Progress


def _restore_one(run: _Run, path: Path, out: Path, compare: Path | None) -> None:
    """Read, restore and write one input (and its comparison panel); raises on any failure of this image."""
    loaded = read_image(path)
    run.bars.tiles.reset()
    _write_one(run, path, out, compare, loaded, run.restorer(_network_input(run.restorer, loaded, path), progress=run.bars.tile))


def _restore_many(run: _Run, paths: list[Path], outputs: list[tuple[Path, Path | None]],
                  failures: list[tuple[Path, str]]) -> None:
    """Several inputs as one stream (:func:`ipt.core.inference.folder.restore_all`): decoded ahead in a thread,
    tile batches filled across images, written behind; each output equals :func:`_restore_one`'s."""
    names = dict(zip(paths, outputs))

    def load(path: Path) -> tuple[LoadedImage, Tensor]:
        loaded = read_image(path)
        return loaded, _network_input(run.restorer, loaded, path)

    def finish(path: Path, loaded: LoadedImage, restored: Tensor) -> None:
        _write_one(run, path, *names[path], loaded, restored)

    def done(path: Path, exc: BaseException | None) -> None:
        if exc is not None:
            if not isinstance(exc, (ImageReadError, OSError, ValueError, RuntimeError, MemoryError)):
                raise exc
            failures.append((path, _reason(exc)))
            run.bars.say(f"{path}: {_reason(exc)}")
        run.bars.images.update()

    restore_all(run.restorer, paths, load, finish, done)


def _write_one(run: _Run, path: Path, out: Path, compare: Path | None, loaded: LoadedImage, network_output: Tensor
               ) -> None:
    """Write one restored image (and its comparison panel); raises on any failure of this image."""
    restored = _as_input_kind(network_output, loaded)
    depth = 16 if run.args.keep_depth and loaded.bit_depth == 16 else 8
    write_image(out, restored, loaded.alpha, bit_depth=depth)
    if compare is not None:
        ref = find_reference(run.reference, path.stem, run.single)
        if run.reference is not None and ref is None:
            run.bars.say(f"warning: no reference for {path.name} in {run.reference}")
        _write_compare(compare, run.args.task, run.restorer.scale, run.crop_border, loaded,
                       restored.expand(3, -1, -1), ref, lambda m: run.bars.say(f"warning: {m}"))


def _check_reference(args: argparse.Namespace) -> Path | None:
    reference = Path(args.reference) if args.reference else None
    if reference is not None and not reference.exists():
        raise FileNotFoundError(f"{reference}: --reference not found")
    if reference is not None and not args.compare:
        raise ValueError("--reference is only used with --compare")
    return reference


def restore_files(args: argparse.Namespace) -> int:
    """``ipt restore``: check every input and output first, load the model, then restore (several images as one
    stream, see :func:`_restore_many`); an image that fails (unreadable, too large, out of memory, non-finite output) is reported and skipped."""
    from ipt.core.commands.options import parse_config
    from ipt.core.inference.restorer import InferenceOptions

    options = parse_config(InferenceOptions, args)
    extras = get_task(args.task).extra_inputs  # e.g. photo_mask.png beside photo.png: read with it, not restored
    found = list(iter_images(args.inputs))
    paths = [p for p in found if not is_extra_input_file(p, extras, found)]
    out_dir = Path(args.output)
    reference = _check_reference(args)
    outputs = _output_names(paths, out_dir, args.suffix, args.compare)
    _check_outputs(args, paths, outputs, reference)

    restorer, spec = _restorer(args, options)
    out_dir.mkdir(parents=True, exist_ok=True)

    failures: list[tuple[Path, str]] = []
    t0 = time.perf_counter()
    bars = _Progress(len(paths), args.quiet)
    run = _Run(args, restorer, spec.crop_border, reference, len(paths) == 1, bars)
    if len(paths) == 1:  # one image: no threads, a tile progress bar
        try:
            _restore_one(run, paths[0], *outputs[0])
        except (ImageReadError, OSError, ValueError, RuntimeError, MemoryError) as exc:
            failures.append((paths[0], _reason(exc)))
            bars.say(f"{paths[0]}: {_reason(exc)}")
        bars.images.update()
    else:
        _restore_many(run, paths, outputs, failures)
    bars.close()
    return _summary(args, paths, failures, restorer.tiles, time.perf_counter() - t0)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ImageReadError):
        return exc.detail
    if isinstance(exc, MemoryError):
        return "out of memory restoring this image (try a smaller --tile-batch, or a smaller image)"
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _summary(args: argparse.Namespace, paths: list[Path], failures: list[tuple[Path, str]], tiles: int,
             seconds: float) -> int:
    written = len(paths) - len(failures)
    print(f"restored {written} of {len(paths)} image(s) with {args.task} into {args.output} "
          f"({tiles} tiles, {seconds:.1f} s)")
    if failures:
        listed = ", ".join(f"{p.name} ({why})" for p, why in failures)
        print(f"ipt restore: {len(failures)} of {len(paths)} images failed: {listed}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    return restore_files(args)
