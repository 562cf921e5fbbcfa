"""`ipt demo` with the bundled model: table, picture, and the quality the model card promises on its photo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from ipt.core.checkpoints.bundled import bundled_model_dir
from ipt.core.model import IPT


def test_demo_table_and_picture(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "ipt.cli", "demo", "--out", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    tasks = {r["task"]: r for r in out["tasks"]}
    assert list(tasks) == IPT.from_pretrained(bundled_model_dir()).task_names
    # The bundled model restores: better than its input and than the baseline on every task it was trained on.
    for name in ("sr2", "sr4", "denoise30", "denoise50", "derain"):
        assert tasks[name]["output_psnr"] > tasks[name]["baseline_psnr"], tasks[name]
    assert tasks["denoise30"]["output_psnr"] - tasks["denoise30"]["input_psnr"] > 6
    picture = Image.open(tmp_path / "demo.png")
    assert picture.size[0] == 3 * 192 and picture.size[1] >= len(tasks) * 192


def test_demo_table_text(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "ipt.cli", "demo", "-o", str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "input PSNR" in res.stdout and "baseline PSNR" in res.stdout and "held out of training" in res.stdout
    assert len([line for line in res.stdout.splitlines() if line.startswith(("sr", "denoise", "derain", "deblur"))]) == 7
