"""Checkpoints of a training run: ``<run>/checkpoints/step-N/{model,state}``: writing one that survives a kill or a
full disk, finding one to resume, and resolving what a resumed run keeps and changes."""

from __future__ import annotations

import errno
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ipt.core.checkpoints.pretrained import CheckpointError, read_config
from ipt.core.files import atomic_write_text, commit_dir
from ipt.core.training.config import TrainConfig
from ipt.core.training.errors import CheckpointWriteError

CHECKPOINTS = "checkpoints"
STEP_DIR_RE = re.compile(r"^step-(\d+)$")
TRAIN_STATE = "train_state.json"
EMA_WEIGHTS = "ema.safetensors"
DIVERGED_PREFIX = "diverged-"  # a stop checkpoint holding non-finite-loss weights: kept, never resumed by `latest`
MB = 1 << 20


# -- the log -------------------------------------------------------------------------------------------------------
def truncate_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= ``step`` (atomically), so a resumed run does not log steps twice."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def set_aside_log(path: Path) -> Path | None:
    """On a fresh (non-resume) start, rename an earlier run's ``log.jsonl`` to ``log-before-<time>.jsonl``.

    Returns the new name (None when there was no log), so the new run's log never mixes in old records.
    """
    if not path.is_file():
        return None
    aside = path.with_name(f"log-before-{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    path.replace(aside)
    return aside


# -- finding checkpoints -------------------------------------------------------------------------------------------
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


def remove_stale(run_dir: Path) -> None:
    """Remove what killed saves leave: ``.step-N.tmp`` (never renamed) and ``.step-N.old-PID`` (a re-save's old copy)."""
    root = Path(run_dir) / CHECKPOINTS
    for stale in [*root.glob(".step-*.tmp"), *root.glob(".step-*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


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


def training_record(checkpoint: Path) -> dict[str, Any]:
    """The ``training`` record a checkpoint's ``model/config.json`` holds (the resolved config, step, world size)."""
    record = (read_config(checkpoint / "model").model_extra or {}).get("training")
    if not record or "config" not in record:
        raise CheckpointError(f"--resume {checkpoint}: its model/config.json has no training record")
    return record


# -- writing -------------------------------------------------------------------------------------------------------
def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def check_free_space(root: Path, needed: int) -> None:
    """Refuse before writing anything when the disk holding ``root`` has less than ``needed`` bytes free."""
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed and free < needed:
        raise CheckpointWriteError(
            f"cannot write checkpoint to {root}: no space left; {needed / MB:.0f} MB needed, {free / MB:.0f} MB free"
        )


def _is_disk_full(exc: BaseException, root: Path) -> bool:
    if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit
        return False
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "no space left" in str(exc).lower():
        return True
    # torch.save reports a full disk as a RuntimeError from its zip writer ("unexpected pos", "file write failed")
    return shutil.disk_usage(root).free < 4 * MB


def write_checkpoint(accelerator: Any, root: Path, name: str, fill: Callable[[Path], None], needed: int) -> Path:
    """Write ``root/name`` as a whole: every rank calls ``fill(tmp)`` on the shared ``root/.name.tmp``, then the
    main process puts it in place with :func:`ipt.core.files.commit_dir` (an old ``name`` is renamed aside and
    deleted afterwards, never deleted in place).

    ``needed`` (bytes, 0 = unknown) is checked against the free space first. A full disk raises
    :class:`CheckpointWriteError` naming the folder and the size, after removing the partial folder.
    """
    final, tmp = root / name, root / f".{name}.tmp"
    if accelerator.is_main_process:
        check_free_space(root, needed)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        fill(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            commit_dir(tmp, final)
    except BaseException as exc:
        full = _is_disk_full(exc, root)
        written = folder_bytes(tmp) if tmp.exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            size = max(needed, written)
            raise CheckpointWriteError(
                f"cannot write checkpoint to {final}: no space left on device; "
                f"{'about ' if not needed else ''}{size / MB:.0f} MB needed"
            ) from exc
        raise
    accelerator.wait_for_everyone()
    return final


# -- resuming ------------------------------------------------------------------------------------------------------
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def resolve_resume(cfg: TrainConfig, checkpoint: Path) -> tuple[TrainConfig, list[str]]:
    """The configuration a resumed run uses, and one line per option that changes at the resumed step.

    Options not given again keep the checkpoint's value (``max_steps``, the lr and its decay step as the
    checkpoint resolved them, the loss weights, ...); the machine's options (:attr:`TrainConfig.RESUME_LOCAL`) take
    the value given now. An option given with a new value takes effect from the resumed step, except those of
    :attr:`TrainConfig.RESUME_KEYS` and switching ``--ema-decay`` on or off, which are refused (ValueError).
    """
    saved: dict[str, Any] = training_record(checkpoint)["config"]
    given = set(cfg.model_fields_set)
    now = cfg.model_dump(mode="json")
    values = dict(now)
    inherit = [n for n in TrainConfig.model_fields if n not in TrainConfig.RESUME_LOCAL and n in saved]
    pairs = {"max_steps": "epochs", "epochs": "max_steps", "lr_decay_steps": "lr_decay_epochs",
             "lr_decay_epochs": "lr_decay_steps"}
    changes: list[str] = []
    for name in inherit:
        old, new = saved[name], now[name]
        if name not in given and pairs.get(name) not in given:
            values[name] = old
            continue
        if name not in given or old == new:
            continue
        if name in TrainConfig.RESUME_KEYS or (name == "ema_decay" and (old is None) != (new is None)):
            raise ValueError(
                f"--resume {checkpoint}: the checkpoint was trained with {name}={old!r}, this run asks for "
                f"{name}={new!r}; resume with the same {_flag(name)} or start a new --output-dir "
                f"(use --init-from {checkpoint / 'model'} to fine-tune from it instead)"
            )
        changes.append(f"{_flag(name)} {old} -> {new}")
    for name in TrainConfig.inactive_options(values):  # e.g. a default of an older version, inactive in the record
        if name not in given:
            values[name] = TrainConfig.default_of(name)
    merged = TrainConfig.model_validate(values)
    return TrainConfig.model_construct(_fields_set=given, **dict(merged)), changes


def check_lr_not_raised(saved: dict[str, Any], cfg: TrainConfig, step: int, total: int,
                        decay_at: int | None) -> None:
    """Refuse a new decay step that would undo a decay the checkpoint already applied (lr back up after it fell).

    ``saved`` is the checkpoint's resolved config; an explicit new ``--lr`` is the user's choice and passes.
    """
    if "lr" in cfg.model_fields_set and cfg.lr != saved.get("lr"):
        return
    old_decay = saved.get("lr_decay_steps") or None
    if old_decay is not None and old_decay <= step and (decay_at is None or decay_at > step):
        old_lr = cfg.base_lr * cfg.lr_decay_gamma
        raise ValueError(
            f"--resume at step {step}: the checkpoint's lr already decayed at step {old_decay} (to {old_lr:g}); "
            f"a decay step of {decay_at or 'never'} would raise it back to {cfg.base_lr:g}. Leave out "
            "--lr-decay-steps/--lr-decay-epochs to keep the checkpoint's, give one <= the resumed step, or set --lr"
        )
