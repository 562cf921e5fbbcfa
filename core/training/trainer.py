"""One optimizer step of IPT training on an :class:`accelerate.Accelerator` (paper Sec. 3.2: one task per step,
L1 + contrastive loss), with the state Accelerate does not hold (position, non-finite streaks, EMA)."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipt.core.checkpoints.pretrained import CheckpointError, read_config
from ipt.core.evaluation.metrics import metric_specs, metric_values, psnr_batch, quantize
from ipt.core.model import IPT
from ipt.core.training.checkpoints import (
    CHECKPOINTS,
    EMA_WEIGHTS,
    TRAIN_STATE,
    folder_bytes,
    list_checkpoints,
    write_checkpoint,
)
from ipt.core.training.config import TrainConfig
from ipt.core.training.ema import EMA
from ipt.core.training.errors import TrainingStopped  # noqa: F401  (re-exported: ipt.core.train imports it here)
from ipt.core.training.losses import ipt_loss

VALIDATION_SAMPLES = 4  # restored patches per task kept for the validation image grid


@dataclass
class TrainState:
    """What Accelerate's ``save_state`` does not hold: position, non-finite streaks (overall and per task), EMA.

    Saved as JSON + safetensors next to the accelerate state (not as pickles, which only load unsafely).
    """

    step: int = 0
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    task_streak: dict[str, int] = field(default_factory=dict)  # non-finite losses in a row on the task's own steps
    task_skipped: dict[str, int] = field(default_factory=dict)  # skipped steps per task over the whole run
    ema: EMA | None = None

    def record(self, task: str, finite: bool) -> None:
        if finite:
            self.nonfinite_streak = 0
            self.task_streak[task] = 0
            return
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.task_streak[task] = self.task_streak.get(task, 0) + 1
        self.task_skipped[task] = self.task_skipped.get(task, 0) + 1

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        info = {"step": self.step, "nonfinite_streak": self.nonfinite_streak, "nonfinite_total": self.nonfinite_total,
                "task_streak": self.task_streak, "task_skipped": self.task_skipped}
        (directory / TRAIN_STATE).write_text(json.dumps(info) + "\n")
        if self.ema is not None:
            save_file(self.ema.state_dict(), str(directory / EMA_WEIGHTS))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        info = json.loads((directory / TRAIN_STATE).read_text())
        self.step, self.nonfinite_streak = int(info["step"]), int(info["nonfinite_streak"])
        self.nonfinite_total = int(info.get("nonfinite_total", 0))
        self.task_streak = {k: int(v) for k, v in info.get("task_streak", {}).items()}
        self.task_skipped = {k: int(v) for k, v in info.get("task_skipped", {}).items()}
        if self.ema is not None:
            path = directory / EMA_WEIGHTS
            if not path.is_file():
                raise CheckpointError(f"{path}: missing; the checkpoint was saved without --ema-decay")
            self.ema.load_state_dict(load_file(str(path)))


# -- the accelerator -----------------------------------------------------------------------------------------------
def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _parameter_count(cfg: TrainConfig) -> int:
    """Parameters of the model ``cfg`` trains, counted on the meta device (nothing allocated)."""
    arch = read_config(cfg.init_from).architecture if cfg.init_from else cfg.architecture()
    with torch.device("meta"):
        return IPT(arch, cfg.tasks).num_parameters()


def check_cpu_processes(cfg: TrainConfig) -> None:
    """Refuse a multi-process launch on a machine without a GPU that cannot hold it.

    Each process holds a full model with gradients and Adam state (4 copies of the fp32 weights) and needs a core
    of its own; ``accelerate launch --multi_gpu --num_processes 8`` copied to a CPU-only machine would otherwise
    start 8 models in RAM. Raises ValueError with one line.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if local <= 1 or (torch.cuda.is_available() and not cfg.cpu):
        return
    cores = os.cpu_count() or 1
    if local > cores:
        raise ValueError(
            f"{local} processes on a machine without a GPU and {cores} CPU core(s): each process holds a full model "
            f"and needs a core; launch at most --num_processes {cores} here (or use a GPU machine)"
        )
    need, free = local * 16 * _parameter_count(cfg), _available_memory()
    if free is not None and need > free:
        raise ValueError(
            f"{local} processes without a GPU need about {need / 2**30:.1f} GiB for their model copies (weights, "
            f"gradients, Adam state) but {free / 2**30:.1f} GiB are available; launch fewer processes or a smaller "
            "--preset"
        )


