"""Benchmark folder layouts: moved to :mod:`ipt.core.data.pairing` (one implementation for ``ipt train`` and
``ipt eval``); this module keeps the old import path."""

from ipt.core.data.pairing import (  # noqa: F401 - re-exported
    ImagePair,
    Layout,
    PairingError,
    check_sizes,
    detect_layout,
    modcrop_size,
    pair_by_key,
    pair_by_name,
)

__all__ = ["ImagePair", "Layout", "PairingError", "detect_layout", "pair_by_name", "pair_by_key", "check_sizes",
           "modcrop_size"]
