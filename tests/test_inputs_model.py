"""Hostile or damaged model directories (issue 13 item 3; reliability rows 16-20): one line each, and nothing is
allocated for the model before the safetensors header agrees with config.json."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ipt.core.checkpoints.pretrained import (
    CheckpointError,
    load_pretrained,
    read_config,
)
from PIL import Image
from safetensors.torch import load_file, save_file

from ipt.cli import main


@pytest.fixture
def model_copy(model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "M"
    shutil.copytree(model_dir, d)
    return d


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((32, 40, 3)) * 255).astype(np.uint8)).save(p)
    return p


def _edit(model: Path, **changes: object) -> None:
    cfg = json.loads((model / "config.json").read_text())
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    (model / "config.json").write_text(json.dumps(cfg))


def _restore_error(model: Path, image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    t0 = time.perf_counter()
    rc = main(["restore", "--task", "sr2", "--model", str(model), str(image), "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert time.perf_counter() - t0 < 30
    assert not (tmp_path / "out" / "img.png").exists()
    return err[0]


@pytest.mark.parametrize("field,value", [("num_enc_layers", 200000), ("n_feats", 60000), ("patch_size", 30000),
                                         ("num_heads", 10**9), ("mlp_ratio", 1e6)])
def test_memory_bomb_configs_are_refused_before_building(model_copy: Path, image: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str], field: str,
                                                         value: object) -> None:
    _edit(model_copy, **{f"architecture__{field}": value})
    err = _restore_error(model_copy, image, tmp_path, capsys)
    assert "config.json" in err and field in err and "less than or equal" in err


def test_config_disagreeing_with_the_weights_allocates_nothing(model_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """n_feats 1024 is within bounds but not what the 16-feature weights hold: the header check refuses it while
    the only model built so far lives on the meta device."""
    from ipt.core.model import ipt as ipt_module

    devices: list[str] = []
    init = ipt_module.IPT.__init__

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        devices.append(next(self.parameters()).device.type)

    monkeypatch.setattr(ipt_module.IPT, "__init__", spy)
    _edit(model_copy, architecture__n_feats=1024, architecture__num_heads=16)
    with pytest.raises(CheckpointError, match="mis-shaped") as exc:
        load_pretrained(model_copy)
    assert "model.safetensors" in str(exc.value) and devices == ["meta"]


def test_deeply_nested_and_malformed_configs(model_copy: Path, image: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = model_copy / "config.json"
    cfg.write_text("[" * 200000 + "]" * 200000)
    assert "nested too deeply" in _restore_error(model_copy, image, tmp_path, capsys)
    cfg.write_text('{"architecture": {"n_feats": 16,')
    assert "not JSON" in _restore_error(model_copy, image, tmp_path, capsys)
    cfg.write_text("[1, 2]")
    assert "JSON object is expected" in _restore_error(model_copy, image, tmp_path, capsys)
    cfg.write_bytes(b" " * (2 << 20))
    assert "too large" in _restore_error(model_copy, image, tmp_path, capsys)
    cfg.write_bytes(b"\xff\xfe{")
    assert "not JSON" in _restore_error(model_copy, image, tmp_path, capsys)


@pytest.mark.parametrize("field,value,message", [
    ("format_version", 99, "newer ipt"), ("format_version", 2, "newer ipt"), ("format_version", 0, "format_version"),
    ("format", "gguf", "not an ipt model directory"), ("format", "IPT-MODEL", "not an ipt model directory"),
])
def test_unknown_format_or_version(model_copy: Path, field: str, value: object, message: str) -> None:
    _edit(model_copy, **{field: value})
    with pytest.raises(CheckpointError, match=message):
        read_config(model_copy)


@pytest.mark.parametrize("name", ["../../etc", "sr2/../../x", "SR2", "", "a b"])
def test_task_names_that_are_not_task_names(model_copy: Path, image: Path, tmp_path: Path, name: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["tasks"][0]["name"] = name
    (model_copy / "config.json").write_text(json.dumps(cfg))
    err = _restore_error(model_copy, image, tmp_path, capsys)
    assert "is not a task name" in err and "pip install" not in err


@pytest.mark.parametrize("poison", ["nan-all", "inf-one"])
def test_non_finite_weights_are_refused(model_copy: Path, image: Path, tmp_path: Path, poison: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    weights = model_copy / "model.safetensors"
    state = load_file(str(weights))
    if poison == "nan-all":
        state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    else:
        key = sorted(state)[3]
        state[key] = state[key].clone()
        state[key].view(-1)[0] = float("inf")
    save_file(state, str(weights))
    err = _restore_error(model_copy, image, tmp_path, capsys)
    assert "NaN or infinite" in err and "model.safetensors" in err
