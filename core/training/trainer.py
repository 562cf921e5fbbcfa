"""One optimizer step of IPT training on an :class:`accelerate.Accelerator` (paper Sec. 3.2: one task per step,
L1 + contrastive loss), with the state Accelerate does not hold (position, non-finite streak, EMA)."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ipt.core.checkpoints.pretrained import CheckpointError
from ipt.core.evaluation.metrics import metric_specs, metric_values, psnr_batch, quantize
from ipt.core.model import IPT
from ipt.core.training.checkpoints import CHECKPOINTS, EMA_WEIGHTS, TRAIN_STATE, list_checkpoints
from ipt.core.training.config import TrainConfig
from ipt.core.training.ema import EMA
from ipt.core.training.losses import ipt_loss


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (too many non-finite losses); a checkpoint was saved."""



@dataclass
class TrainState:
    """What Accelerate's ``save_state`` does not hold: position, non-finite streak, EMA weights.

    Saved as JSON + safetensors next to the accelerate state (not as pickles, which only load unsafely).
    """

    step: int = 0
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    ema: EMA | None = None

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        info = {"step": self.step, "nonfinite_streak": self.nonfinite_streak, "nonfinite_total": self.nonfinite_total}
        (directory / TRAIN_STATE).write_text(json.dumps(info) + "\n")
        if self.ema is not None:
            save_file(self.ema.state_dict(), str(directory / EMA_WEIGHTS))

    def load(self, directory: Path) -> None:
        from safetensors.torch import load_file

        info = json.loads((directory / TRAIN_STATE).read_text())
        self.step, self.nonfinite_streak = int(info["step"]), int(info["nonfinite_streak"])
        self.nonfinite_total = int(info.get("nonfinite_total", 0))
        if self.ema is not None:
            path = directory / EMA_WEIGHTS
            if not path.is_file():
                raise CheckpointError(f"{path}: missing; the checkpoint was saved without --ema-decay")
            self.ema.load_state_dict(load_file(str(path)))


