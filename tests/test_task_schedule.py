"""TaskSchedule: the task of a step is a pure, seeded function of (seed, step)."""

from __future__ import annotations

from collections import Counter

import pytest

from ipt.core.data.seeding import derive_seed, text_seed
from ipt.core.data.schedule import TaskSchedule

TASKS = ["sr2", "sr3", "denoise30"]


def test_same_seed_same_tasks_across_instances() -> None:
    a, b = TaskSchedule(TASKS, seed=7), TaskSchedule(list(TASKS), seed=7)
    seq = [a.task_at(s) for s in range(500)]
    assert seq == [b.task_at(s) for s in range(500)]
    # Order of queries does not matter (a resumed run asks for step 400 first).
    assert [a.task_at(s) for s in reversed(range(500))] == seq[::-1]


def test_different_seeds_give_different_sequences() -> None:
    a = [TaskSchedule(TASKS, seed=0).task_at(s) for s in range(200)]
    b = [TaskSchedule(TASKS, seed=1).task_at(s) for s in range(200)]
    assert a != b
    assert len(set(a)) == 3  # not stuck on one task


def test_roughly_uniform_over_3000_steps() -> None:
    schedule = TaskSchedule(TASKS, seed=3)
    counts = Counter(schedule.task_at(s) for s in range(3000))
    assert set(counts) == set(TASKS)
    for task in TASKS:  # expected 1000 each, sd ~26: +-130 is a 5-sigma band
        assert abs(counts[task] - 1000) < 130, counts


def test_weights_are_respected() -> None:
    schedule = TaskSchedule(TASKS, seed=5, weights=[6, 3, 1])
    counts = Counter(schedule.task_at(s) for s in range(6000))
    assert abs(counts["sr2"] / 6000 - 0.6) < 0.035, counts
    assert abs(counts["sr3"] / 6000 - 0.3) < 0.035, counts
    assert abs(counts["denoise30"] / 6000 - 0.1) < 0.025, counts


def test_zero_weight_task_never_drawn() -> None:
    schedule = TaskSchedule(TASKS, seed=5, weights=[1, 0, 1])
    assert "sr3" not in {schedule.task_at(s) for s in range(2000)}


def test_single_task_is_always_that_task() -> None:
    schedule = TaskSchedule(["denoise50"], seed=11)
    assert {schedule.task_at(s) for s in range(300)} == {"denoise50"}


@pytest.mark.parametrize(
    ("tasks", "weights", "match"),
    [
        ([], None, "no tasks"),
        (["sr2", "sr2"], None, "duplicate"),
        (["sr2", "sr3"], [1.0], "2 tasks"),
        (["sr2", "sr3"], [1.0, -1.0], ">= 0"),
        (["sr2", "sr3"], [0.0, 0.0], "not all 0"),
    ],
)
def test_bad_arguments_are_clear_errors(tasks: list[str], weights: list[float] | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TaskSchedule(tasks, seed=0, weights=weights)


def test_negative_step_rejected() -> None:
    with pytest.raises(ValueError, match="step"):
        TaskSchedule(TASKS, seed=0).task_at(-1)


def test_derive_seed_known_properties() -> None:
    # Fixed integer function: order matters, fits in 63 bits, neighbours differ.
    assert derive_seed(1, 2) != derive_seed(2, 1)
    assert derive_seed(0, 5) != derive_seed(0, 6)
    assert all(0 <= derive_seed(s, 3) < 2**63 for s in range(100))
    assert text_seed("sr2") == text_seed("sr2") != text_seed("sr3")
