"""Training data: image sources (HuggingFace ``datasets``) -> random crops -> ``TaskSpec.degrade`` -> batches.

One item of :class:`TrainBatches` is the whole batch of one optimizer step, and it is a pure function of
``(seed, step, rank)``: the step's task comes from the :class:`~ipt.core.task_schedule.TaskSchedule`, and a
``torch.Generator`` seeded from ``(seed, step, rank)`` draws the images, crops, flips and the degradation noise.
So any number of DataLoader workers yields the same batches, resuming at step ``k`` is exact, and every rank trains
the same task on different crops.  The trainer iterates it with::

    DataLoader(batches, batch_size=None, sampler=range(start_step, max_steps), num_workers=n)

Images come from :mod:`ipt.core.data.sources` (``datasets``, image column left undecoded) and are decoded by
:mod:`ipt.core.images.decode`: a corrupt file, an odd mode (grey, RGBA, palette, CMYK, 16-bit) or a too small image is converted or
skipped and counted, never a crash deep inside ``datasets``.  Skips are logged on the ``ipt.data`` logger.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ipt.core.images.decode import UnreadableImage, decode_record, read_pixels, to_rgb_tensor
from ipt.core.data.sources import ImageSource, as_source, load_images
from ipt.core.data.seeding import derive_seed, text_seed
from ipt.core.data.schedule import TaskSchedule
from ipt.registry import TaskSpec

__all__ = [
    # re-exported: the data API in one place
    "ImageSource",
    "load_images",
    "to_rgb_tensor",
    "decode_record",
    "UnreadableImage",
    # defined here
    "SCAN_LIMIT",
    "TrainBatches",
    "StreamingTrainBatches",
    "validation_pairs",
]

log = logging.getLogger("ipt.data")

# Sources with more images than this are checked lazily while training instead of all at construction.
SCAN_LIMIT = 5000
TOO_SMALL = "too_small"  # skip reason, beside image_decode's "corrupt" and "unsupported_mode"


# ------------------------------------------------------------------------------------------------ batch making


class _PixelCache:
    """Decoded images by index, least recently used dropped first once ``max_bytes`` is exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[int, torch.Tensor] = OrderedDict()

    def get(self, key: int) -> torch.Tensor | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: int, pixels: torch.Tensor) -> None:
        size = pixels.numel() * pixels.element_size()
        if size > self.max_bytes:
            return
        self._items[key] = pixels
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


def _resolve_specs(tasks: Sequence[TaskSpec | str], schedule: TaskSchedule) -> dict[str, TaskSpec]:
    from ipt.registry import get_task

    specs = {}
    for task in tasks:
        spec = get_task(task) if isinstance(task, str) else task
        specs[spec.name] = spec
    missing = [t for t in schedule.tasks if t not in specs]
    if missing:
        raise ValueError(f"task schedule names tasks without a TaskSpec: {missing}; given: {sorted(specs)}")
    return specs


def _randint(high: int, generator: torch.Generator) -> int:
    return int(torch.randint(high, (1,), generator=generator))


