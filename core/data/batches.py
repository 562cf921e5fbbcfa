"""Training data: image sources (HuggingFace ``datasets``) -> random crops -> ``TaskSpec.degrade`` -> batches.

One item of :class:`TrainBatches` is the whole batch of one optimizer step, and it is a pure function of
``(seed, step, rank)``: the step's task comes from the :class:`~ipt.core.task_schedule.TaskSchedule`, and a
``torch.Generator`` seeded from ``(seed, step, rank)`` draws the images, crops, flips and the degradation noise.
So any number of DataLoader workers yields the same batches, resuming at step ``k`` is exact, and every rank trains
the same task on different crops (crops and pairs: :mod:`.crops`; decoded images: :mod:`.pools`). The trainer
iterates it with::

    DataLoader(batches, batch_size=None, sampler=range(start_step, max_steps), num_workers=n)

Images come from :mod:`ipt.core.data.sources` (``datasets``, image column left undecoded) and are decoded by
:mod:`ipt.core.images.decode`: a corrupt file, an odd mode (grey, RGBA, palette, CMYK, 16-bit) or a too small image is converted or
skipped and counted, never a crash deep inside ``datasets``.  Skips are logged on the ``ipt.data`` logger.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ipt.core.data.crops import color_augment, paired_crop, randint, random_crop
from ipt.core.data.pools import TOO_SMALL, ImagePool, PairPool, PixelCache, SkipLog
from ipt.core.data.schedule import TaskSchedule
from ipt.core.data.seeding import derive_seed, text_seed
from ipt.core.data.sources import ImageSource, as_source, load_images
from ipt.core.images.decode import UnreadableImage, decode_record, read_pixels, to_rgb_tensor
from ipt.registry import ImagePair, TaskSpec

__all__ = [
    # re-exported: the data API in one place
    "ImageSource",
    "load_images",
    "to_rgb_tensor",
    "decode_record",
    "UnreadableImage",
    # defined here
    "SCAN_LIMIT",
    "TaskData",
    "TrainBatches",
    "StreamingTrainBatches",
    "validation_pairs",
]

log = logging.getLogger("ipt.data")

# Sources with more images than this are checked lazily while training instead of all at construction.
SCAN_LIMIT = 5000


# ------------------------------------------------------------------------------------------------ batch making


@dataclass
class TaskData:
    """Where one task's patches come from (``None`` fields: the default source of :class:`TrainBatches`).

    ``images``: clean images degraded on the fly by the task's ``degrade``. ``pairs``: stored ``(input, target)``
    pairs (a paired layout of :mod:`ipt.core.data.pairing`), cropped in alignment. With pairs,
    ``synthetic_ratio`` is the probability that a patch is made on the fly instead, from ``images`` when given,
    else from the pairs' clean targets.
    """

    images: ImageSource | None = None
    pairs: list[ImagePair] | None = None
    synthetic_ratio: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        if not 0.0 <= self.synthetic_ratio <= 1.0:
            raise ValueError(f"synthetic ratio must be in [0, 1], got {self.synthetic_ratio}")


@dataclass
class _TaskDraws:
    """One task's draw functions: ``clean(generator) -> (3,H,W)``, ``pairs.draw(generator) -> (input, target)``."""

    clean: Callable[[torch.Generator], torch.Tensor] | None
    pairs: PairPool | None = None
    synthetic_ratio: float = 0.0


class _Targets:
    """Draws the clean target of a random stored pair (the images a paired task degrades on the fly); a class,
    not a lambda, so that batches pickle for spawned DataLoader workers."""

    def __init__(self, pool: PairPool) -> None:
        self.pool = pool

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        return self.pool.draw(generator)[1]


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


