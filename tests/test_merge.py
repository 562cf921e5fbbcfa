"""``ipt merge``: tasks fine-tuned on a frozen body go back into the multi-task model, nothing else changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ipt.cli import main as ipt_main
from ipt.core.model.config import preset
from ipt.core.model.ipt import IPT
from ipt.core.model.merge import merge_tasks

CFG = preset("tiny", num_enc_layers=1, num_dec_layers=1)


def _models() -> tuple[IPT, IPT]:
    torch.manual_seed(0)
    base = IPT(CFG, ["sr2", "denoise30", "derain"])
    donor = IPT(CFG, ["derain"])
    donor.body.load_state_dict(base.body.state_dict())  # as after --freeze body
    return base, donor


def test_merge_replaces_only_the_donor_tasks_parts(tmp_path: Path) -> None:
    base, donor = _models()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    base.save_pretrained(tmp_path / "base")
    donor.save_pretrained(tmp_path / "donor")
    assert ipt_main(["merge", str(tmp_path / "base"), str(tmp_path / "donor"), "-o", str(tmp_path / "out")]) == 0
    merged = load_file(str(tmp_path / "out" / "model.safetensors"))
    donor_sd = donor.state_dict()
    assert set(merged) == set(before)
    for key, value in merged.items():
        parts = key.split(".")
        from_donor = "derain" in parts
        expected = donor_sd[key] if from_donor else before[key]
        assert torch.equal(value, expected), key
    assert any("derain" in k.split(".") and not torch.equal(merged[k], before[k]) for k in merged)
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert [t["name"] for t in cfg["tasks"]] == ["sr2", "denoise30", "derain"]
    assert cfg["merged"]["tasks"] == ["derain"]
    x = torch.rand(1, 3, 48, 48) * 255
    out = IPT.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        assert torch.equal(out(x, "derain"), donor.eval()(x, "derain"))
        assert torch.equal(out(x, "sr2"), base.eval()(x, "sr2"))


def test_merge_refuses_a_donor_whose_body_moved() -> None:
    base, donor = _models()
    with torch.no_grad():
        next(donor.body.parameters()).add_(1e-3)
    with pytest.raises(ValueError, match="bodies differ"):
        merge_tasks(base, donor)


def test_merge_names_a_missing_task(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, donor = _models()
    base.save_pretrained(tmp_path / "base")
    donor.save_pretrained(tmp_path / "donor")
    code = ipt_main(["merge", str(tmp_path / "base"), str(tmp_path / "donor"), "-o", str(tmp_path / "out"),
                     "--tasks", "deblur"])
    assert code != 0
    assert "deblur" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_merge_takes_the_model_names_other_commands_take(tmp_path: Path) -> None:
    """'bundled' (and Hub ids) resolve as in ipt eval/export: merging the bundled model's derain into itself gives
    the bundled weights back exactly."""
    from ipt.core.checkpoints.bundled import bundled_model_dir

    assert ipt_main(["merge", "bundled", "bundled", "-o", str(tmp_path / "out"), "--tasks", "derain"]) == 0
    ours, bundled = (load_file(str(d / "model.safetensors")) for d in (tmp_path / "out", bundled_model_dir()))
    assert set(ours) == set(bundled) and all(torch.equal(ours[k], bundled[k]) for k in bundled)
