"""Decoded training images kept for random draws: clean images (:class:`ImagePool`) and stored input/target
pairs (:class:`PairPool`), with an LRU cache of decoded pixels and a log of skipped files.

Pools of up to ``scan_limit`` items are checked at construction (each file decoded once; corrupt, unconvertible
and too small ones are skipped and counted); larger ones are checked lazily, a bad item making the draw
resample another one. Decoded pixels stay in an LRU cache of ``cache_bytes`` (filled by the scan before DataLoader
workers fork, so workers share it). Stored pairs are plain path lists from :mod:`ipt.core.data.pairing` rather
than a ``datasets`` table: the layout plugins pair files by name, and two images per item are decoded here.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from collections.abc import Sequence
from pathlib import Path

import torch

from ipt.core.data.crops import randint
from ipt.core.data.sources import ImageSource
from ipt.core.images.decode import UnreadableImage, read_pixels
from ipt.registry import ImagePair

__all__ = ["SkipLog", "PixelCache", "ImagePool", "PairPool", "TOO_SMALL"]

log = logging.getLogger("ipt.data")
TOO_SMALL = "too_small"  # skip reason, beside image_decode's "corrupt" and "unsupported_mode"
_RESAMPLE_ATTEMPTS = 100


class SkipLog:
    """Counts of skipped files by reason, and each bad file once with what is wrong (logged on ``ipt.data``)."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.bad: list[tuple[str, str]] = []
        self._logged: set[str] = set()

    def skip(self, where: str, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if where not in self._logged:  # once per file, however often it is drawn
            self._logged.add(where)
            self.bad.append((where, detail))
            log.warning("skipping image %s: %s", where, detail)

    def summary(self, name: str, total: int | str) -> None:
        if self.skipped:
            counts = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items()))
            log.warning("dataset %s: skipped %d of %s images (%s)", name, sum(self.skipped.values()), total, counts)


class PixelCache:
    """Decoded images by key, least recently used dropped first once ``max_bytes`` is exceeded."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[object, torch.Tensor] = OrderedDict()

    def get(self, key: object) -> torch.Tensor | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: object, pixels: torch.Tensor) -> None:
        size = pixels.numel() * pixels.element_size()
        if size > self.max_bytes or key in self._items:
            return
        self._items[key] = pixels
        self.nbytes += size
        while self.nbytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.nbytes -= old.numel() * old.element_size()


class _Pool:
    """Random draws of usable items by index: scanned (all checked once) or lazily checked."""

    noun = "items"

    def __init__(self, name: str, count: int, skips: SkipLog, scan_limit: int) -> None:
        self.name, self.count, self.skips = name, count, skips
        self.valid: list[int] | None = None
        if count == 0:
            raise ValueError(f"dataset {name} is empty")
        if count <= scan_limit:
            self.scan()

    def load(self, index: int) -> object | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def requirement(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def scan(self) -> None:
        """Decode every item once (filling the cache); fail with the skip counts if none is usable."""
        valid = [i for i in range(self.count) if self.load(i) is not None]
        self.skips.summary(self.name, self.count)
        if not valid:
            raise ValueError(f"dataset {self.name}: none of its {self.count} {self.noun} is usable "
                             f"({dict(self.skips.skipped)}); {self.requirement()}")
        self.valid = valid

    def draw(self, generator: torch.Generator) -> object:
        if self.valid is not None:
            index = self.valid[randint(len(self.valid), generator)]
            item = self.load(index)
            if item is None:  # pragma: no cover - the file changed on disk after the scan
                raise ValueError(f"dataset {self.name}: item {index} became unreadable during training")
            return item
        for _attempt in range(_RESAMPLE_ATTEMPTS):
            item = self.load(randint(self.count, generator))
            if item is not None:
                return item
        raise ValueError(f"dataset {self.name}: {_RESAMPLE_ATTEMPTS} {self.noun} drawn in a row were unusable "
                         f"({dict(self.skips.skipped)}); check the data")


class ImagePool(_Pool):
    """Clean images of an :class:`ImageSource` at least ``min_side`` px on their short side."""

    noun = "images"

    def __init__(self, source: ImageSource, min_side: int, skips: SkipLog, cache: PixelCache, scan_limit: int) -> None:
        self.source, self.min_side, self.cache = source, min_side, cache
        super().__init__(source.name, len(source), skips, scan_limit)

    def requirement(self) -> str:
        return f"training needs images of at least {self.min_side}x{self.min_side} px"

    def load(self, index: int) -> torch.Tensor | None:
        key = (id(self), index)
        pixels = self.cache.get(key)
        if pixels is not None:
            return pixels
        record = self.source.record(index)
        where = self.source.describe(record, index)
        try:
            pixels = read_pixels(record)
        except UnreadableImage as exc:
            self.skips.skip(where, exc.reason, exc.detail)
            return None
        h, w = pixels.shape[-2:]
        if min(h, w) < self.min_side:
            self.skips.skip(where, TOO_SMALL, f"{w}x{h} px is smaller than the {self.min_side}x{self.min_side} crop")
            return None
        self.cache.put(key, pixels)
        return pixels


class PairPool(_Pool):
    """Stored ``(input, target)`` pairs of one task: inputs at least ``patch`` px, targets ``scale`` times larger
    (cropped to a multiple of the scale, as the SR benchmarks do; sizes were checked by ``check_sizes``)."""

    noun = "pairs"

    def __init__(self, name: str, pairs: Sequence[ImagePair], patch: int, scale: int, skips: SkipLog,
                 cache: PixelCache, scan_limit: int) -> None:
        self.pairs = [p for p in pairs if p.degraded is not None]
        self.patch, self.scale, self.cache = patch, scale, cache
        super().__init__(name, len(self.pairs), skips, scan_limit)

    def requirement(self) -> str:
        return f"training needs inputs of at least {self.patch}x{self.patch} px"

    def _read(self, path: Path) -> torch.Tensor | None:
        pixels = self.cache.get(path)
        if pixels is None:
            try:
                pixels = read_pixels(str(path))
            except UnreadableImage as exc:
                self.skips.skip(str(path), exc.reason, exc.detail)
                return None
            self.cache.put(path, pixels)
        return pixels

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        pair = self.pairs[index]
        degraded, clean = self._read(pair.degraded), self._read(pair.clean)  # type: ignore[arg-type]
        if degraded is None or clean is None:
            return None
        h, w = degraded.shape[-2:]
        if min(h, w) < self.patch:
            self.skips.skip(str(pair.degraded), TOO_SMALL,
                            f"{w}x{h} px input is smaller than the {self.patch}x{self.patch} patch")
            return None
        return degraded, clean[:, : h * self.scale, : w * self.scale]
