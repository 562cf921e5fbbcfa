"""Checkpoints of a training run: ``<run>/checkpoints/step-N/{model,state}``, finding one to resume, and
checking that a resumed run matches the one that wrote it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ipt.core.files import atomic_write_text
from ipt.core.checkpoints.pretrained import CheckpointError, read_config
from ipt.core.training.config import TrainConfig

CHECKPOINTS = "checkpoints"
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
TRAIN_STATE = "train_state.json"
EMA_WEIGHTS = "ema.safetensors"


def truncate_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` (atomically), so a resumed run does not log steps twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# -- checkpoints ---------------------------------------------------------------------------------------------------
def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary folders of interrupted saves are ignored)."""
    root = Path(run_dir) / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = STEP_DIR_RE.match(p.name)
            if m and (p / "state" / TRAIN_STATE).is_file() and (p / "model" / "config.json").is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(resume: str, run_dir: Path) -> Path:
    """The checkpoint folder for ``--resume latest`` or ``--resume PATH`` (a checkpoint or a run directory)."""
    if resume == "latest":
        found = list_checkpoints(run_dir)
        if not found:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / CHECKPOINTS}; start without --resume")
        return found[-1][1]
    path = Path(resume)
    if (path / "state" / TRAIN_STATE).is_file():
        return path
    found = list_checkpoints(path)
    if found:
        return found[-1][1]
    raise FileNotFoundError(
        f"--resume {resume}: not a checkpoint (step-N folder with model/ and state/) or a run directory with one"
    )


def check_resume_compatible(cfg: TrainConfig, checkpoint: Path) -> None:
    """One-line error if the checkpoint was written by a run whose model/state layout differs from ``cfg``."""
    saved = (read_config(checkpoint / "model").model_extra or {}).get("training", {}).get("config")
    if saved is None:
        raise CheckpointError(f"--resume {checkpoint}: its model/config.json has no training record")
    now = cfg.model_dump(mode="json")
    for key in (*TrainConfig.RESUME_KEYS, "ema_decay"):
        a, b = saved.get(key), now.get(key)
        if key == "ema_decay":
            a, b = a is not None, b is not None
        if a != b:
            raise ValueError(
                f"--resume {checkpoint}: the checkpoint was trained with {key}={saved.get(key)!r}, this run asks for "
                f"{key}={now.get(key)!r}; resume with the same {key} or start a new --output-dir "
                f"(use --init-from {checkpoint / 'model'} to fine-tune from it instead)"
            )
