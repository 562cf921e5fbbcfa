"""Many images through one :class:`~ipt.core.inference.restorer.TaskRestorer`: decoding, network and writing
overlap, and every network call is filled with tiles of consecutive images.

* a reader thread decodes ahead, at most ``prefetch`` images (a bounded queue holds the decoded ones);
* the calling thread runs :meth:`TaskRestorer.stream` (tile batches filled across images, each output equal to
  restoring the image alone);
* a writer thread finishes each restored image (encode, write), at most ``prefetch`` waiting.

Decoding and PNG encoding release the GIL in Pillow/zlib, and the network's kernels release it too, so the three
stages run side by side. Used by ``ipt restore`` (:func:`restore_all`) and ``ipt eval`` (:func:`prefetch`).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from torch import Tensor

from ipt.core.inference.restorer import TaskRestorer

__all__ = ["prefetch", "restore_all"]

T = TypeVar("T")
K = TypeVar("K")
_END = object()


def prefetch(items: Iterable[T], size: int = 8) -> Iterator[T]:
    """Iterate ``items`` in a background thread, at most ``size`` ahead of the consumer (bounded memory).

    An exception raised by ``items`` is re-raised in the consumer at that position. Stopping early (``close()``
    or garbage collection of this generator) lets the thread finish its current item and end.
    """
    buffer: queue.Queue = queue.Queue(maxsize=max(1, size))
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        buffer.put((True, item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            buffer.put((False, exc))
            return
        buffer.put((True, _END))

    thread = threading.Thread(target=produce, name="ipt-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = buffer.get()
            if not ok:
                raise item
            if item is _END:
                return
            yield item
    finally:
        stop.set()


def restore_all(
    restorer: TaskRestorer,
    items: Iterable[K],
    load: Callable[[K], tuple[Any, Tensor]],
    finish: Callable[[K, Any, Tensor], None],
    on_done: Callable[[K, BaseException | None], None],
    prefetch_images: int = 8,
) -> None:
    """Restore every item: ``load(item) -> (payload, image (3, H, W))`` in the reader thread, the network here,
    ``finish(item, payload, restored)`` in the writer thread, then ``on_done(item, error or None)`` here.

    An item whose ``load`` or ``finish`` raises is reported through ``on_done`` with the exception, and the others
    go on. If the network fails on a batch of tiles from several images (``RuntimeError``, ``MemoryError``), the
    images in the restorer at that moment are restored again one by one (so only an image that fails alone is
    reported), and the rest go on in a fresh stream.
    """
    loaded = prefetch((_try_load(load, item) for item in items), prefetch_images)
    failed: deque[tuple[K, BaseException]] = deque()
    taken: dict[int, tuple[K, Any, Tensor]] = {}  # images handed to the restorer and not yet out of it
    counter = iter(range(1 << 62))

    def source() -> Iterator[tuple[tuple[int, K, Any], Tensor]]:
        for item, result in loaded:
            if isinstance(result, BaseException):
                failed.append((item, result))
                continue
            payload, image = result
            index = next(counter)
            taken[index] = (item, payload, image)
            yield (index, item, payload), image

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ipt-write") as writer:
        pending: deque[tuple[K, Future]] = deque()
        stream_again = True
        while stream_again:
            stream_again = False
            try:
                for (index, item, payload), restored in restorer.stream(source()):
                    taken.pop(index, None)
                    pending.append((item, writer.submit(finish, item, payload, restored)))
                    _drain(pending, failed, on_done, keep=prefetch_images)
            except (RuntimeError, MemoryError):  # a mixed batch failed: its images again, alone
                for item, payload, image in taken.values():
                    try:
                        pending.append((item, writer.submit(finish, item, payload, restorer(image))))
                    except (RuntimeError, MemoryError) as exc:
                        failed.append((item, exc))
                taken.clear()
                stream_again = True
            _drain(pending, failed, on_done, keep=prefetch_images)
        _drain(pending, failed, on_done, keep=0)


def _try_load(load: Callable[[K], tuple[Any, Tensor]], item: K) -> tuple[K, Any]:
    try:
        return item, load(item)
    except Exception as exc:  # noqa: BLE001 - reported for this item by restore_all
        return item, exc


def _drain(pending: deque, failed: deque, on_done: Callable[[Any, BaseException | None], None], keep: int) -> None:
    """Report read failures, then wait for written images until at most ``keep`` are still being written."""
    while failed:
        on_done(*failed.popleft())
    while len(pending) > keep:
        item, future = pending.popleft()
        on_done(item, future.exception())