def make_accelerator(cfg: TrainConfig) -> Any:
    """The :class:`accelerate.Accelerator` of a run.

    Several processes without a GPU (``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` on a CPU
    machine) need ``cpu=True`` for Accelerate to pick its gloo CPU backend instead of running each process alone.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu or (multi_process and not torch.cuda.is_available()),
        log_with=cfg.report_to or None,
        project_dir=str(cfg.output_dir),
        step_scheduler_with_optimizer=False,  # the LambdaLR counts optimizer steps itself, once per step
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


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
    """Model, optimizer and schedule on an :class:`accelerate.Accelerator`; one call of :meth:`step` per update."""

    def __init__(
        self, cfg: TrainConfig, model: IPT, total_steps: int, decay_at: int | None, accelerator: Any = None
    ) -> None:
        self.cfg = cfg
        self.accelerator = accelerator or make_accelerator(cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(
            params, lr=cfg.base_lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: cfg.lr_factor(s, total_steps, decay_at)
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.state = TrainState(ema=EMA(self.unwrapped, cfg.ema_decay) if cfg.ema_decay else None)
        self.stats = StepStats()
        self.val_metrics: dict[str, dict[str, float]] = {}  # the last validation's metrics (task -> name -> mean)
        self.last_lr = self.lr

    @property
    def unwrapped(self) -> IPT:
        return self.accelerator.unwrap_model(self.model)

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def step(self, micro_batches: list[dict[str, Any]]) -> bool:
        """One optimizer step over ``micro_batches`` (all of one task). Returns False if it was skipped."""
        acc, cfg = self.accelerator, self.cfg
        task = micro_batches[0]["task"]
        n = len(micro_batches)
        total_sum = l1_sum = con_sum = None
        for i, batch in enumerate(micro_batches):
            if batch["task"] != task:
                raise RuntimeError(f"micro-batches of one step mix tasks {task!r} and {batch['task']!r}")
            lr_img = batch["lr"].to(self.device, non_blocking=True)
            hr_img = batch["hr"].to(self.device, non_blocking=True)
            sync = contextlib.nullcontext() if i == n - 1 else acc.no_sync(self.model)
            with sync:
                if cfg.contrastive_weight > 0:
                    out, tokens = self.model(lr_img, task, return_tokens=True)
                else:
                    out, tokens = self.model(lr_img, task), None
                total, l1, con = ipt_loss(out, hr_img, tokens, cfg.contrastive_weight, cfg.contrastive_temperature)
                acc.backward(total / n)
            total_sum = total.detach() if total_sum is None else total_sum + total.detach()
            l1_sum = l1.detach() if l1_sum is None else l1_sum + l1.detach()
            con_sum = con.detach() if con_sum is None else con_sum + con.detach()
        total_m, l1_m, con_m = total_sum / n, l1_sum / n, con_sum / n

        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf
        norm = acc.clip_grad_norm_(self.params, max_norm)
        bad = ~torch.isfinite(total_m)
        if acc.mixed_precision != "fp16" and norm is not None:
            # fp16 overflow of gradients is the GradScaler's business (it skips and lowers the scale itself).
            bad = bad | ~torch.isfinite(torch.as_tensor(norm, device=bad.device))
        if acc.num_processes > 1:  # every rank must take the same decision
            bad = acc.reduce(bad.float(), reduction="sum") > 0
        skipped = bool(bad.item())  # the one host-device sync per step (a GradScaler makes the same one)
        if skipped:
            self.state.nonfinite_streak += 1
            self.state.nonfinite_total += 1
        else:
            self.optimizer.step()
            self.state.nonfinite_streak = 0
            if self.state.ema is not None:
                self.state.ema.update(self.unwrapped)
            self.stats.add(task, total_m, l1_m, con_m)
        self.last_lr = self.lr  # the lr this step used (logged), before the schedule moves on
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)  # None, not 0: Adam must not move inactive tasks' parameters
        self.state.step += 1
        return not skipped

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def export_model(self) -> IPT:
        """The model to save: the trained weights, or their EMA with ``--ema-decay``."""
        model = self.unwrapped
        if self.state.ema is None:
            return model
        model = copy.deepcopy(model)
        self.state.ema.copy_to(model)
        return model

    def save_checkpoint(self, run_dir: Path, training: dict[str, Any], keep_last: int | None) -> Path:
        """``checkpoints/step-N/{model,state}`` via a temporary folder renamed when complete (all ranks call this)."""
        acc = self.accelerator
        root = Path(run_dir) / CHECKPOINTS
        final = root / f"step-{self.state.step}"
        tmp = root / f".step-{self.state.step}.tmp"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp / "state"))  # optimizer, scheduler, model, RNG of every rank
        if acc.is_main_process:
            self.state.save(tmp / "state")
            self.export_model().save_pretrained(tmp / "model", training={**training, "step": self.state.step})
        acc.wait_for_everyone()
        if acc.is_main_process:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            if keep_last:
                for _, old in list_checkpoints(run_dir)[:-keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, checkpoint: Path) -> None:
        self.accelerator.load_state(str(checkpoint / "state"))
        self.state.load(checkpoint / "state")

    @torch.no_grad()
    def validate(self, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]], batch: int) -> dict[str, float]:
        """Mean PSNR (dB, the task's colour space and border crop, 8-bit outputs) per task on held-out patches.

        The means of the task's own metrics (``MetricConventions.report``: PSNR, SSIM, ...) are kept in
        :attr:`val_metrics`.
        """
        model = self.unwrapped
        was_training = model.training
        model.eval()
        out: dict[str, float] = {}
        self.val_metrics = {}
        try:
            for task, (lr_img, hr_img) in pairs.items():
                spec = model.spec(task)
                scores, values = [], []
                for i in range(0, len(lr_img), batch):
                    with self.accelerator.autocast():
                        y = quantize(model(lr_img[i : i + batch].to(self.device), task).float().cpu())
                    scores.append(psnr_batch(
                        y, hr_img[i : i + batch].float(), crop_border=spec.crop_border,
                        y_only=spec.metrics.color_space == "y",
                    ))
                    metrics = metric_specs(spec.metrics.report)
                    values += [metric_values(a, b, spec, metrics, f"validation of {task}: ")
                               for a, b in zip(y, hr_img[i : i + batch].float())]
                out[task] = float(torch.cat(scores).clamp(max=100.0).mean())
                self.val_metrics[task] = {k: float(torch.tensor([v[k] for v in values]).clamp(max=100.0).mean())
                                          for k in values[0]}
        finally:
            model.train(was_training)
        return out