def make_accelerator(cfg: TrainConfig) -> Any:
    """The :class:`accelerate.Accelerator` of a run (gradient accumulation = ``--grad-accum``).

    Several processes without a GPU (``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` on a CPU
    machine) need ``cpu=True`` for Accelerate to pick its gloo CPU backend instead of running each process alone.
    fp16 on the CPU is refused: Accelerate would silently train in fp32 while reporting fp16 (ValueError).
    """
    from accelerate import Accelerator
    from accelerate.utils import (
        DistributedDataParallelKwargs,
        GradientAccumulationPlugin,
    )

    check_cpu_processes(cfg)
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu or (multi_process and not torch.cuda.is_available()),
        log_with=cfg.report_to or None,
        project_dir=str(cfg.output_dir),
        step_scheduler_with_optimizer=False,  # the LambdaLR counts optimizer steps itself, once per step
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=cfg.grad_accum, sync_with_dataloader=False),
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    if acc.device.type == "cpu" and acc.mixed_precision == "fp16":
        where = "--mixed-precision fp16" if cfg.mixed_precision else "mixed precision fp16 (from accelerate config/launch)"
        raise ValueError(
            f"{where} needs a CUDA GPU (on the CPU Accelerate would train in fp32); use --mixed-precision bf16 or no"
        )
    return acc


