"""Hash-free seed derivation: one 64-bit seed from a tuple of integers (seed, step, rank, ...).

Python's ``hash`` is salted per process and ``random.Random((a, b))`` hashes its argument, so neither gives the
same value in every rank, DataLoader worker and resumed run.  SplitMix64 is a fixed integer function: the same
parts give the same seed everywhere, and neighbouring parts (step 7 vs. step 8) give unrelated seeds.
"""

from __future__ import annotations

__all__ = ["derive_seed", "text_seed"]

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends on every part and their order (fits ``torch.Generator.manual_seed``)."""
    state = 0x1234_5678_9ABC_DEF0
    for part in parts:
        state = _splitmix64(state ^ (int(part) & _MASK64))
    return state >> 1


def text_seed(text: str) -> int:
    """A stable integer for a string (task names in seeds); unlike ``hash(str)`` it is not salted per process."""
    value = 0
    for byte in text.encode("utf-8"):
        value = _splitmix64(value ^ byte)
    return value