def _check_sizes(batch_size: int, patch_size: int, rank: int, world_size: int, crops_per_image: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if patch_size < 1:
        raise ValueError(f"patch size must be >= 1, got {patch_size}")
    if crops_per_image < 1:
        raise ValueError(f"crops per image must be >= 1, got {crops_per_image}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")


def _crops(draw: Callable[[torch.Generator], Any], n: int, per_item: int, crop: Callable[[Any, torch.Generator], Any],
           generator: torch.Generator) -> list[Any]:
    """``n`` crops, ``per_item`` from each drawn item (one decode feeds several patches)."""
    out: list[Any] = []
    while len(out) < n:
        item = draw(generator)
        out.extend(crop(item, generator) for _ in range(min(per_item, n - len(out))))
    return out


class _BatchMaker:
    """What map-style and streaming batches share: task lookup, seeding, crops, colour and degradation."""

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
        crops_per_image: int = 1,
        color_augment: bool = False,
    ) -> None:
        _check_sizes(batch_size, patch_size, rank, world_size, crops_per_image)
        self.specs = _resolve_specs(tasks, schedule)
        self.schedule = schedule
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.augment = augment
        self.steps = steps
        self.crops_per_image = crops_per_image
        self.color_augment = color_augment
        # Every training image must fit the largest HR crop any scheduled task asks for.
        self.min_side = patch_size * max(self.specs[t].scale for t in schedule.tasks)
        self.skips = SkipLog()

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed(derive_seed(self.seed, step, self.rank))

    def _synthetic(self, spec: TaskSpec, draw: Callable, n: int, generator: torch.Generator) -> tuple[Any, Any]:
        size, s = self.patch_size * spec.scale, spec.scale
        crop = lambda pixels, g: random_crop(pixels, size, s, g, self.augment)  # noqa: E731
        hr = torch.stack(_crops(draw, n, self.crops_per_image, crop, generator))
        if self.color_augment:
            hr, _ = color_augment(hr, generator)
        with torch.no_grad():  # TaskSpec.degrade passes a copy of hr and checks the shape, naming the plugin
            lr = spec.degrade(hr, generator)
        expected = (n, spec.in_channels, self.patch_size, self.patch_size)  # RGB, then the task's extra inputs
        if tuple(lr.shape) != expected:
            raise ValueError(f"task {spec.name!r}: degrade returned shape {tuple(lr.shape)}, expected {expected}")
        return lr.float(), hr

    def _paired(self, spec: TaskSpec, pool: PairPool, n: int, generator: torch.Generator) -> tuple[Any, Any]:
        crop = lambda item, g: paired_crop(*item, self.patch_size, spec.scale, g, self.augment)  # noqa: E731
        lrs, hrs = zip(*_crops(pool.draw, n, self.crops_per_image, crop, generator))
        lr, hr = torch.stack(lrs), torch.stack(hrs)
        if self.color_augment:
            hr, (lr,) = color_augment(hr, generator, saturation=False, others=[lr])
        return lr, hr

    def make(self, step: int, draws: _TaskDraws, generator: torch.Generator) -> dict[str, Any]:
        """The batch of ``step`` from the scheduled task's ``draws`` (synthetic patches first, then stored pairs)."""
        task = self.schedule.task_at(step)
        spec = self.specs[task]
        n = self.batch_size
        if draws.pairs is None:
            n_syn = n
        elif draws.synthetic_ratio <= 0:
            n_syn = 0
        else:
            n_syn = int((torch.rand(n, generator=generator, dtype=torch.float64) < draws.synthetic_ratio).sum())
        parts = []
        if n_syn:
            parts.append(self._synthetic(spec, draws.clean, n_syn, generator))
        if n - n_syn:
            parts.append(self._paired(spec, draws.pairs, n - n_syn, generator))
        lr, hr = (torch.cat(t) if len(t) > 1 else t[0] for t in zip(*parts))
        return {"step": step, "task": task, "lr": lr.contiguous(), "hr": hr.contiguous()}


class _SkipReport:
    """``skipped`` and ``bad`` of a batch source (its ``_maker`` holds the :class:`SkipLog`)."""

    _maker: _BatchMaker

    @property
    def skipped(self) -> Counter[str]:
        """Images skipped so far by this process, by reason (``corrupt``, ``unsupported_mode``, ``too_small``)."""
        return self._maker.skips.skipped

    @property
    def bad(self) -> list[tuple[str, str]]:
        """``(path, what is wrong)`` of every skipped image, once each."""
        return self._maker.skips.bad