# -- the trainer ---------------------------------------------------------------------------------------------------
@dataclass
class StepStats:
    """Losses summed on the device between two log steps (read back once per log step)."""

    loss: torch.Tensor | None = None
    l1: torch.Tensor | None = None
    con: torch.Tensor | None = None
    steps: int = 0
    per_task: dict[str, list[Any]] = field(default_factory=dict)  # task -> [loss sum tensor, count]

    def add(self, task: str, loss: torch.Tensor, l1: torch.Tensor, con: torch.Tensor) -> None:
        if self.loss is None:
            self.loss, self.l1, self.con = loss.clone(), l1.clone(), con.clone()
        else:
            self.loss += loss
            self.l1 += l1
            self.con += con
        self.steps += 1
        slot = self.per_task.setdefault(task, [torch.zeros_like(loss), 0])
        slot[0] += loss
        slot[1] += 1

    def read(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        names = list(self.per_task)
        values = torch.stack([self.loss, self.l1, self.con, *(self.per_task[n][0] for n in names)]).tolist()
        out = {"loss": values[0] / self.steps, "l1": values[1] / self.steps, "contrastive": values[2] / self.steps}
        out["task_loss"] = {n: values[3 + i] / self.per_task[n][1] for i, n in enumerate(names)}
        return out


class Trainer:
    """Model, optimizer and schedule on an :class:`accelerate.Accelerator`; one call of :meth:`step` per update.

    Parameter groups: group 0 holds the parameters trained at ``base_lr`` x :meth:`TrainConfig.lr_factor`; with
    ``fresh`` (names of parameters a fine-tuned model got fresh: heads, tails, random task embeddings of new tasks)
    group 1 holds those at ``base_lr`` x :meth:`TrainConfig.fresh_lr_factor`.
    """

    def __init__(
        self, cfg: TrainConfig, model: IPT, total_steps: int, decay_at: int | None, accelerator: Any = None,
        fresh: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.cfg, self.total_steps, self.decay_at = cfg, total_steps, decay_at
        self.accelerator = accelerator or make_accelerator(cfg)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        groups = [[p for n, p in named if n not in fresh]]
        factors = [lambda s: cfg.lr_factor(s, total_steps, decay_at)]
        if any(n in fresh for n, _ in named):
            groups.append([p for n, p in named if n in fresh])
            factors.append(lambda s: cfg.fresh_lr_factor(s, total_steps, decay_at))
        optimizer = torch.optim.Adam(
            [{"params": g} for g in groups], lr=cfg.base_lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factors)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = TrainState(ema=EMA(self.unwrapped, cfg.ema_decay) if cfg.ema_decay else None)
        self.stats = StepStats()
        self.last_lrs = self.lrs
        self.val_metrics: dict[str, dict[str, float]] = {}  # the last validation's metrics (task -> name -> mean)

    @property
    def unwrapped(self) -> IPT:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _forward_backward(self, batch: dict[str, Any], task: str) -> tuple[torch.Tensor, ...]:
        """Loss of one micro-batch and its backward pass (Accelerate divides by ``--grad-accum`` and holds the
        gradient all-reduce until the last micro-batch of the step)."""
        cfg = self.cfg
        if batch["task"] != task:
            raise RuntimeError(f"micro-batches of one step mix tasks {task!r} and {batch['task']!r}")
        lr_img = batch["lr"].to(self.device, non_blocking=True)
        hr_img = batch["hr"].to(self.device, non_blocking=True)
        with self.accelerator.accumulate(self.model):
            if cfg.contrastive_weight > 0:
                out, tokens = self.model(lr_img, task, return_tokens=True)
            else:
                out, tokens = self.model(lr_img, task), None
            total, l1, con = ipt_loss(out, hr_img, tokens, cfg.contrastive_weight, cfg.contrastive_temperature)
            self.accelerator.backward(total)
        return total.detach(), l1.detach(), con.detach()

    def _nonfinite(self, loss: torch.Tensor) -> bool:
        """Clip the gradients; True (on every rank alike) when the loss or the gradient norm is not finite."""
        acc = self.accelerator
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, max_norm)
        bad = ~torch.isfinite(loss)
        if acc.mixed_precision != "fp16" and norm is not None:
            # fp16 overflow of gradients is the GradScaler's business (it skips and lowers the scale itself).
            bad = bad | ~torch.isfinite(torch.as_tensor(norm, device=bad.device))
        if acc.num_processes > 1:  # every rank must take the same decision
            bad = acc.reduce(bad.float(), reduction="sum") > 0
        return bool(bad.item())  # the one host-device sync per step (a GradScaler makes the same one)

    def step(self, micro_batches: list[dict[str, Any]]) -> bool:
        """One optimizer step over ``micro_batches`` (all of one task). Returns False if it was skipped."""
        task = micro_batches[0]["task"]
        sums = [self._forward_backward(b, task) for b in micro_batches]
        total_m, l1_m, con_m = (torch.stack(col).mean() for col in zip(*sums))
        skipped = self._nonfinite(total_m)
        self.state.record(task, not skipped)
        if not skipped:
            self.optimizer.step()
            if self.state.ema is not None:
                self.state.ema.update(self.unwrapped)
            self.stats.add(task, total_m, l1_m, con_m)
        self.last_lrs = self.lrs  # the lrs this step used (logged), before the schedule moves on
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # None, not 0: Adam must not move inactive tasks' parameters
        self.state.step += 1
        return not skipped

    @property
    def lrs(self) -> list[float]:
        """Current lr of each parameter group (group 0: the model; group 1: fresh parts of new tasks)."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    @property
    def lr(self) -> float:
        return self.lrs[0]

    @property
    def last_lr(self) -> float:
        return self.last_lrs[0]

    def apply_config(self) -> None:
        """Make the optimizer and schedule follow ``cfg`` after :meth:`load_checkpoint`.

        ``load_state`` restores the saved run's lr (the LambdaLR's ``base_lrs``, each group's ``lr`` and
        ``initial_lr``), betas and weight decay; without this a new ``--lr`` would be reported but not used, and the
        first resumed step would use the old schedule's lr.
        """
        sched = self.scheduler.scheduler
        base = [self.cfg.base_lr] * len(self.optimizer.param_groups)
        sched.base_lrs = list(base)
        for g, b, factor in zip(self.optimizer.param_groups, base, sched.lr_lambdas):
            g.update(initial_lr=b, lr=b * factor(sched.last_epoch), weight_decay=self.cfg.weight_decay,
                     betas=(self.cfg.adam_beta1, self.cfg.adam_beta2))
        sched._last_lr = self.lrs

    def export_model(self) -> IPT:
        """The model to save: the trained weights, or their EMA with ``--ema-decay``."""
        model = self.unwrapped
        if self.state.ema is None:
            return model
        model = copy.deepcopy(model)
        self.state.ema.copy_to(model)
        return model

    def checkpoint_bytes(self, run_dir: Path) -> int:
        """Size of the newest checkpoint (what the next one needs), or 0 before the first."""
        found = list_checkpoints(run_dir)
        return folder_bytes(found[-1][1]) if found else 0

    def save_checkpoint(self, run_dir: Path, training: dict[str, Any], keep_last: int | None, name: str = "") -> Path:
        """``checkpoints/step-N/{model,state}`` (or ``checkpoints/NAME``), complete or not at all; all ranks call
        this. Raises :class:`~ipt.core.training.errors.CheckpointWriteError` on a full disk."""
        acc = self.accelerator
        root = Path(run_dir) / CHECKPOINTS
        needed = self.checkpoint_bytes(run_dir) if acc.is_main_process else 0

        def fill(tmp: Path) -> None:
            acc.save_state(str(tmp / "state"))  # optimizer, scheduler, model, RNG of every rank
            if acc.is_main_process:
                self.state.save(tmp / "state")
                self.export_model().save_pretrained(tmp / "model", training={**training, "step": self.state.step})

        final = write_checkpoint(acc, root, name or f"step-{self.state.step}", fill, needed)
        if acc.is_main_process and keep_last and not name:
            for _, old in list_checkpoints(run_dir)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint / "state"))
        self.state.load(checkpoint / "state")

    @torch.no_grad()
    def validate(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int
                 ) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """Mean PSNR (dB, the task's colour space and border crop, 8-bit outputs) per task on held-out patches, and
        the first :data:`VALIDATION_SAMPLES` restored patches per task ``(n, 3, H, W)`` on 0-255 (for the grid).

        The means of the task's own metrics (``MetricConventions.report``: PSNR, SSIM, ...) are kept in
        :attr:`val_metrics`.
        """
        model = self.unwrapped
        was_training = model.training
        model.eval()
        psnr: dict[str, float] = {}
        restored: dict[str, torch.Tensor] = {}
        self.val_metrics = {}
        try:
            for task, (lr_img, hr_img) in pairs.items():
                spec = model.spec(task)
                metrics = metric_specs(spec.metrics.report)
                scores, outs, values = [], [], []
                for i in range(0, len(lr_img), batch):
                    with self.accelerator.autocast():
                        y = quantize(model(lr_img[i : i + batch].to(self.device), task).float().cpu())
                    outs.append(y)
                    target = hr_img[i : i + batch].float()
                    scores.append(psnr_batch(y, target, crop_border=spec.crop_border,
                                             y_only=spec.metrics.color_space == "y"))
                    values += [metric_values(a, b, spec, metrics, f"validation of {task}: ") for a, b in zip(y, target)]
                psnr[task] = float(torch.cat(scores).clamp(max=100.0).mean())
                restored[task] = torch.cat(outs)[:VALIDATION_SAMPLES]
                self.val_metrics[task] = {
                    k: float(torch.tensor([v[k] for v in values], dtype=torch.float64).clamp(max=100.0).mean())
                    for k in values[0]
                }
        finally:
            model.train(was_training)
        return psnr, restored
