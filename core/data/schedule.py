"""Which task each optimizer step trains: a pure function of ``(seed, step)``.

Every rank, DataLoader worker and resumed run computes the same task for the same step without communicating,
so under DDP all ranks use the same head/tail at every step and no rank waits for gradients of parameters that
another rank did not use (DESIGN.md, training).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

from ipt.core.data.seeding import derive_seed

__all__ = ["TaskSchedule"]

# Separates the schedule's random stream from the data pipeline's, which also derives seeds from (seed, step).
_SCHEDULE_STREAM = 0x5C4ED


class TaskSchedule:
    """Draws the task of optimizer step ``step`` at random (weighted if ``weights`` is given), reproducibly.

    >>> TaskSchedule(["sr2", "denoise30"], seed=0).task_at(0) in ("sr2", "denoise30")
    True
    """

    def __init__(self, tasks: Sequence[str], seed: int, weights: Sequence[float] | None = None) -> None:
        tasks = [str(t) for t in tasks]
        if not tasks:
            raise ValueError("task schedule: no tasks given")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"task schedule: duplicate task names in {tasks}")
        if weights is None:
            weights = [1.0] * len(tasks)
        weights = [float(w) for w in weights]
        if len(weights) != len(tasks):
            raise ValueError(f"task schedule: {len(weights)} weights given for {len(tasks)} tasks {tasks}")
        if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"task schedule: weights must be finite, >= 0 and not all 0, got {weights}")
        self.tasks: tuple[str, ...] = tuple(tasks)
        self.seed = int(seed)
        total = sum(weights)
        self.weights: tuple[float, ...] = tuple(w / total for w in weights)
        cumulative, acc = [], 0.0
        for w in self.weights:
            acc += w
            cumulative.append(acc)
        cumulative[-1] = 1.0  # float round-off must not leave a gap above the last bound
        self._cumulative = cumulative

    def task_at(self, step: int) -> str:
        """The task trained at optimizer step ``step`` (0-based)."""
        if step < 0:
            raise ValueError(f"task schedule: step must be >= 0, got {step}")
        if len(self.tasks) == 1:
            return self.tasks[0]
        u = derive_seed(self.seed, _SCHEDULE_STREAM, step) / float(1 << 63)  # uniform in [0, 1)
        index = bisect.bisect_right(self._cumulative, u)
        # Zero-weight tasks have empty intervals, so bisect never lands on one; min() guards u rounding to 1.0.
        return self.tasks[min(index, len(self.tasks) - 1)]

    def __repr__(self) -> str:
        return f"TaskSchedule(tasks={list(self.tasks)}, seed={self.seed}, weights={list(self.weights)})"


class MicroBatchSchedule:
    """The task of data step ``i`` when each optimizer step consumes ``accum`` data steps (all of one task)."""

    def __init__(self, schedule: TaskSchedule, accum: int) -> None:
        self.schedule, self.accum = schedule, accum
        self.tasks = schedule.tasks

    def task_at(self, step: int) -> str:
        return self.schedule.task_at(step // self.accum)

