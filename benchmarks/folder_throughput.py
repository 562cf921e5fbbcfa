"""Many small images: image by image (release 0.1's flow) against the stream of ``ipt restore`` (issue 15, item 2).

    python benchmarks/folder_throughput.py [--images N] [--size 128] [--device cpu|cuda] [--repeats 2] [--json F]

Makes ``N`` crops (``size`` x ``size``, PNG) of the built-in photos in a temporary folder, then restores the folder
``repeats`` times each way, alternating, with the same restorer (bundled model, task ``denoise30``, paper
protocol):

* **one by one**: read an image, ``TaskRestorer(image)``, write it, in the calling thread (0.1's flow: every image
  is its own sequence of tile batches);
* **stream**: :func:`ipt.core.inference.folder.restore_all`, what ``ipt restore FOLDER`` runs (decode ahead, tile
  batches filled across images, write behind).

Prints wall and process CPU seconds of each run, the speed-up of the medians, and whether the two ways wrote the
same bytes. On a GPU the network no longer dominates and the overlap of decoding/encoding with it is what the
stream buys; on a small CPU the network is the time (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ipt.core.images.io import read_image
from ipt.core.images.photos import builtin_photos
from ipt.core.inference.folder import restore_all
from ipt.core.inference.restorer import InferenceOptions, TaskRestorer, load_task_model


def make_folder(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` PNG crops of the built-in photos (seeded positions), written to ``folder``."""
    photos = [read_image(p).rgb for p in builtin_photos()]
    gen = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        img = photos[i % len(photos)]
        top = int(torch.randint(0, img.shape[1] - size + 1, (1,), generator=gen))
        left = int(torch.randint(0, img.shape[2] - size + 1, (1,), generator=gen))
        crop = img[:, top : top + size, left : left + size].round().clamp(0, 255).byte()
        path = folder / f"{i:04d}.png"
        Image.fromarray(crop.permute(1, 2, 0).numpy()).save(path)
        paths.append(path)
    return paths


def _write(image: torch.Tensor, path: Path) -> None:
    Image.fromarray(image.round().clamp(0, 255).byte().permute(1, 2, 0).numpy()).save(path)


def one_by_one(restorer: TaskRestorer, paths: list[Path], out: Path) -> None:
    for p in paths:
        _write(restorer(read_image(p).rgb), out / p.name)


def stream(restorer: TaskRestorer, paths: list[Path], out: Path) -> None:
    errors: list[BaseException] = []
    restore_all(restorer, paths, lambda p: (None, read_image(p).rgb), lambda p, _, y: _write(y, out / p.name),
                lambda p, exc: errors.append(exc) if exc is not None else None)
    if errors:
        raise errors[0]


def _positive(text: str) -> int:
    value = int(text) if text.strip().lstrip("-").isdigit() else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=_positive, default=100)
    ap.add_argument("--size", type=_positive, default=128, help="side in px (at most 300: the smallest photo's short side)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=_positive, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.size > 300:
        ap.error(f"--size {args.size}: the smallest built-in photo is 300 px high, use at most 300")
    model = load_task_model(None, "denoise30", args.device)
    restorer = TaskRestorer(model, "denoise30", InferenceOptions(device=args.device))
    runs: dict[str, list[tuple[float, float]]] = {"one_by_one": [], "stream": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = make_folder(root, args.images, args.size)
        outs = {k: root / k for k in runs}
        for out in outs.values():
            out.mkdir()
        restorer(read_image(paths[0]).rgb)  # warm-up: weights packed, kernels chosen
        for _ in range(args.repeats):
            for name, fn in (("one_by_one", one_by_one), ("stream", stream)):
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                wall, cpu = time.perf_counter(), time.process_time()
                fn(restorer, paths, outs[name])
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                runs[name].append((time.perf_counter() - wall, time.process_time() - cpu))
                print(f"{name:10s} wall {runs[name][-1][0]:7.2f} s   cpu {runs[name][-1][1]:7.2f} s", flush=True)
        identical = all(np.array_equal(np.asarray(Image.open(outs["one_by_one"] / p.name)),
                                       np.asarray(Image.open(outs["stream"] / p.name))) for p in paths)
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    speedup = med["one_by_one"] / med["stream"]
    print(f"{args.images} images of {args.size}x{args.size} on {args.device}: one by one {med['one_by_one']:.2f} s, "
          f"stream {med['stream']:.2f} s (medians, wall): {speedup:.2f}x; outputs identical: {identical}")
    if args.json:
        args.json.write_text(json.dumps({"images": args.images, "size": args.size, "device": args.device,
                                         "runs": runs, "speedup_wall": speedup, "identical": identical}, indent=1))


if __name__ == "__main__":
    main()
