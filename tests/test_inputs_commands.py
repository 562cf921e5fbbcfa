"""``ipt convert`` and ``ipt train`` never replace the model they read (issue 13 item 1)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from ipt.cli import main


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same-file", "holding-folder", "parent-folder"])
def test_convert_onto_its_checkpoint_is_refused(tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "models" / "ipt"
    d.mkdir(parents=True)
    ckpt = d / "IPT_pretrain.pt"
    ckpt.write_bytes(b"not read: the check comes first")
    out = {"same-file": ckpt, "holding-folder": d, "parent-folder": tmp_path / "models"}[where]
    before = _tree(tmp_path)
    rc = main(["convert", str(ckpt), str(out), "--tasks", "sr2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "OUT_DIR" in err[0] and "IPT_pretrain.pt" in err[0]
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("where", ["run-holds-model", "same-folder", "inside-model", "checkpoints"])
def test_train_output_dir_onto_init_from_is_refused(model_dir: Path, tmp_path: Path, where: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    init = {"run-holds-model": run / "model", "same-folder": run, "inside-model": run,
            "checkpoints": run / "checkpoints" / "step-5" / "model"}[where]
    shutil.copytree(model_dir, init)
    output = {"run-holds-model": run, "same-folder": run, "inside-model": run / "ft", "checkpoints": run}[where]
    before = _tree(tmp_path)
    rc = main(["train", "--init-from", str(init), "--output-dir", str(output), "--tasks", "sr2", "--preset", "tiny",
               "--max-steps", "1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "--output-dir" in err[-1] and "refusing to write over an input" in err[-1], err
    assert _tree(tmp_path) == before