class TrainBatches(_SkipReport, torch.utils.data.Dataset):
    """Map-style training batches: item ``step`` = ``dict(step, task, lr (B,3,P,P), hr (B,3,P*s,P*s))``.

    Everything in an item is drawn from a generator seeded with ``(seed, step, rank)``, so items do not depend
    on the number of workers or on what was read before. ``source`` gives the clean images of every task that
    ``task_data`` does not name; a task of ``task_data`` trains on its own images or stored pairs
    (:class:`TaskData`). ``crops_per_image`` crops are cut from each drawn image (or pair), so one decode feeds
    several patches. ``color_augment`` recolours clean patches before degradation (:data:`COLOR_AUGMENT`; stored
    pairs get only the channel permutation, applied to input and target alike). Images are decoded and checked
    by :mod:`ipt.core.data.pools` (skips counted in ``skipped``/``bad``; cache of ``cache_bytes`` shared by all).
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
        task_data: dict[str, TaskData] | None = None,
        crops_per_image: int = 1,
        color_augment: bool = False,
    ) -> None:
        self._maker = _BatchMaker(tasks, schedule, batch_size, patch_size, seed, rank, world_size, augment, steps,
                                  crops_per_image, color_augment)
        self.steps = steps
        task_data = dict(task_data or {})
        unknown = sorted(set(task_data) - set(schedule.tasks))
        if unknown:
            raise ValueError(f"data given for tasks that are not trained: {', '.join(unknown)}")
        defaults = [t for t in schedule.tasks if t not in task_data or task_data[t].images is task_data[t].pairs is None]
        self.source = as_source(source) if defaults or source is not None else None
        if self.source is not None and self.source.streaming:
            raise ValueError(f"dataset {self.source.name} is streaming: use StreamingTrainBatches")
        self._cache = PixelCache(cache_bytes)
        self._draws = self._build_draws(task_data, scan_limit)

    def _image_pool(self, source: ImageSource, tasks: list[str], pools: dict[int, ImagePool], scan_limit: int) -> ImagePool:
        if id(source) not in pools:
            users = [t for t in self._maker.schedule.tasks if t in tasks]
            min_side = self._maker.patch_size * max(self._maker.specs[t].scale for t in users)
            pools[id(source)] = ImagePool(source, min_side, self._maker.skips, self._cache, scan_limit)
        return pools[id(source)]

    def _build_draws(self, task_data: dict[str, TaskData], scan_limit: int) -> dict[str, _TaskDraws]:
        """One :class:`_TaskDraws` per task; tasks that share a source share its pool (decoded once)."""
        tasks = list(self._maker.schedule.tasks)
        image_users: dict[int, list[str]] = {}
        sources: dict[str, ImageSource] = {}
        for t in tasks:
            td = task_data.get(t, TaskData())
            src = td.images if td.images is not None else (self.source if td.pairs is None else None)
            if src is not None:
                sources[t] = src
                image_users.setdefault(id(src), []).append(t)
        image_pools: dict[int, ImagePool] = {}
        draws: dict[str, _TaskDraws] = {}
        for t in tasks:
            td = task_data.get(t, TaskData())
            clean = None
            if t in sources:
                clean = self._image_pool(sources[t], image_users[id(sources[t])], image_pools, scan_limit).draw
            pairs = None
            if td.pairs is not None:
                spec = self._maker.specs[t]
                pairs = PairPool(td.name or t, td.pairs, self._maker.patch_size, spec.scale, self._maker.skips,
                                 self._cache, scan_limit)
                if clean is None:
                    clean = _Targets(pairs)
            draws[t] = _TaskDraws(clean, pairs, td.synthetic_ratio if td.pairs is not None else 0.0)
        return draws

    @property
    def min_side(self) -> int:
        """The smallest usable image side: the patch size times the largest scheduled scale."""
        return self._maker.min_side

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> dict[str, Any]:
        step = int(step)
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside 0..{self.steps - 1}")
        draws = self._draws[self._maker.schedule.task_at(step)]
        return self._maker.make(step, draws, self._maker.generator(step))


class StreamingTrainBatches(_SkipReport, torch.utils.data.IterableDataset):
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
        crops_per_image: int = 1,
        color_augment: bool = False,
    ) -> None:
        from datasets.distributed import split_dataset_by_node

        if not source.streaming:
            raise ValueError(f"dataset {source.name} is not streaming: use TrainBatches")
        if buffer_size < 1:
            raise ValueError(f"buffer size must be >= 1, got {buffer_size}")
        self.source = source
        self._maker = _BatchMaker(tasks, schedule, batch_size, patch_size, seed, rank, world_size, augment, steps,
                                  crops_per_image, color_augment)
        self.stream = split_dataset_by_node(source.dataset, rank=rank, world_size=world_size)
        self.steps = steps
        self.buffer_size = buffer_size
        # One fresh image per crops_per_image patches (the same decode budget per patch as map-style batches).
        self.refresh = -(-batch_size // crops_per_image) if refresh is None else refresh
        self.start_step = start_step

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
                    self._maker.skips.skip(where, exc.reason, exc.detail)
                    continue
                h, w = pixels.shape[-2:]
                if min(h, w) < self._maker.min_side:
                    self._maker.skips.skip(where, TOO_SMALL, f"{w}x{h} px is smaller than the "
                                           f"{self._maker.min_side}x{self._maker.min_side} crop")
                else:
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
            draws = _TaskDraws(clean=lambda g: buffer[randint(len(buffer), g)])
            yield self._maker.make(step, draws, generator)
            for _ in range(self.refresh):
                buffer[randint(len(buffer), generator)] = next(images)


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
