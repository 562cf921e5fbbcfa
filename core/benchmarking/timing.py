"""Timing several variants of one computation so that load from other processes cancels out of their ratios.

Every variant runs once per repeat, round-robin, starting with a different one each time; speed-ups are the
median over repeats of per-repeat ratios. Wall clock and this process's CPU time (all threads) are both kept: on
a machine shared with other jobs, single-thread CPU time measures the work done, wall time also the waiting.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["Timings", "time_interleaved", "median_ratio", "Stopwatch", "sync"]


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Per-call seconds of each function: wall clock and this process's CPU time (all threads)."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    def get(self, clock: str) -> dict[str, list[float]]:
        """The seconds of ``clock`` (``"wall"`` or ``"cpu"``)."""
        return self.cpu if clock == "cpu" else self.wall


def time_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, repeats: int, device: torch.device
) -> Timings:
    """Seconds per call of each function, measured round-robin: every repeat runs each function once.

    The starting function rotates between repeats so that none always runs first (cache state, turbo).
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync(device)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            with Stopwatch(device) as watch:
                fns[name]()
            wall[name].append(watch.wall)
            cpu[name].append(watch.cpu)
    return Timings(wall, cpu)


def median_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over repeats of ``numerator[i] / denominator[i]`` (a speed-up when numerator is the baseline)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator))


class Stopwatch:
    """Wall and process CPU seconds of a ``with`` block (device work included: synchronises on entry and exit)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.wall = self.cpu = 0.0

    def __enter__(self) -> "Stopwatch":
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.wall, self.cpu = time.perf_counter() - self._wall, time.process_time() - self._cpu

    def seconds(self, clock: str) -> float:
        """The seconds of ``clock`` (``"wall"`` or ``"cpu"``)."""
        return self.cpu if clock == "cpu" else self.wall