def _random_crop(
    pixels: torch.Tensor, size: int, align: int, generator: torch.Generator, augment: bool
) -> torch.Tensor:
    """A ``size x size`` float crop at a position on the ``align`` grid, randomly flipped/rotated if ``augment``.

    Aligning to the SR scale keeps the crop on the same pixel grid as a downscale of the whole image.
    """
    h, w = pixels.shape[-2:]
    y = align * _randint((h - size) // align + 1, generator)
    x = align * _randint((w - size) // align + 1, generator)
    crop = pixels[:, y : y + size, x : x + size]
    if augment:
        k = _randint(8, generator)  # the 8 symmetries of the square (official IPT: hflip, vflip, transpose)
        if k & 4:
            crop = crop.flip(-1)
        crop = torch.rot90(crop, k & 3, dims=(-2, -1))
    return crop.float()


def _check_sizes(batch_size: int, patch_size: int, rank: int, world_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if patch_size < 1:
        raise ValueError(f"patch size must be >= 1, got {patch_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")


class _BatchMaker:
    """What map-style and streaming batches share: task lookup, seeding, crops and degradation."""

    def __init__(
        self,
        tasks: Sequence[TaskSpec | str],
        schedule: TaskSchedule,
        batch_size: int,
        patch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        augment: bool,
        steps: int,
    ) -> None:
        _check_sizes(batch_size, patch_size, rank, world_size)
        self.specs = _resolve_specs(tasks, schedule)
        self.schedule = schedule
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.steps = steps
        # Every training image must fit the largest HR crop any scheduled task asks for.
        self.min_side = patch_size * max(self.specs[t].scale for t in schedule.tasks)
        self.skipped: Counter[str] = Counter()
        self.bad: list[tuple[str, str]] = []
        self._logged: set[str] = set()

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, step, self.rank))

    def skip(self, where: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if where not in self._logged:  # once per file, however often it is drawn
            self._logged.add(where)
            self.bad.append((where, detail))
            log.warning("skipping image %s: %s", where, detail)

    def check(self, pixels: torch.Tensor, where: str) -> bool:
        h, w = pixels.shape[-2:]
        if min(h, w) < self.min_side:
            self.skip(where, TOO_SMALL, f"{w}x{h} px is smaller than the {self.min_side}x{self.min_side} crop")
            return False
        return True

    def make(self, step: int, draw: Any, generator: torch.Generator) -> dict[str, Any]:
        """The batch of ``step``; ``draw(generator)`` returns the pixels of one randomly chosen image."""
        task = self.schedule.task_at(step)
        spec = self.specs[task]
        size = self.patch_size * spec.scale
        hr = torch.stack(
            [_random_crop(draw(generator), size, spec.scale, generator, self.augment) for _ in range(self.batch_size)]
        )
        with torch.no_grad():  # TaskSpec.degrade passes a copy of hr and checks the shape, naming the plugin
            lr = spec.degrade(hr, generator)
        return {"step": step, "task": task, "lr": lr.float().contiguous(), "hr": hr.contiguous()}

    def log_summary(self, name: str, total: int | str) -> None:
        if self.skipped:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            log.warning("dataset %s: skipped %d of %s images (%s)", name, sum(self.skipped.values()), total, counts)


class TrainBatches(torch.utils.data.Dataset):
    """Map-style training batches: item ``step`` = ``dict(step, task, lr (B,3,P,P), hr (B,3,P*s,P*s))``.

    Everything in an item is drawn from a generator seeded with ``(seed, step, rank)``, so items do not depend
    on the number of workers or on what was read before.  Sources with up to :data:`SCAN_LIMIT` images are
    scanned at construction (each image decoded once; corrupt, unconvertible and too small ones are skipped and
    counted in ``skipped``/``bad``); larger ones are checked lazily, a bad image making the draw resample another
    index (then the counts are per worker process).  Decoded images stay in an LRU cache of ``cache_bytes``
    (filled by the scan before workers fork, so workers share it).
    """

    def __init__(
        self,
        source: ImageSource | Sequence[str | Path] | None,
        tasks: Sequence[TaskSpec | str],
        schedule: TaskSchedule,
        batch_size: int,
        patch_size: int = 48,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        steps: int = 10**9,
        cache_bytes: int = 2 << 30,
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self.source = as_source(source)
        if self.source.streaming:
            raise ValueError(f"dataset {self.source.name} is streaming: use StreamingTrainBatches")
        self._maker = _BatchMaker(tasks, schedule, batch_size, patch_size, seed, rank, world_size, augment, steps)
        self.steps = steps
        self._cache = _PixelCache(cache_bytes)
        self._count = len(self.source)
        self._valid: list[int] | None = None
        if self._count <= scan_limit:
            self.scan()

    @property
    def skipped(self) -> Counter[str]:
        """Images skipped so far, by reason (``corrupt``, ``unsupported_mode``, ``too_small``)."""
        return self._maker.skipped

    @property
    def bad(self) -> list[tuple[str, str]]:
        """``(path, what is wrong)`` of every skipped image, once each."""
        return self._maker.bad

    @property
    def min_side(self) -> int:
        """The smallest usable image side: the patch size times the largest scheduled scale."""
        return self._maker.min_side

    def scan(self) -> None:
        """Decode every image once: cache the good ones, count and log the rest; fail if none is usable."""
        valid = []
        for index in range(self._count):
            pixels = self._load(index)
            if pixels is not None:
                valid.append(index)
                self._cache.put(index, pixels)
        self._maker.log_summary(self.source.name, self._count)
        if not valid:
            raise ValueError(
                f"dataset {self.source.name}: none of its {self._count} images is usable "
                f"({dict(self.skipped)}); training needs images of at least {self.min_side}x{self.min_side} px"
            )
        self._valid = valid

    def _load(self, index: int) -> torch.Tensor | None:
        record = self.source.record(index)
        where = self.source.describe(record, index)
        try:
            pixels = read_pixels(record)
        except UnreadableImage as exc:
            self._maker.skip(where, exc.reason, exc.detail)
            return None
        return pixels if self._maker.check(pixels, where) else None

    def _pixels(self, index: int) -> torch.Tensor | None:
        pixels = self._cache.get(index)
        if pixels is None:
            pixels = self._load(index)
            if pixels is not None:
                self._cache.put(index, pixels)
        return pixels

    def _draw(self, generator: torch.Generator) -> torch.Tensor:
        if self._valid is not None:
            index = self._valid[_randint(len(self._valid), generator)]
            pixels = self._pixels(index)
            if pixels is None:  # pragma: no cover - the file changed on disk after the scan
                raise ValueError(f"dataset {self.source.name}: image {index} became unreadable during training")
            return pixels
        for _attempt in range(100):
            pixels = self._pixels(_randint(self._count, generator))
            if pixels is not None:
                return pixels
        raise ValueError(
            f"dataset {self.source.name}: 100 images drawn in a row were unusable ({dict(self.skipped)}); "
            "check the data"
        )

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside 0..{self.steps - 1}")
        return self._maker.make(step, self._draw, self._maker.generator(step))


class StreamingTrainBatches(torch.utils.data.IterableDataset):
    """Training batches from a streamed dataset, same item format as :class:`TrainBatches`.

    The stream is split by node (``datasets.distributed.split_dataset_by_node``) and, inside a DataLoader, by
    worker (``datasets`` gives each worker whole shards, so use at most :attr:`max_workers` workers).  Worker
    ``w`` of ``n`` yields steps ``start_step + w, start_step + w + n, ...``, which the DataLoader interleaves back
    into step order.  Each worker keeps a buffer of ``buffer_size`` decoded images, draws the crops of a step
    from it and then replaces ``refresh`` random slots (default: the batch size) with the next images of the
    stream, which restarts when exhausted.

    Resume is approximate: ``start_step`` re-reads and drops about ``start_step * refresh`` images so the
    stream continues near where it stopped, but the buffer contents differ from the uninterrupted run.
    Crops, flips and degradation noise still come from the ``(seed, step, rank)`` generator.
    """

    def __init__(
        self,
        source: ImageSource,
        tasks: Sequence[TaskSpec | str],
        schedule: TaskSchedule,
        batch_size: int,
        patch_size: int = 48,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        augment: bool = True,
        steps: int = 10**9,
        buffer_size: int = 64,
        refresh: int | None = None,
        start_step: int = 0,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        if not source.streaming:
            raise ValueError(f"dataset {source.name} is not streaming: use TrainBatches")
        if buffer_size < 1:
            raise ValueError(f"buffer size must be >= 1, got {buffer_size}")
        self.source = source
        self._maker = _BatchMaker(tasks, schedule, batch_size, patch_size, seed, rank, world_size, augment, steps)
        self.stream = split_dataset_by_node(source.dataset, rank=rank, world_size=world_size)
        self.steps = steps
        self.buffer_size = buffer_size
        self.refresh = batch_size if refresh is None else refresh
        self.start_step = start_step

    @property
    def skipped(self) -> Counter[str]:
        """Images skipped so far by this process, by reason."""
        return self._maker.skipped

    @property
    def bad(self) -> list[tuple[str, str]]:
        return self._maker.bad

    @property
    def max_workers(self) -> int:
        """The most DataLoader workers that all get data (the stream's shard count)."""
        return self.stream.num_shards

    def _images(self, skip: int) -> Iterator[torch.Tensor]:
        """Usable decoded images of this worker's part of the stream, cycling; the first ``skip`` records dropped."""
        position, epoch = 0, 0
        while True:
            if hasattr(self.stream, "set_epoch"):
                self.stream.set_epoch(epoch)
            usable = seen = examined = 0
            for example in self.stream:
                seen += 1
                position += 1
                if position <= skip:
                    continue
                examined += 1
                record = example[self.source.image_column]
                where = self.source.describe(record, position - 1)
                try:
                    pixels = read_pixels(record)
                except UnreadableImage as exc:
                    self._maker.skip(where, exc.reason, exc.detail)
                    continue
                if self._maker.check(pixels, where):
                    usable += 1
                    yield pixels
            if seen == 0:
                raise ValueError(f"dataset {self.source.name} is empty (this node/worker got no images)")
            if usable == 0 and examined == seen:
                raise ValueError(
                    f"dataset {self.source.name}: no usable image in a whole pass ({dict(self.skipped)}); "
                    f"training needs images of at least {self._maker.min_side}x{self._maker.min_side} px"
                )
            if position <= skip:  # skipping past the end: continue from the same place in the next pass
                skip = position + (skip - position) % position
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers > self.max_workers:
            raise ValueError(
                f"dataset {self.source.name}: {workers} DataLoader workers but only {self.max_workers} stream "
                f"shard(s); use at most {self.max_workers} workers"
            )
        images = self._images(skip=self.start_step * self.refresh // workers)
        buffer = [next(images) for _ in range(self.buffer_size)]
        for step in range(self.start_step + worker, self.steps, workers):
            generator = self._maker.generator(step)
            yield self._maker.make(step, lambda g: buffer[_randint(len(buffer), g)], generator)
            for _ in range(self.refresh):
                buffer[_randint(len(buffer), generator)] = next(images)


# -------------------------------------------------------------------------------------------------- validation


def validation_pairs(
    source_or_paths: ImageSource | Sequence[str | Path] | None,
    tasks: Sequence[TaskSpec | str],
    patch_size: int = 48,
    n_per_task: int = 8,
    seed: int = 1234,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fixed validation batches ``{task: (lr (n,3,P,P), hr (n,3,P*s,P*s))}``, the same on every call.

    Crop ``i`` comes from image ``i mod #images`` (``None`` = the held-out built-in photos), at a position in the
    middle half of the image drawn from ``(seed, i)`` and shared by all tasks; no flips.  The degradation noise
    is seeded by ``(seed, task name)``.
    """
    from ipt.registry import get_task

    specs = [get_task(t) if isinstance(t, str) else t for t in tasks]
    if not specs:
        raise ValueError("validation_pairs: no tasks given")
    if n_per_task < 1:
        raise ValueError(f"validation_pairs: n_per_task must be >= 1, got {n_per_task}")
    source = load_images(None, holdout=True) if source_or_paths is None else as_source(source_or_paths)
    min_side = patch_size * max(spec.scale for spec in specs)

    records = (
        (source.dataset[i][source.image_column] for i in range(len(source)))
        if not source.streaming
        else (example[source.image_column] for example in source.dataset)
    )
    images: list[torch.Tensor] = []
    for index, record in enumerate(records):
        where = source.describe(record, index)
        try:
            pixels = read_pixels(record)
        except UnreadableImage as exc:
            log.warning("validation: skipping image %s: %s", where, exc.detail)
            continue
        if min(pixels.shape[-2:]) < min_side:
            log.warning("validation: skipping image %s: smaller than %d px", where, min_side)
            continue
        images.append(pixels)
        if source.streaming and len(images) >= n_per_task:
            break
    if not images:
        raise ValueError(f"validation data {source.name}: no usable image of at least {min_side}x{min_side} px")

    fractions = []
    for i in range(n_per_task):
        g = torch.Generator().manual_seed(derive_seed(seed, i))
        fy, fx = (0.25 + 0.5 * float(torch.rand((), generator=g)) for _ in range(2))
        fractions.append((fy, fx))

    pairs = {}
    for spec in specs:
        size, s = patch_size * spec.scale, spec.scale
        crops = []
        for i, (fy, fx) in enumerate(fractions):
            pixels = images[i % len(images)]
            h, w = pixels.shape[-2:]
            y = s * int(fy * ((h - size) // s))
            x = s * int(fx * ((w - size) // s))
            crops.append(pixels[:, y : y + size, x : x + size].float())
        hr = torch.stack(crops)
        generator = torch.Generator().manual_seed(derive_seed(seed, text_seed(spec.name)))
        with torch.no_grad():
            lr = spec.degrade(hr, generator).float()
        pairs[spec.name] = (lr, hr)
    return pairs
