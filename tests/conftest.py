"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ipt.core.model import build_model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved tiny model (random weights, seed 0) with tasks sr2 and denoise30."""
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "tiny"
    build_model("tiny", ["sr2", "denoise30"]).save_pretrained(d)
    return d
