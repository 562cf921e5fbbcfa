"""``TrainConfig``: every option of ``ipt train`` / ``core/train.py`` (flags and YAML are derived from it).

Defaults follow the paper (§3.2, §4) where that is usable on any machine: Adam (0.9, 0.999), lr 5e-5 decayed by
0.4 (to 2e-5) at 2/3 of training (paper: epoch 200 of 300), L1 + 0.1 x contrastive (temperature 0.07), gradient
clipping by norm 1.0 (official MindSpore code), fine-tuning at lr 2e-5 without decay.  Two defaults are deliberately
not the paper's: ``preset`` is ``tiny`` (the paper model needs GPUs; choose ``--preset paper`` for the real thing) and
``batch_size`` is 8 per process (the paper's global batch of 256 is ``--batch-size 32`` on 8 GPUs).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ipt.core.checkpoints.bundled import resolve_model_dir
from ipt.core.checkpoints.pretrained import CONFIG_NAME
from ipt.core.model.config import ModelConfig, preset
from ipt.registry import get_task
from ipt.registry.manager import UnknownTaskError

PRETRAIN_LR = 5e-5
FINETUNE_LR = 2e-5
DEFAULT_MAX_STEPS = 1000
FRESH_LR_SCALE = 100.0  # measured best of 1/10/30/100: docs/training.md "Fine-tuning a new task"
FRESH_WARMUP_STEPS = 10
# Accelerate tracker name -> modules that provide it (any one will do).
TRACKER_MODULES: dict[str, tuple[str, ...]] = {"tensorboard": ("tensorboard", "tensorboardX")}


class TrainConfig(BaseModel):
    """Options of one training run (pre-training or fine-tuning)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    # -- what to train --------------------------------------------------------------------------------------
    tasks: list[str] = Field(
        ..., min_length=1, description="Tasks to train, e.g. sr2,sr3,sr4,denoise30,denoise50,derain"
    )
    preset: Literal["tiny", "small", "paper"] = Field(
        "tiny", description="Model size preset (paper = the 115M-parameter model of the paper)"
    )
    model: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the preset's ModelConfig fields, e.g. num_enc_layers=4"
    )
    init_from: Path | None = Field(
        None, description="Fine-tune from this model directory or Hub repo id (user/name[@revision]): keep its "
        "body and the heads of the requested tasks"
    )
    _init_dir: Path | None = PrivateAttr(None)
    freeze: Literal["body"] | None = Field(None, description="Freeze the body and train only heads/tails/embeddings")
    embed_from: str | None = Field(
        None, description="With --init-from: start the task embedding of each task the checkpoint lacks as a copy "
        "of this task's (e.g. denoise30 for denoise70) instead of random"
    )
    fresh_lr_scale: float = Field(
        FRESH_LR_SCALE, gt=0, description="With --init-from: lr multiplier of the parts a new task gets fresh "
        "(head, tail, random task embedding), which start from random weights while the body is pre-trained"
    )
    fresh_warmup_steps: int = Field(
        FRESH_WARMUP_STEPS, ge=0, description="With --init-from: linear warm-up steps of the fresh parts' lr"
    )

    # -- data -----------------------------------------------------------------------------------------------
    data: str | None = Field(
        None, description="Image folder or datasets name with an image column (none = built-in photos)"
    )
    data_split: str = Field("train", description="Split of --data to train on")
    image_column: str | None = Field(None, description="Image column of --data (none = detect it)")
    streaming: bool = Field(False, description="Stream --data instead of downloading/decoding it all first")
    batch_size: int = Field(8, ge=1, description="Patches per process and optimizer step (paper: 256 in all)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes per rank")
    augment: bool = Field(True, description="Random flips/rot90 of the training crops")
    task_data: dict[str, str] = Field(
        default_factory=dict,
        description="Per-task data, task=DIR,...: stored pairs (rain/ + norain/, HR/ + LR_bicubic/X2/, ...) or "
        "clean images; tasks not named use --data",
    )
    synthetic_ratio: float = Field(
        0.0, ge=0, le=1,
        description="Tasks trained on stored pairs: fraction of patches degraded on the fly from the pairs' targets",
    )
    color_augment: bool = Field(
        False, description="Recolour clean patches before degradation: RGB order permuted (p=0.5), saturation x "
        "U(0.5, 1.5) (p=0.5); stored pairs get only the permutation"
    )

    # -- length and schedule --------------------------------------------------------------------------------
    max_steps: int | None = Field(
        None, ge=1, description=f"Optimizer steps to train (default {DEFAULT_MAX_STEPS} unless --epochs is given)"
    )
    epochs: float | None = Field(
        None, gt=0, description="Train this many epochs instead of --max-steps (needs a sized dataset)"
    )
    max_minutes: float | None = Field(
        None, gt=0, description="Also stop after this many minutes of training in this process (a time budget): "
        "the run ends as at --max-steps (last checkpoint, final model); the lr schedule stays that of --max-steps"
    )
    # Default 4, measured (`ipt bench --what data`, BSDS500 JPEGs, one core): 1 crop per decode gives 450-530
    # patches/s/core for sr2/denoise30/derain, 4 crops 1,340-2,090 (target >= 1,000), 16 crops 2,900-5,500.
    crops_per_image: int = Field(
        4, ge=1, description="Random crops cut from each decoded image (one decode feeds several patches); "
        "an epoch is images*crops patches"
    )
    lr: float | None = Field(
        None, gt=0,
        description=f"Learning rate (none = {PRETRAIN_LR:g} for pre-training, {FINETUNE_LR:g} with --init-from)",
    )
    lr_decay_steps: int | None = Field(
        None, ge=0, description="Step at which lr is multiplied by --lr-decay-gamma "
        "(none = 2/3 of training for pre-training, never for fine-tuning; 0 = never)"
    )
    lr_decay_epochs: float | None = Field(None, ge=0, description="As --lr-decay-steps, counted in epochs (paper: 200)")
    lr_decay_gamma: float = Field(0.4, gt=0, description="lr factor at the decay step (paper: 5e-5 -> 2e-5)")
    warmup_steps: int = Field(0, ge=0, description="Linear lr warm-up steps")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (L2, as the paper's Adam)")
    grad_clip: float = Field(1.0, ge=0, description="Clip the gradient norm to this value (0 = no clipping)")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step (all of one task)")

    # -- loss -----------------------------------------------------------------------------------------------
    contrastive_weight: float = Field(0.1, ge=0, description="lambda of the contrastive loss (0 disables it)")
    contrastive_temperature: float = Field(0.07, gt=0, description="Temperature of the contrastive loss")

    # -- numerics and memory ----------------------------------------------------------------------------------
    mixed_precision: Literal["no", "fp16", "bf16"] | None = Field(
        None, description="Mixed precision (none = what accelerate launch/config says)"
    )
    grad_checkpointing: bool = Field(False, description="Recompute body activations in the backward pass")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an EMA of the weights with this decay; the exported model holds the EMA"
    )
    max_nonfinite: int = Field(
        20, ge=1, description="Stop after this many non-finite losses in a row, counted over all steps and over "
        "each task's own steps (a task that is NaN on every step stops the run even between healthy tasks)"
    )
    cpu: bool = Field(False, description="Train on the CPU even if a GPU is present")

    # -- output -----------------------------------------------------------------------------------------------
    output_dir: Path = Field(Path("runs/ipt"), description="Run directory (checkpoints, logs, final model)")
    save_every: int = Field(500, ge=1, description="Save a checkpoint every N steps (and always at the end)")
    save_every_minutes: float = Field(
        10.0, ge=0, description="Also save a checkpoint when this many minutes passed since the last one "
        "(0 = only --save-every), so an interrupted slow run always has recent work to --resume"
    )
    keep_last: int | None = Field(3, ge=1, description="Keep only the newest K checkpoints (none = keep all)")
    resume: str | None = Field(
        None, description="Continue from a checkpoint: latest (the flag alone) or a checkpoint path",
        json_schema_extra={"cli_const": "latest"},
    )
    seed: int = Field(0, description="Seed of the task schedule, crops, degradations and initialisation")
    log_every: int = Field(10, ge=1, description="Log (JSONL, trackers, progress bar) every N steps")
    val_every: int = Field(
        200, ge=0, description="Validate (PSNR per task on held-out patches) every N steps; 0 = never"
    )
    val_patches: int = Field(8, ge=1, description="Held-out validation patches per task")
    report_to: list[str] = Field(
        default_factory=list, description="Accelerate trackers: tensorboard, wandb, ... (none = JSONL log only)"
    )
    progress: bool = Field(True, description="Show a progress bar on the main process")

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, tasks: list[str]) -> list[str]:
        tasks = [t.strip() for t in tasks if t.strip()]
        if not tasks:
            raise ValueError("give at least one task")
        dup = sorted({t for t in tasks if tasks.count(t) > 1})
        if dup:
            raise ValueError(f"task {dup[0]!r} is listed twice")
        for t in tasks:
            try:
                get_task(t)
            except UnknownTaskError as exc:  # its message lists the known tasks and a did-you-mean
                raise ValueError(str(exc)) from None
        return tasks

    @field_validator("report_to")
    @classmethod
    def _check_report_to(cls, v: list[str]) -> list[str]:
        import importlib.util

        trackers = [t for t in v if t.lower() not in ("none", "")]
        for t in trackers:
            modules = TRACKER_MODULES.get(t, (t,)) if t != "all" else ()
            if modules and not any(importlib.util.find_spec(m) for m in modules):
                raise ValueError(f"tracker {t!r} is not installed: pip install {modules[0]}")
        return trackers

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.max_steps is not None and self.epochs is not None:
            raise ValueError("give --max-steps or --epochs, not both")
        if self.lr_decay_steps is not None and self.lr_decay_epochs is not None:
            raise ValueError("give --lr-decay-steps or --lr-decay-epochs, not both")
        if self.init_from is not None:
            self._init_dir = resolve_model_dir(self.init_from)  # a folder, or a Hub repo id -> its cached snapshot
            if not (self._init_dir / CONFIG_NAME).is_file():
                raise ValueError(f"--init-from {self.init_from}: not a model directory (no {CONFIG_NAME} in it)")
        unknown = sorted(set(self.task_data) - set(self.tasks))
        if unknown:
            raise ValueError(f"--task-data names tasks that are not trained: {', '.join(unknown)}")
        if self.freeze and self.init_from is None:
            raise ValueError("--freeze body needs --init-from (a randomly initialised body would stay random)")
        if self.streaming and (self.epochs is not None or self.lr_decay_epochs is not None):
            raise ValueError("--streaming datasets have no length: give --max-steps/--lr-decay-steps, not epochs")
        self._check_no_silent_options()
        self.architecture()  # architecture overrides must be valid
        return self

    @staticmethod
    def inactive_options(values: dict[str, Any]) -> dict[str, str]:
        """``{option: what it needs}`` for the options that have no effect with these ``values`` (field -> value)."""
        needs = {  # option -> (takes effect, what it needs)
            "data_split": (values.get("data") is not None, "--data"),
            "image_column": (values.get("data") is not None, "--data"),
            "streaming": (values.get("data") is not None, "--data"),
            "embed_from": (values.get("init_from") is not None, "--init-from"),
            "fresh_lr_scale": (values.get("init_from") is not None, "--init-from"),
            "fresh_warmup_steps": (values.get("init_from") is not None, "--init-from"),
        }
        return {name: what for name, (active, what) in needs.items() if not active}

    @classmethod
    def default_of(cls, name: str) -> Any:
        return cls.model_fields[name].get_default(call_default_factory=True)

    def _check_no_silent_options(self) -> None:
        """Refuse options that would have no effect in this configuration (instead of ignoring them silently)."""
        for name, what in self.inactive_options(dict(self)).items():
            if getattr(self, name) != self.default_of(name):
                raise ValueError(f"--{name.replace('_', '-')} has no effect without {what}")

    # -- derived values ---------------------------------------------------------------------------------------
    def architecture(self) -> ModelConfig:
        """The architecture: the preset with ``model`` overrides applied."""
        unknown = sorted(set(self.model) - set(ModelConfig.model_fields))
        if unknown:
            raise ValueError(f"model: unknown field {unknown[0]!r}; known: {', '.join(ModelConfig.model_fields)}")
        return preset(self.preset, **self.model)

    @property
    def finetuning(self) -> bool:
        return self.init_from is not None

    @property
    def init_dir(self) -> Path | None:
        """The folder of ``init_from`` (a Hub repo id ``user/name[@revision]`` resolved to its cached snapshot)."""
        if self.init_from is None:
            return None
        if self._init_dir is None:
            self._init_dir = resolve_model_dir(self.init_from)
        return self._init_dir

    @property
    def base_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return FINETUNE_LR if self.finetuning else PRETRAIN_LR

    def steps_per_epoch(self, num_images: int | None, world_size: int) -> int | None:
        if not num_images:
            return None
        return max(1, math.ceil(num_images * self.crops_per_image / (self.batch_size * world_size * self.grad_accum)))

    def total_steps(self, num_images: int | None, world_size: int) -> int:
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs is None:
            return DEFAULT_MAX_STEPS
        spe = self.steps_per_epoch(num_images, world_size)
        if spe is None:
            raise ValueError("--epochs needs a dataset of known size; give --max-steps instead")
        return max(1, math.ceil(self.epochs * spe))

    def decay_step(self, total: int, num_images: int | None, world_size: int) -> int | None:
        """Step at which the lr decays (None = never)."""
        if self.lr_decay_steps is not None:
            return self.lr_decay_steps or None
        if self.lr_decay_epochs is not None:
            spe = self.steps_per_epoch(num_images, world_size)
            if spe is None:
                raise ValueError("--lr-decay-epochs needs a dataset of known size; use --lr-decay-steps")
            return round(self.lr_decay_epochs * spe) or None
        return None if self.finetuning else max(1, round(total * 2 / 3))

    def lr_factor(self, step: int, total: int, decay_at: int | None) -> float:
        """Multiplier of ``base_lr`` for the optimizer step with index ``step`` (0-based)."""
        f = self._warmup(step, self.warmup_steps)
        if decay_at is not None and step >= decay_at:
            f *= self.lr_decay_gamma
        return f

    def fresh_lr_factor(self, step: int, total: int, decay_at: int | None) -> float:
        """Multiplier of ``base_lr`` for the fresh parts of new tasks (``--fresh-lr-scale``, own warm-up, same decay)."""
        f = self.fresh_lr_scale * self._warmup(step, self.fresh_warmup_steps)
        if decay_at is not None and step >= decay_at:
            f *= self.lr_decay_gamma
        return f

    @staticmethod
    def _warmup(step: int, steps: int) -> float:
        return (step + 1) / steps if steps and step < steps else 1.0

    # On --resume (``checkpoints.resolve_resume``): fields whose change makes the checkpoint unusable or has no
    # effect (parameter shapes, the optimizer's parameter groups, the initialisation that resuming skips) are
    # refused when given with another value; the machine's options below take the value given now; every other
    # option keeps the checkpoint's value unless given again, and then takes effect from the resumed step.
    RESUME_KEYS: ClassVar[tuple[str, ...]] = ("tasks", "preset", "model", "freeze", "init_from", "embed_from")
    RESUME_LOCAL: ClassVar[tuple[str, ...]] = (
        "resume", "output_dir", "mixed_precision", "cpu", "num_workers", "progress", "report_to",
    )
