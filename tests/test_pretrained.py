"""Model directories: round trip, strict loading with clear errors, missing plugins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ipt.core.model import IPT, build_model
from ipt.core.checkpoints.pretrained import CheckpointError, MissingPluginError


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[IPT, Path]:
    torch.manual_seed(0)
    model = build_model("tiny", ["sr2", "denoise30", "denoise70"]).eval()
    return model, model.save_pretrained(tmp_path / "m", note="test")


def test_round_trip_identical_outputs(saved: tuple[IPT, Path]) -> None:
    model, path = saved
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((path / "config.json").read_text())
    assert [t["name"] for t in cfg["tasks"]] == ["sr2", "denoise30", "denoise70"]
    assert cfg["tasks"][0]["distribution"] == "ipt-framework" and cfg["note"] == "test"
    loaded = IPT.from_pretrained(path).eval()
    x = torch.rand(2, 3, 48, 48) * 255
    with torch.no_grad():
        for task in model.task_names:
            assert torch.equal(model(x, task), loaded(x, task))


def test_load_subset_of_tasks(saved: tuple[IPT, Path]) -> None:
    _, path = saved
    assert IPT.from_pretrained(path, tasks=["denoise70"]).task_names == ["denoise70"]
    with pytest.raises(CheckpointError, match="no task 'sr4'.*it has: sr2, denoise30, denoise70"):
        IPT.from_pretrained(path, tasks=["sr4"])


def test_mismatched_weights_are_listed(saved: tuple[IPT, Path]) -> None:
    _, path = saved
    state = load_file(str(path / "model.safetensors"))
    state.pop("body.pos_embed")
    state["body.extra"] = torch.zeros(1)
    state["body.linear_encoding.bias"] = torch.zeros(3)
    save_file(state, str(path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        IPT.from_pretrained(path)
    msg = str(err.value)
    assert "missing: body.pos_embed" in msg and "unexpected: body.extra" in msg
    assert "body.linear_encoding.bias: expected (144,), found (3,)" in msg


def test_missing_plugin_names_distribution(saved: tuple[IPT, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from plugin_helpers import builtin_registry

    from ipt.registry import manager

    monkeypatch.setattr(manager, "_REGISTRY", builtin_registry())  # dehaze may be installed beside us
    _, path = saved
    cfg = json.loads((path / "config.json").read_text())
    cfg["tasks"].append({"name": "dehaze", "scale": 1, "plugin": "dehaze", "distribution": "ipt-plugin-dehaze",
                         "version": "0.1.0"})
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MissingPluginError, match="ipt-plugin-dehaze.*pip install ipt-plugin-dehaze"):
        IPT.from_pretrained(path)


def test_bad_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a model directory"):
        IPT.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json: missing"):
        IPT.from_pretrained(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="invalid model config"):
        IPT.from_pretrained(tmp_path / "bad")


def test_corrupt_weights(saved: tuple[IPT, Path]) -> None:
    _, path = saved
    (path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        IPT.from_pretrained(path)


def test_save_is_atomic_and_replaces(saved: tuple[IPT, Path]) -> None:
    model, path = saved
    model.save_pretrained(path)  # overwrite in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["m"]  # no temp folders left behind

    class Boom(Exception):
        pass

    def broken_state_dict(*a: object, **k: object) -> dict:
        raise Boom()

    model.state_dict = broken_state_dict  # type: ignore[method-assign]
    with pytest.raises(Boom):
        model.save_pretrained(path)
    assert IPT.from_pretrained(path).task_names == ["sr2", "denoise30", "denoise70"]  # old copy intact


def test_loading_some_tasks_needs_only_their_plugins(saved: tuple[IPT, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from ipt.registry.manager import reset_registry

    model, path = saved
    monkeypatch.setenv("IPT_DISABLE_PLUGINS", "sr")
    reset_registry()
    try:
        loaded = IPT.from_pretrained(path, tasks=["denoise30"]).eval()
        x = torch.rand(1, 3, 48, 48) * 255
        with torch.no_grad():
            assert torch.equal(loaded(x, "denoise30"), model(x, "denoise30"))
        with pytest.raises(MissingPluginError, match="needs plugin 'sr'.*disabled by IPT_DISABLE_PLUGINS"):
            IPT.from_pretrained(path)
    finally:
        monkeypatch.delenv("IPT_DISABLE_PLUGINS")
        reset_registry()


def test_save_refuses_to_wipe_other_files(saved: tuple[IPT, Path]) -> None:
    model, path = saved
    (path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="holds other files \\(notes.txt\\)"):
        model.save_pretrained(path)
    assert (path / "notes.txt").read_text() == "mine"


def test_a_mistyped_task_gets_a_suggestion(saved: tuple[IPT, Path]) -> None:
    model, path = saved
    with pytest.raises(CheckpointError, match="no task 'denoise3O' \\(did you mean 'denoise30'\\?\\)"):
        IPT.from_pretrained(path, tasks=["denoise3O"])
    with pytest.raises(KeyError, match="did you mean 'sr2'"):
        model(torch.zeros(1, 3, 48, 48), "sr2x")
